"""Offline training of `models.gru.SeqModel` from LogEvents, and the evaluation `GRURanker`.

Data: one sequence per user, ordered by (ts, row). Mini-batches hold users of similar length
(padded on the right); each batch is walked in truncated-BPTT chunks of `bptt` steps with the
hidden state carried (detached) between chunks, so arbitrarily long histories train in bounded
memory and the GRU sees the same long-range state it will carry when serving.

Objective, per step t (after event t, predicting event t+1):
- item: -log p(target) under the copy/explore mixture. The explore softmax is estimated with
  sampled negatives: `negatives` items drawn ∝ pop^alpha and shared by the mini-batch plus the
  batch's own targets (in-batch negatives, drawn ∝ pop). The normaliser is an importance-sampled
  estimate with the mixture proposal of both (log-Q correction), so p_explore is calibrated
  against the copy path;
- category: the same mixture with an exact softmax (categories are few);
- next action: cross-entropy; churn: BCE with label "no further event within horizon_s".
  The last event of a user whose horizon runs past the end of the data is censored (masked).
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.gru import (GAP_FIRST, NEG_INF, UNKNOWN, Checkpoint, ModelConfig, Recent, SeqModel, Vocab,
                        gap_bucket, recent_windows, save_checkpoint)
from models.schema import ACTION_INDEX, LogEvent


@dataclass
class TrainConfig:
    # one pass: an epoch already walks the log once per cutoff view (7 of them); a second pass
    # overfits the GRU (taobao_users, 3 seeds: item R@20 0.618 at 1 epoch, 0.608 at 2, 0.600 at 3)
    epochs: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch: int = 8  # users per mini-batch, at least (small: more updates on small logs)
    # ... and more users while the mini-batch's BPTT chunk holds at most this many event slots:
    # logs of short sessions (the Taobao time slice: median 1 event per user) would otherwise
    # train on ~16 events per update (430-730 events/s there; 3.3k with 256). Histories of 32+
    # events keep `batch` users. 0 = off. 512 halves the updates on taobao_users (item MRR@20
    # 0.236); 256 and 128 score like off there (BENCHMARKS.md).
    batch_events: int = 256
    bptt: int = 64  # steps per truncated-BPTT chunk
    negatives: int = 512  # shared sampled negatives per chunk (plus in-batch targets)
    alpha: float = 0.5  # negatives ∝ pop^alpha
    horizon_s: float = 24 * 3600.0  # churn horizon
    w_category: float = 1.0
    w_action: float = 0.5
    w_churn: float = 0.5
    clip: float = 5.0
    seed: int = 0
    device: str | None = None  # None: cuda when available
    max_items: int = 500_002  # vocabulary capacities (incl. padding and unknown)
    max_categories: int = 50_002
    hidden: int = 64
    emb: int = 64
    ring: int = 200  # L of the copy path: 200 covers 82.7% of scored Taobao items vs 71.9% at 50
    dropout: float = 0.25
    copy_ids: bool = False  # id embeddings in copy keys overfit on small logs
    copy_context: bool = False  # h-dependent copy scores overfit too (item MRR@20 0.21 -> 0.17)
    fusion: str = "tiered"  # see ModelConfig.fusion
    copy_decay: bool = True  # see ModelConfig.copy_decay
    copy_transitions: bool = True  # see ModelConfig.copy_transitions
    cat_successors: int = 32  # see ModelConfig.cat_successors (0: off)
    cat_history_first: bool = True  # see ModelConfig.cat_history_first
    copy_lr_mult: float = 10.0
    # the last `calibrate_frac` of the log's time trains nothing but calibrates the mixture (see
    # calibrate_fusion); 0 = no hold-out, no calibration
    calibrate_frac: float = 0.1
    # explore biases start at log train popularity: ids seen a handful of times barely move in one
    # pass, and a zero bias ranks them below the popularity baseline's fallback
    pop_prior: bool = True
    vocab_cutoff: float | None = 0.8  # see cutoff_view; None = train on sequences as they are
    # Extra views of the training log, each with its vocabulary frozen at another time quantile
    # (see training_views): more "after the freeze" examples, the situation a deployed model is in.
    # Denser views (every 0.1 from 0.3) give the copy path more frozen-vocabulary examples of
    # revisits at no more total passes than 2 epochs over 5 views (item MRR@20 0.236 -> 0.247).
    cutoff_views: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.9)
    w_before_cutoff: float = 0.3  # loss weight of targets before a view's cut-off (after: 1)
    known_targets_only: bool = True  # item/category loss only on ids seen earlier in the log
    threads: int = 2  # torch CPU threads (we share machines)
    progress: bool = True


# --------------------------------------------------------------------------------------------
# Sequences


@dataclass
class SeqData:
    """Events sorted by (user, ts, row) as flat arrays; user u owns rows starts[u]:starts[u+1]."""

    users: np.ndarray  # raw user id per sequence
    starts: np.ndarray  # [n_users + 1]
    items: np.ndarray  # vocabulary indices
    cats: np.ndarray
    actions: np.ndarray
    ts: np.ndarray  # float64 seconds
    item_new: np.ndarray | None = None  # first occurrence of the item in the whole log (by time)
    cat_new: np.ndarray | None = None
    weight: np.ndarray | None = None  # loss weight of each event as a target (None: 1)
    # time of the user's next event before any view removed events (inf: none); None: the next row's
    next_ts: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    @property
    def user_index(self) -> np.ndarray:
        """Per event: the index of its user's sequence."""
        return np.repeat(np.arange(len(self.users)), self.lengths)

    def __len__(self) -> int:
        return len(self.items)


def events_to_arrays(events: Iterable[LogEvent]) -> dict[str, np.ndarray]:
    """Raw columns of LogEvents: user, item, category (-1 if none), action index, ts_s, row."""
    cols: dict[str, list] = {k: [] for k in ("user", "item", "cat", "action", "ts", "row")}
    for i, e in enumerate(events):
        cols["user"].append(e.user_id)
        cols["item"].append(e.item_id)
        cols["cat"].append(-1 if e.category_id is None else e.category_id)
        cols["action"].append(ACTION_INDEX[e.action])
        cols["ts"].append(e.ts_ms)
        cols["row"].append(e.row if e.row is not None else i)
    out = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    out["ts"] = out["ts"].astype(np.float64) / 1000.0
    return out


def make_seqdata(user: np.ndarray, items: np.ndarray, cats: np.ndarray, actions: np.ndarray,
                 ts: np.ndarray, row: np.ndarray | None = None) -> SeqData:
    """Stable sort by (user, ts, row) and cut into per-user sequences (ids already indexed)."""
    row = np.arange(len(user)) if row is None else row
    order = np.lexsort((row, ts, user))
    u = user[order]
    cut = np.flatnonzero(np.diff(u)) + 1
    starts = np.concatenate([[0], cut, [len(u)]]).astype(np.int64)
    by_time = np.lexsort((row, ts))
    return SeqData(u[starts[:-1]] if len(u) else u, starts, items[order], cats[order],
                   actions[order], ts[order].astype(np.float64),
                   first_occurrence(items, by_time)[order], first_occurrence(cats, by_time)[order])


def cutoff_view(data: SeqData, quantile: float) -> SeqData:
    """Simulate a vocabulary frozen at the `quantile` of event time: later events whose item had
    not occurred before that time are removed, as if their ids were unknown to the model.

    Why: a deployed model (and the evaluation protocol) never sees events of items it has no row
    for -- they are dropped from the user's context. Sequences look different then (e.g.
    "A, new, A" reaches the model as "A, A"), and training on the same kind of sequences
    teaches the copy path what such contexts mean."""
    if len(data) == 0 or not 0 < quantile < 1:
        return data
    q = float(np.quantile(data.ts, quantile))
    before = data.ts < q
    next_ts = data.next_ts if data.next_ts is not None else next_event_ts(data)
    known = np.zeros(int(data.items.max()) + 1, dtype=bool)
    known[data.items[before]] = True
    keep = before | known[data.items]
    user = data.user_index[keep]
    counts = np.bincount(user, minlength=len(data.users))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sub = lambda a: None if a is None else a[keep]  # noqa: E731
    return SeqData(data.users, starts, data.items[keep], data.cats[keep], data.actions[keep],
                   data.ts[keep], sub(data.item_new), sub(data.cat_new), sub(data.weight), next_ts[keep])


def next_event_ts(data: SeqData) -> np.ndarray:
    """Per event: the time of its user's next event in `data`, inf for a user's last one."""
    nxt = np.full(len(data), np.inf)
    if len(data):
        nxt[:-1] = data.ts[1:]
        nxt[data.starts[1:][data.lengths > 0] - 1] = np.inf
    return nxt


def concat_seqdata(parts: list[SeqData]) -> SeqData:
    """Sequences of several SeqData one after the other (users may repeat: they are views)."""
    if len(parts) == 1:
        return parts[0]
    starts, off = [np.zeros(1, dtype=np.int64)], 0
    for d in parts:
        starts.append(d.starts[1:] + off)
        off += len(d)
    cat = lambda f: np.concatenate([getattr(d, f) for d in parts])  # noqa: E731
    opt = lambda f: (None if any(getattr(d, f) is None for d in parts) else cat(f))  # noqa: E731
    w = None
    if any(d.weight is not None for d in parts):
        w = np.concatenate([d.weight if d.weight is not None else np.ones(len(d)) for d in parts])
    return SeqData(cat("users"), np.concatenate(starts), cat("items"), cat("cats"), cat("actions"),
                   cat("ts"), opt("item_new"), opt("cat_new"), w, opt("next_ts"))


def training_views(data: SeqData, cfg: "TrainConfig") -> SeqData:
    """The sequences a model is trained on: `cutoff_view` at `vocab_cutoff` plus one view per
    quantile in `cutoff_views`. In each view, targets after its cut-off weigh 1 and earlier ones
    `w_before_cutoff`.

    Why: after deployment (and in the evaluation protocol) the vocabulary is frozen; the events
    that matter are later ones, whose contexts lost the items the model has no row for, and
    whose targets are known ids -- mostly revisits (on Taobao ~80%, vs ~20% of raw train
    targets), with a different recency profile. Several cut-offs give many such examples from one
    log, and the loss focuses on them, so the copy path and the gate learn the situation they
    are used in."""
    if not cfg.vocab_cutoff:
        return data
    views = []
    for qn in (cfg.vocab_cutoff, *cfg.cutoff_views):
        if not 0 < qn < 1:
            continue
        v = cutoff_view(data, qn)
        q = float(np.quantile(data.ts, qn))
        v.weight = np.where(v.ts >= q, 1.0, cfg.w_before_cutoff)
        views.append(v)
    return concat_seqdata(views) if views else data


def first_occurrence(ids: np.ndarray, by_time: np.ndarray) -> np.ndarray:
    """True where an event's id occurs for the first time in the log (in time order)."""
    first = np.zeros(len(ids), dtype=bool)
    _, i = np.unique(ids[by_time], return_index=True)
    first[by_time[i]] = True
    return first


# --------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """Right-padded [B, T] tensors of a group of users plus next-event targets."""

    items: Tensor
    cats: Tensor
    actions: Tensor
    ts: Tensor  # float64 seconds
    gaps: Tensor
    mask: Tensor
    next_item: Tensor  # 0 where there is no next event
    next_cat: Tensor
    next_action: Tensor  # -1 where there is no next event
    churn: Tensor  # float label
    churn_mask: Tensor
    next_weight: Tensor | None = None  # loss weight of each next target (float)


def make_batch(data: SeqData, users: np.ndarray, horizon_s: float, data_end: float,
               n_gap_buckets: int, device: torch.device, train_known_only: bool = True) -> Batch:
    lens = data.lengths[users]
    B, T = len(users), int(lens.max())
    idx = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    for b, u in enumerate(users):
        idx[b, : lens[b]] = np.arange(data.starts[u], data.starts[u + 1])
        mask[b, : lens[b]] = True
    g = lambda a: np.where(mask, a[idx], 0)  # noqa: E731
    items, cats, actions, ts = g(data.items), g(data.cats), g(data.actions), g(data.ts).astype(np.float64)
    gaps = np.where(mask, gap_bucket(np.diff(ts, prepend=ts[:, :1]), n_gap_buckets), 0)
    gaps[:, 0] = GAP_FIRST
    has_next = np.zeros_like(mask)
    has_next[:, :-1] = mask[:, 1:]
    shift = lambda a, fill: np.where(has_next, np.roll(a, -1, axis=1), fill)  # noqa: E731
    # churn: 1 if the next event is more than horizon_s later (or never comes, uncensored). The
    # next event is the log's, not the view's: a view that drops events of unknown items must not
    # turn an active user into a churner.
    next_ts = shift(ts, np.inf) if data.next_ts is None else np.where(mask, data.next_ts[idx], np.inf)
    churn = (next_ts - ts) > horizon_s
    censored = np.isinf(next_ts) & (ts + horizon_s > data_end)
    next_item, next_cat = shift(items, 0), shift(cats, 0)
    # Targets whose id had never occurred before in the log are not trained on: no model can
    # recommend an id it has not seen, serving maps such ids to "unknown", and the evaluation
    # protocol drops them. Training on them would teach the gate that most next items are
    # brand-new, which is false for everything the model can actually rank.
    if train_known_only and data.item_new is not None:
        next_item = np.where(shift(g(data.item_new).astype(bool), True), 0, next_item)
        next_cat = np.where(shift(g(data.cat_new).astype(bool), True), 0, next_cat)
    t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    nw = None if data.weight is None else t(shift(g(data.weight), 0.0), torch.float32)
    return Batch(t(items), t(cats), t(actions), t(ts, torch.float64), t(gaps), t(mask, torch.bool),
                 t(next_item), t(next_cat), t(shift(actions, -1)),
                 t(churn, torch.float32), t(mask & ~censored, torch.bool), nw)


def chunk_recent(batch: Batch, s: int, e: int, ring: int, n_gap_buckets: int) -> Recent:
    """Recent rings [B, e-s, L] for steps s..e-1, using up to L-1 earlier steps as context."""
    a = max(0, s - ring + 1)
    r = recent_windows(batch.items[:, a:e], batch.cats[:, a:e], batch.actions[:, a:e],
                       batch.ts[:, a:e], batch.mask[:, a:e], ring, n_gap_buckets)
    k = s - a
    return Recent(r.items[:, k:], r.categories[:, k:], r.actions[:, k:], r.age[:, k:], r.mask[:, k:])


def flat_recent(r: Recent, sel: Tensor) -> Recent:
    """[B, T, L] rings -> [N, L'] rows at the boolean positions `sel` [B, T] (trimmed: L' <= L)."""
    return Recent(r.items[sel], r.categories[sel], r.actions[sel], r.age[sel], r.mask[sel]).trimmed()


# --------------------------------------------------------------------------------------------
# Loss


class NegativeSampler:
    """Shared negatives ∝ pop^alpha, plus the proposal probabilities for the log-Q correction."""

    def __init__(self, counts: np.ndarray, alpha: float, device: torch.device):
        c = torch.as_tensor(counts, dtype=torch.float64)
        c[:2] = 0  # never sample padding/unknown
        pa = c.pow(alpha) * (c > 0)
        self.q_alpha = (pa / pa.sum().clamp(min=1e-12)).float().to(device)
        self.q_pop = (c / c.sum().clamp(min=1e-12)).float().to(device)
        self.device = device

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(self.q_alpha, k, replacement=True, generator=generator)


def item_log_prob(model: SeqModel, h: Tensor, recent: Recent, target: Tensor,
                  shared_neg: Tensor, sampler: NegativeSampler) -> Tensor:
    """log p(target) [N] under the copy/explore mixture with a sampled explore normaliser."""
    log_attn, gate = model.copy_item(h, recent)
    hit = (recent.items == target.unsqueeze(1)) & recent.mask
    in_ring = hit.any(1)
    log_rep = torch.logsumexp(log_attn.masked_fill(~hit, float("-inf")), 1)
    # explore: target logit vs importance-weighted negatives (shared ∝ pop^alpha + in-batch ∝ pop)
    inb = target if len(target) <= 1024 else target[torch.randperm(len(target), device=h.device)[:1024]]
    cand = torch.cat([shared_neg, inb])
    K, M = len(shared_neg), len(inb)
    t = model.explore_temp[0]
    q = model.item_query(model.drop(h)) / t
    o_t = (q * model.item_vectors(target)).sum(-1) + model.item_bias[target]
    o_c = F.linear(q, model.item_vectors(cand), model.item_bias[cand])
    log_q = torch.log(K * sampler.q_alpha[cand] + M * sampler.q_pop[cand]).clamp(min=-30)
    o_c = (o_c - log_q).masked_fill(cand.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    log_z = torch.logsumexp(torch.cat([o_t.unsqueeze(1), o_c], 1), 1)
    log_exp = o_t - log_z
    lp_exp = F.logsigmoid(-gate) + log_exp
    return torch.where(in_ring, torch.logaddexp(F.logsigmoid(gate) + log_rep, lp_exp), lp_exp)


def category_log_prob(model: SeqModel, h: Tensor, recent: Recent, target: Tensor,
                      counted: bool = False) -> Tensor:
    """log p(target) [N] under `SeqModel.mixture` (plain fusion) without building the mixture
    over every category: the target's own terms and one logsumexp (a unit test holds the two
    equal). The full [N, V] mixture and its backward were a large share of training time.
    `counted`: the rows' transitions are in the model's successor counts (leave them out)."""
    la, g = model.copy_category(h, recent)
    valid = model.cat_valid
    own = target if counted else None
    logits = model.cat_explore_logits(h, recent.categories[:, -1], own).masked_fill(~valid, float("-inf"))
    log_exp = logits.gather(1, target.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, 1)
    # each distinct ring id has one finite copy score (its newest position)
    hit = (recent.categories == target.unsqueeze(1)) & torch.isfinite(la)
    in_ring = hit.any(1) & valid[target]
    log_rep = torch.logsumexp(la.masked_fill(~hit, float("-inf")), 1)
    lp_exp = F.logsigmoid(-g) + log_exp
    safe_rep = torch.where(in_ring, log_rep, torch.full_like(log_rep, -1e4))  # no NaN gradients
    out = torch.where(in_ring, torch.logaddexp(F.logsigmoid(g) + safe_rep, lp_exp), lp_exp)
    return out.masked_fill(~valid[target], float("-inf"))


@dataclass
class LossParts:
    total: Tensor
    item: float
    n: int


def chunk_loss(model: SeqModel, batch: Batch, s: int, e: int, h0: Tensor, cfg: TrainConfig,
               sampler: NegativeSampler, gen: torch.Generator | None,
               counted: bool = False) -> tuple[Tensor, Tensor, float, int]:
    """Loss of steps s..e-1 of a batch; returns (loss, h at the chunk end, item nll, n items).
    `counted`: the batch comes from the log the model's successor counts were taken from."""
    mc = model.cfg
    sl = slice(s, e)
    out, h_end = model.encode(h0, batch.items[:, sl], batch.cats[:, sl], batch.actions[:, sl],
                              batch.gaps[:, sl])
    # carry each user's state from its last real step in the chunk (padding comes at the end)
    lens = batch.mask[:, sl].sum(1)
    idx = (lens - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
    h_end = torch.where((lens > 0).unsqueeze(1), out.gather(1, idx).squeeze(1), h0)
    recent = chunk_recent(batch, s, e, mc.ring, mc.n_gap_buckets)
    total = out.new_zeros(())
    ti = batch.next_item[:, sl]
    nw = None if batch.next_weight is None else batch.next_weight[:, sl]
    sel = batch.mask[:, sl] & (ti > UNKNOWN)
    item_nll, n_item = 0.0, int(sel.sum())
    if n_item:
        lp = item_log_prob(model, out[sel], flat_recent(recent, sel), ti[sel],
                           sampler.sample(cfg.negatives, gen), sampler)
        loss_i = -(lp * nw[sel]).mean() if nw is not None else -lp.mean()
        total = total + loss_i
        item_nll = float(loss_i.detach())
    tc = batch.next_cat[:, sl]
    selc = batch.mask[:, sl] & (tc > UNKNOWN)
    if selc.any() and cfg.w_category > 0:
        lp = category_log_prob(model, out[selc], flat_recent(recent, selc), tc[selc], counted)
        total = total + cfg.w_category * -(lp * nw[selc] if nw is not None else lp).mean()
    ta = batch.next_action[:, sl]
    sela = batch.mask[:, sl] & (ta >= 0)
    # held-out targets (weight 0) stay unseen by the action head too, so calibrate_actions fits
    # out-of-sample events. Other targets count fully: weighting early ones 0.3, as for items,
    # cost taobao_users' action AUCs (purchase .555 -> .529, cart .584 -> .519)
    if sela.any() and cfg.w_action > 0:
        ce = F.cross_entropy(model.action_head(model.drop(out[sela])), ta[sela], reduction="none")
        total = total + cfg.w_action * (ce * (nw[sela] > 0) if nw is not None else ce).mean()
    selh = batch.churn_mask[:, sl]
    if selh.any() and cfg.w_churn > 0:
        logit = model.churn_logit(out[selh], flat_recent(recent, selh))
        total = total + cfg.w_churn * F.binary_cross_entropy_with_logits(logit, batch.churn[:, sl][selh])
    return total, h_end, item_nll, n_item


# --------------------------------------------------------------------------------------------
# Training loop


def resolve_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def user_batches(data: SeqData, batch: int, rng: np.random.Generator, batch_events: int = 0,
                 bptt: int = 64) -> list[np.ndarray]:
    """Groups of users of similar length (little padding), in random order.

    A group holds `batch` users, or more while users x padded chunk length (the longest length,
    at most `bptt`) stays within `batch_events`."""
    lens = data.lengths
    users = np.flatnonzero(lens >= 2)
    users = users[np.argsort(lens[users] + rng.random(len(users)), kind="stable")]
    if batch_events <= 0:
        groups = [users[i: i + batch] for i in range(0, len(users), batch)]
    else:
        groups, lo = [], 0
        chunk = np.minimum(lens[users], bptt)  # ascending, like the users
        for i in range(1, len(users) + 1):
            if i == len(users) or (i - lo >= batch and (i + 1 - lo) * chunk[i] > batch_events):
                groups.append(users[lo:i])
                lo = i
    rng.shuffle(groups)
    return groups


def make_optimizer(model: SeqModel, cfg: "TrainConfig") -> torch.optim.Optimizer:
    """Adam; the copy heads' few scalar feature weights get `copy_lr_mult` x the learning rate
    (they are shared by every prediction, start at the recency order and must move within the
    one or two epochs a small log allows before the embeddings overfit)."""
    copy = [p for n, p in model.named_parameters() if "_copy." in n]
    ids = {id(p) for p in copy}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # fused: one kernel over all parameters instead of ~10 per tensor; the same update up to
    # float rounding, and 1.4x the training speed on a large item table (the Taobao time slice)
    return torch.optim.Adam([{"params": rest}, {"params": copy, "lr": cfg.lr * cfg.copy_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class GradientStep:
    """One update: zero the gradients, backward, clip, step.

    Sparse gradients (the item table's: only the rows a step read) are added into a dense buffer
    kept across steps, where only the previous step's rows are cleared, and the optimiser sees a
    plain dense gradient: the same update as with a dense table. A fresh [V, E] gradient per
    lookup (three per step) page-faulted on every allocation: on the Taobao time slice
    (85k items) that was about a third of training's time."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.clip = clip
        self._dense: dict[int, tuple[Tensor, Tensor]] = {}  # id(param) -> (buffer, rows last set)

    def __call__(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = self._densify(p, p.grad)
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()

    def _densify(self, p: Tensor, grad: Tensor) -> Tensor:
        g = grad.coalesce()
        rows = g.indices()[0]
        buf, last = self._dense.get(id(p), (None, None))
        if buf is None:
            buf = torch.zeros_like(p)
        else:
            buf.index_fill_(0, last, 0.0)  # clipping scales rows in place; untouched rows stay 0
        buf.index_put_((rows,), g.values())  # coalesced: each row once
        self._dense[id(p)] = (buf, rows)
        return buf


def fit_model(model: SeqModel, data: SeqData, cfg: TrainConfig, *, data_end: float | None = None,
              item_counts: np.ndarray | None = None, epochs: int | None = None,
              optimizer: torch.optim.Optimizer | None = None, counted: bool = False) -> dict[str, Any]:
    """Train `model` in place on sequences; returns stats (events/s per epoch, last losses).
    `counted`: `data` is the log the model's category successor counts were taken from."""
    device = model.device
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if item_counts is None:
        item_counts = np.bincount(data.items, minlength=model.cfg.n_items)
    data_end = float(data.ts.max()) if data_end is None else data_end
    sampler = NegativeSampler(item_counts, cfg.alpha, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = optimizer or make_optimizer(model, cfg)
    step = GradientStep(model, opt, cfg.clip)
    lens = data.lengths
    n_train = int(lens[lens >= 2].sum())  # the events user_batches walks (the bar counts these)
    rates, losses = [], []
    n_epochs = cfg.epochs if epochs is None else epochs
    model.train()
    for ep in range(n_epochs):
        t0, seen, nll_sum, nll_n = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(total=n_train, desc=f"epoch {ep + 1}/{n_epochs}", file=sys.stderr,
                   disable=not cfg.progress, unit="ev", leave=False,
                   mininterval=0.1 if sys.stderr.isatty() else 15.0)  # logs get a line per 15 s
        for users in user_batches(data, cfg.batch, rng, cfg.batch_events, cfg.bptt):
            b = make_batch(data, users, cfg.horizon_s, data_end, model.cfg.n_gap_buckets, device,
                           cfg.known_targets_only)
            h = model.init_hidden(len(users))
            T = b.items.shape[1]
            for s in range(0, T, cfg.bptt):
                e = min(T, s + cfg.bptt)
                loss, h, nll, n = chunk_loss(model, b, s, e, h, cfg, sampler, gen, counted)
                h = h.detach()
                if loss.requires_grad:  # a chunk may hold no targets (e.g. only last events)
                    step(loss)
                k = int(b.mask[:, s:e].sum())
                seen += k
                nll_sum += nll * n
                nll_n += n
                bar.update(k)
                bar.set_postfix(item_nll=f"{nll_sum / max(nll_n, 1):.3f}",
                                ev_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        bar.close()
        rates.append(seen / max(time.perf_counter() - t0, 1e-9))
        losses.append(nll_sum / max(nll_n, 1))
    model.eval()
    return {"events_per_s": rates, "item_nll": losses}


def _next_event_at_or_after(data: SeqData, since_ts: float) -> tuple[np.ndarray, np.ndarray]:
    """(index of each event's successor, True where the user has one at or after `since_ts`):
    the held-out rows the calibrations fit on."""
    nxt = np.minimum(np.arange(len(data)) + 1, len(data) - 1)
    user = data.user_index
    return nxt, (user[nxt] == user) & (nxt > np.arange(len(data))) & (data.ts[nxt] >= since_ts)


def _held_out_positions(data: SeqData, since_ts: float, task: str) -> np.ndarray:
    """Positions whose next event is held out (at or after `since_ts`) and has a known `task`
    target (item or category) that is not new to the vocabulary."""
    nxt, ok = _next_event_at_or_after(data, since_ts)
    target, new = (data.items, data.item_new) if task == "item" else (data.cats, data.cat_new)
    return np.flatnonzero(ok & (target[nxt] > UNKNOWN) & ~(new[nxt] if new is not None else False))


TEMPERATURES = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.7, 8.0, 11.0, 16.0, 32.0)
GATE_SHIFTS = tuple(x / 10 for x in range(-50, 51))


@torch.no_grad()
def calibrate_fusion(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 4000,
                     seed: int = 0) -> dict[str, float]:
    """Fit `model.explore_temp` and `model.gate_shift` (items, categories) on the next events at
    or after `since_ts`, which the model was not trained on: the (T, shift) of the grid with the
    least exact (full-softmax) NLL of the mixture. Why: the explore head is trained with a
    sampled normaliser and memorises ids it saw a few times, so its full softmax is
    overconfident at serving time, where it is ranked against the copy path (time slice: the top
    new item got p = 0.09 on average; such items are right < 1% of the time).

    Returns the fitted values and the NLL before and after (per task)."""
    model.eval()
    model.explore_temp.fill_(1.0)
    model.gate_shift.zero_()
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for task in ("item", "category"):
        pos = _held_out_positions(data, since_ts, task)
        if len(pos) < 50:  # too few to fit two numbers: keep the neutral calibration
            out[f"{task}_rows"] = float(len(pos))
            continue
        pos = np.sort(rng.choice(pos, min(max_rows, len(pos)), replace=False))
        parts = _fusion_parts(model, data, pos, task)
        temps = torch.tensor(TEMPERATURES, dtype=torch.float64)
        shifts = torch.tensor(GATE_SHIFTS, dtype=torch.float64).view(-1, 1, 1)
        g = parts["gate"].view(1, 1, -1) + shifts  # [S, 1, N]
        log_exp = parts["log_exp"].T.unsqueeze(0)  # [1, T, N]
        lp = F.logsigmoid(-g) + log_exp
        lp = torch.where(parts["in_ring"], torch.logaddexp(F.logsigmoid(g) + parts["log_rep"], lp), lp)
        nll = -lp.mean(-1)  # [S, T]
        best = int(nll.argmin())
        s_i, t_i = divmod(best, len(TEMPERATURES))
        k = 0 if task == "item" else 1
        model.explore_temp[k] = float(temps[t_i])
        model.gate_shift[k] = float(GATE_SHIFTS[s_i])
        out.update({f"{task}_temp": float(temps[t_i]), f"{task}_gate_shift": float(GATE_SHIFTS[s_i]),
                    f"{task}_nll_before": float(nll[GATE_SHIFTS.index(0.0), TEMPERATURES.index(1.0)]),
                    f"{task}_nll_after": float(nll[s_i, t_i]), f"{task}_rows": float(len(pos))})
    return out


@torch.no_grad()
def calibrate_actions(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 20000,
                      seed: int = 0, min_rows: int = 1000) -> dict[str, float]:
    """Fit `model.action_temp` and `model.action_shift` on the next actions at or after
    `since_ts` (events the model was not trained on): the least NLL of softmax(logits / T +
    shift), by L-BFGS from the neutral (1, 0). Kept only where it lowers that NLL.

    Returns the fitted values and the NLL before and after."""
    model.eval()
    model.action_temp.fill_(1.0)
    model.action_shift.zero_()
    pos = np.flatnonzero(_next_event_at_or_after(data, since_ts)[1])
    if len(pos) < min_rows:  # purchases are ~2%: fewer rows fit noise (taobao_users has 120)
        return {"action_rows": float(len(pos))}
    pos = np.sort(np.random.default_rng(seed).choice(pos, min(max_rows, len(pos)), replace=False))
    raw, order = [], []
    for sel, h, _ in states_at(model, data, pos):
        raw.append(model.action_head(h).double().cpu())
        order.append(torch.as_tensor(sel))
    logits = torch.cat(raw)[torch.cat(order).argsort()]
    target = torch.as_tensor(data.actions[pos + 1], dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    nll = lambda: F.cross_entropy(logits * torch.exp(-log_t) + shift, target)  # noqa: E731
    opt = torch.optim.LBFGS([log_t, shift], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    with torch.enable_grad():
        before = nll().item()
        opt.step(closure)
        after = nll().item()
    out = {"action_rows": float(len(pos)), "action_nll_before": before, "action_nll_after": before}
    if math.isfinite(after) and after < before:
        model.action_temp.fill_(float(torch.exp(log_t)))
        model.action_shift.copy_((shift - shift.mean()).float())  # softmax ignores a common shift
        out.update({"action_temp": float(torch.exp(log_t)), "action_nll_after": after})
    return out


def _fusion_parts(model: SeqModel, data: SeqData, positions: np.ndarray, task: str,
                  batch_users: int = 64, rows_per_block: int = 64) -> dict[str, Tensor]:
    """Per position (predicting the next event): the copy path's log-prob of the target (-inf
    outside the ring) and gate, and the explore log-softmax of the target at each of
    TEMPERATURES [N, T] (exact: over every valid id)."""
    acc: dict[str, list[Tensor]] = {"log_rep": [], "gate": [], "log_exp": [], "order": []}
    temps = torch.tensor(TEMPERATURES, device=model.device).view(-1, 1, 1)
    targets = torch.as_tensor(data.items if task == "item" else data.cats, device=model.device)
    for sel, h, r in states_at(model, data, positions, batch_users):
        target = targets[torch.as_tensor(positions[sel] + 1, device=model.device)]
        if task == "item":
            la, gate = model.copy_item(h, r)
            ring, logits, bias, valid = r.items, model.item_explore_logits(h), model.item_bias, model.item_valid
        else:
            la, gate = model.copy_category(h, r)
            ring, logits, bias, valid = r.categories, model.cat_explore_logits(h), model.cat_bias, model.cat_valid
            # the successor term stays untempered, like the bias (the held-out transitions are
            # among the counted ones: each row's own is left out)
            succ = model.cat_successor_scores(r.categories[:, -1], target)
            bias, logits = bias + succ, logits + succ
        hit = (ring == target.unsqueeze(1)) & torch.isfinite(la)
        acc["log_rep"].append(torch.logsumexp(la.masked_fill(~hit, NEG_INF), 1).double())
        acc["gate"].append(gate.double())
        # temperature 1 during calibration: logits = context + bias; only the context is tempered
        context = logits - bias
        bias = bias.masked_fill(~valid, NEG_INF).expand(len(logits), -1)  # [rows, V]
        ct = context.gather(1, target.unsqueeze(1)).squeeze(1)
        bt = bias.gather(1, target.unsqueeze(1)).squeeze(1)
        for a in range(0, len(logits), rows_per_block):  # [T, rows, V] one block at a time
            z = torch.logsumexp(context[a: a + rows_per_block].unsqueeze(0) / temps + bias[a: a + rows_per_block], -1)
            lt = ct[a: a + rows_per_block].unsqueeze(0) / temps.squeeze(-1) + bt[a: a + rows_per_block]
            acc["log_exp"].append((lt - z).T.double())
        acc["order"].append(torch.as_tensor(sel))
    order = torch.cat(acc["order"]).argsort()
    out = {k: torch.cat(v)[order] for k, v in acc.items() if k != "order"}
    out["in_ring"] = torch.isfinite(out["log_rep"])
    return out


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of each row's target [N] among the finite scores [N, V]: how many candidates score at
    least as high (ties count against, as in models.evaluate.ranks_of_targets); at least 1."""
    t = scores.gather(1, target.unsqueeze(1))
    return ((scores >= t) & torch.isfinite(scores)).sum(1).clamp(min=1)


SUCCESSOR_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


@torch.no_grad()
def calibrate_successor_rank(model: SeqModel, data: SeqData, since_ts: float, max_rows: int = 4000,
                             seed: int = 0, k: int = 20) -> dict[str, float]:
    """Fit `model.cat_succ_rank_scale`, the factor on the successor term in served category
    rankings, on the next categories at or after `since_ts`: the factor of SUCCESSOR_SCALES
    with the best MRR@k (full ranking, ties against; ties between factors go to the smaller).
    Why not NLL: on the Taobao time slice a sharper successor term ranks new categories better
    (10x: like train co-occurrence counts), while held-out NLL rises from 3.8 at 1x to 10 at 8x;
    and categories are only ever served as a ranking (BENCHMARKS.md, eighth and ninth rounds).
    Run after `calibrate_fusion`, whose temperature it keeps."""
    if model.cat_succ_w is None:
        return {}
    model.eval()
    model.cat_succ_rank_scale.fill_(1.0)
    pos = _held_out_positions(data, since_ts, "category")
    if len(pos) < 50:
        return {"successor_rank_rows": float(len(pos))}
    pos = np.sort(np.random.default_rng(seed).choice(pos, min(max_rows, len(pos)), replace=False))
    rr = torch.zeros(len(SUCCESSOR_SCALES), len(pos), dtype=torch.float64)  # reciprocal ranks [S, N]
    cats = torch.as_tensor(data.cats, device=model.device)
    for sel, h, r in states_at(model, data, pos):
        target = cats[torch.as_tensor(pos[sel] + 1, device=model.device)]
        for j, scale in enumerate(SUCCESSOR_SCALES):
            # the held-out transitions are among the counted ones: each row's own is left out
            scores = model.category_logits(h, r, successor_scale=scale, own=target)
            rank = target_ranks(scores, target).double()
            rr[j, sel] = torch.where(rank <= k, 1.0 / rank, torch.zeros_like(rank)).cpu()
    mrr = rr.mean(1)
    best = int(torch.nonzero(mrr == mrr.max())[0])
    model.cat_succ_rank_scale.fill_(SUCCESSOR_SCALES[best])
    return {"successor_rank_scale": SUCCESSOR_SCALES[best], f"successor_rank_mrr{k}_before": float(mrr[0]),
            f"successor_rank_mrr{k}_after": float(mrr[best]), "successor_rank_rows": float(len(pos))}


def category_successors(data: SeqData, n_categories: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per category, its `top` most frequent next categories over consecutive events of a user,
    and their counts: ([n_categories, top] ids, 0 where there are fewer; counts as float32).
    Repeats count too, as in the item-kNN baseline; ties go to the smaller id."""
    ids = np.zeros((n_categories, top), dtype=np.int64)
    counts = np.zeros((n_categories, top), dtype=np.float32)
    if top == 0 or len(data) < 2:
        return ids, counts
    user = data.user_index
    a, b = data.cats[:-1], data.cats[1:]
    pair = (user[:-1] == user[1:]) & (a > UNKNOWN) & (b > UNKNOWN)
    pairs, n = np.unique(a[pair] * n_categories + b[pair], return_counts=True)
    src, dst = pairs // n_categories, pairs % n_categories
    order = np.lexsort((dst, -n, src))
    src, dst, n = src[order], dst[order], n[order]
    first = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < top
    ids[src[keep], rank[keep]] = dst[keep]
    counts[src[keep], rank[keep]] = n[keep]
    return ids, counts


def fit_calibrated(model: SeqModel, data: SeqData, cfg: TrainConfig, data_end: float) -> dict[str, Any]:
    """Train on `training_views(data)` with the last `calibrate_frac` of the log's time held out
    as targets (still context), then `calibrate_fusion` on it. Returns fit_model's stats plus
    the calibration."""
    ids, counts = category_successors(data, model.cfg.n_categories, model.cfg.cat_successors)
    model.set_category_successors(torch.as_tensor(ids), torch.as_tensor(counts))
    views = training_views(data, cfg)
    if not cfg.calibrate_frac or len(data) < 2:
        return {**fit_model(model, views, cfg, data_end=data_end, counted=True), "trained_events": len(views)}
    qn = 1.0 - cfg.calibrate_frac
    since = float(np.quantile(data.ts, qn))
    w = views.weight if views.weight is not None else np.ones(len(views))
    # the weight of an event is its weight as a target: held-out targets teach nothing
    views.weight = np.where(views.ts < since, w, 0.0)
    stats = fit_model(model, views, cfg, data_end=data_end, counted=True)
    stats["trained_events"] = len(views)
    # the held-out period seen as after a deployment: its ids unknown before `since` dropped
    held_out = cutoff_view(data, qn)
    stats["calibration"] = {**calibrate_fusion(model, held_out, since, seed=cfg.seed),
                            **calibrate_actions(model, held_out, since, seed=cfg.seed),
                            **calibrate_successor_rank(model, held_out, since, seed=cfg.seed)}
    return stats


def build_model(data_items: np.ndarray, data_cats: np.ndarray, cfg: TrainConfig) -> tuple[SeqModel, Vocab, Vocab]:
    iv = Vocab.build(data_items, cfg.max_items)
    cv = Vocab.build(data_cats[data_cats >= 0], cfg.max_categories)
    mc = ModelConfig(n_items=len(iv), n_categories=len(cv), hidden=cfg.hidden, emb=cfg.emb,
                     ring=cfg.ring, dropout=cfg.dropout, copy_ids=cfg.copy_ids,
                     copy_context=cfg.copy_context, fusion=cfg.fusion, copy_decay=cfg.copy_decay,
                     copy_transitions=cfg.copy_transitions, cat_successors=cfg.cat_successors,
                     cat_history_first=cfg.cat_history_first)
    model = SeqModel(mc)
    model.set_valid(len(iv), len(cv))
    if cfg.pop_prior:
        with torch.no_grad():
            for bias, counts in ((model.item_bias, np.bincount(iv.index(data_items), minlength=len(iv))),
                                 (model.cat_bias, np.bincount(cv.index(data_cats[data_cats >= 0]),
                                                              minlength=len(cv)))):
                bias[: len(counts)] = torch.as_tensor(np.log1p(counts), dtype=bias.dtype)
    return model, iv, cv


def train_model(events: Iterable[LogEvent], cfg: TrainConfig) -> Checkpoint:
    """Build vocabularies and a model from LogEvents and train it; returns the checkpoint (v1)."""
    seed_everything(cfg.seed)
    a = events_to_arrays(events)
    if len(a["item"]) < 2:
        raise ValueError("need at least two events to train")
    model, iv, cv = build_model(a["item"], a["cat"], cfg)
    model.to(resolve_device(cfg.device))
    data = make_seqdata(a["user"], iv.index(a["item"]), cv.index(a["cat"]), a["action"], a["ts"], a["row"])
    data_end, n_events, n_users = float(data.ts.max()), len(data), len(data.users)
    stats = fit_calibrated(model, data, cfg, data_end=data_end)
    meta = {"train": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "events": n_events, "users": n_users, "trained_events": stats["trained_events"],
            "calibration": stats.get("calibration", {}),
            "events_per_s": [round(r, 1) for r in stats["events_per_s"]],
            "item_nll": [round(x, 4) for x in stats["item_nll"]],
            "data_start_s": float(a["ts"].min()), "data_end_s": float(a["ts"].max())}
    meta["train"]["device"] = str(model.device)
    return Checkpoint(model, iv, cv, 1, meta, model.cfg)


# --------------------------------------------------------------------------------------------
# Evaluation ranker


def states_at(model: SeqModel, data: SeqData, positions: np.ndarray,
              batch_users: int = 64) -> Iterator[tuple[np.ndarray, Tensor, Recent]]:
    """The model's state after the events at flat `positions` of `data` (each sees its user's
    events up to and including that position), a group of users at a time: yields (indices
    into `positions`, h [n, H], Recent of [n, L' <= L], trimmed)."""
    device, mc = model.device, model.cfg
    user_of = np.searchsorted(data.starts, positions, side="right") - 1
    users = np.unique(user_of)
    for i in range(0, len(users), batch_users):
        us = users[i: i + batch_users]
        b = make_batch(data, us, math.inf, math.inf, mc.n_gap_buckets, device)
        hs, _ = model.encode(None, b.items, b.cats, b.actions, b.gaps)
        rec = recent_windows(b.items, b.cats, b.actions, b.ts, b.mask, mc.ring, mc.n_gap_buckets)
        sel = np.flatnonzero(np.isin(user_of, us))
        rows = torch.as_tensor(np.searchsorted(us, user_of[sel]), device=device)
        cols = torch.as_tensor(positions[sel] - data.starts[user_of[sel]], device=device)
        yield sel, hs[rows, cols], Recent(rec.items[rows, cols], rec.categories[rows, cols],
                                          rec.actions[rows, cols], rec.age[rows, cols], rec.mask[rows, cols]).trimmed()


PREDICTIONS = ("item_logits", "category_logits", "action_logits", "churn_logit")


@torch.no_grad()
def predict_at(model: SeqModel, data: SeqData, positions: np.ndarray, batch_users: int = 64,
               outputs: Sequence[str] = PREDICTIONS) -> dict[str, Tensor]:
    """Predictions after the events at flat `positions` of `data` (see `states_at`): CPU tensors
    in the order of `positions`, for each of `outputs` (names from PREDICTIONS). Ask only for
    what is used: the item logits of 10k rows over an 85k-item catalogue are 3.4 GB."""
    unknown = set(outputs) - set(PREDICTIONS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {PREDICTIONS}")
    heads = {"item_logits": model.item_logits, "category_logits": model.category_logits,
             "action_logits": lambda h, r: model.action_logits(h), "churn_logit": model.churn_logit}
    model.eval()
    out: dict[str, list[Tensor]] = {k: [] for k in outputs}
    order = []
    for sel, h, r in states_at(model, data, positions, batch_users):
        for k in outputs:
            out[k].append(heads[k](h, r).cpu())
        order.append(torch.as_tensor(sel))
    inverse = torch.cat(order).argsort()
    return {k: torch.cat(v)[inverse] for k, v in out.items()}


class GRURanker:
    """`models.evaluate.Ranker` for the GRU: fit on the train part, score every candidate in V.

    The model trained by `fit` is cached per train set, so the item and category tasks of one log
    (same train events) share one training run. Scores are the model's log-probabilities mapped
    from vocabulary indices to V's order."""

    _cache: dict[tuple, tuple[SeqModel, Vocab, Vocab]] = {}

    def __init__(self, cfg: TrainConfig | None = None, online_lr: float | None = None, *,
                 seed: int | None = None, checkpoint: str | None = None):
        cfg = cfg or TrainConfig()
        if seed is not None:
            cfg = TrainConfig(**{**asdict(cfg), "seed": int(seed)})
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.online_lr = online_lr if online_lr is not None else self.cfg.lr / 3
        self.model: SeqModel | None = None
        self._seq: tuple[int, SeqData] | None = None
        self._opt: torch.optim.Optimizer | None = None

    def _train_key(self, data: Any) -> tuple:
        tr = data.is_train
        h = hash((data.item[tr].tobytes(), data.category[tr].tobytes(), data.ts[tr].tobytes(),
                  data.user[tr].tobytes()))
        return (h, tuple(sorted(asdict(self.cfg).items())))

    def fit(self, data: Any) -> None:
        if self.checkpoint is not None:  # a trained checkpoint: used as it is, never refit
            from models.gru import load_checkpoint
            ck = load_checkpoint(self.checkpoint, device=resolve_device(self.cfg.device))
            self._cache.clear()
            self._cache[("checkpoint", str(self.checkpoint))] = (ck.model, ck.item_vocab, ck.category_vocab)
            self.model, self.item_vocab, self.cat_vocab = ck.model, ck.item_vocab, ck.category_vocab
            self.model = copy.deepcopy(self.model)
            self._seq, self._opt = None, None
            return
        key = self._train_key(data)
        if key not in self._cache:
            seed_everything(self.cfg.seed)
            tr = data.is_train
            model, iv, cv = build_model(data.item[tr], data.category[tr], self.cfg)
            model.to(resolve_device(self.cfg.device))
            seq = make_seqdata(data.user[tr], iv.index(data.item[tr]), cv.index(data.category[tr]),
                               data.action[tr].astype(np.int64), data.ts[tr], data.row[tr])
            fit_calibrated(model, seq, self.cfg, data_end=float(data.ts[tr].max()))
            self._cache.clear()  # one model at a time: bounded memory
            self._cache[key] = (model, iv, cv)
        model, self.item_vocab, self.cat_vocab = self._cache[key]
        self.model = copy.deepcopy(model)  # online learning must not touch the cached model
        self._seq, self._opt = None, None

    def _seqdata(self, data: Any) -> SeqData:
        if self._seq is None or self._seq[0] != id(data):
            seq = make_seqdata(data.user, self.item_vocab.index(data.item), self.cat_vocab.index(data.category),
                               data.action.astype(np.int64), data.ts, data.row)
            self._seq = (id(data), seq)  # data rows are already in (user, ts, row) order
        return self._seq[1]

    def _predict(self, data: Any, positions: np.ndarray, output: str) -> Tensor:
        assert self.model is not None, "fit first"
        pos = np.asarray(positions, dtype=np.int64)
        return predict_at(self.model, self._seqdata(data), pos, outputs=(output,))[output]

    def score(self, data: Any, event_idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(event_idx, dtype=np.int64)
        item = data.target == "item"
        # the context ends just before the scored event
        logits = self._predict(data, idx - 1, "item_logits" if item else "category_logits")
        cols = (self.item_vocab if item else self.cat_vocab).index(data.V)
        return logits[:, torch.as_tensor(cols)].double().numpy()

    def action_probs(self, data: Any, event_idx: np.ndarray) -> np.ndarray:
        logits = self._predict(data, np.asarray(event_idx, dtype=np.int64) - 1, "action_logits")
        return torch.softmax(logits.double(), -1).numpy()

    def churn_scores(self, data: Any, event_idx: np.ndarray, horizon_s: float | None = None) -> np.ndarray:
        """P(no event within the TRAINING horizon) after event i (inclusive)."""
        logit = self._predict(data, np.asarray(event_idx, dtype=np.int64), "churn_logit")
        return torch.sigmoid(logit.double()).numpy()

    def learn(self, data: Any, event_idx: np.ndarray) -> None:
        """Online: one pass of SGD over the revealed events, each with up to `bptt` events of
        its user's context (hidden state re-derived from that window)."""
        assert self.model is not None, "fit first"
        idx = np.sort(np.asarray(event_idx, dtype=np.int64))
        if len(idx) == 0:
            return
        seq = self._seqdata(data)
        rows = []
        for u in np.unique(data.user[idx]):
            mine = idx[data.user[idx] == u]
            lo = max(int(data.seq_start[u]), int(mine.min()) - self.cfg.bptt)
            rows.append(np.arange(lo, int(mine.max()) + 1))
        r = np.concatenate(rows)
        sub = make_seqdata(data.user[r], seq.items[r], seq.cats[r], seq.actions[r], seq.ts[r], data.row[r])
        sub.item_new = sub.cat_new = None
        if self._opt is None:
            self._opt = torch.optim.Adam(self.model.parameters(), lr=self.online_lr)
        cfg = TrainConfig(**{**asdict(self.cfg), "progress": False})
        fit_model(self.model, sub, cfg, data_end=float(data.ts[r].max()), epochs=1, optimizer=self._opt,
                  item_counts=np.bincount(seq.items[data.is_train], minlength=self.model.cfg.n_items))


# --------------------------------------------------------------------------------------------
# CLI glue


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `seqstream train LOG --format FMT --out model.pt ...`."""
    from models.datasets import FORMATS
    d = TrainConfig()
    parser.add_argument("log", help="behaviour log to train on")
    parser.add_argument("--format", required=True, choices=FORMATS, help="log format")
    parser.add_argument("--out", required=True, help="checkpoint path to write (e.g. model.pt)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--hidden", type=int, default=d.hidden)
    parser.add_argument("--emb", type=int, default=d.emb)
    parser.add_argument("--ring", type=int, default=d.ring, help="recent events the copy path sees")
    parser.add_argument("--batch", type=int, default=d.batch, help="users per mini-batch, at least")
    parser.add_argument("--batch-events", type=int, default=d.batch_events,
                        help="add users to a mini-batch while users x chunk length stays within this "
                             "(short sessions train in larger batches; 0: exactly --batch users)")
    parser.add_argument("--bptt", type=int, default=d.bptt)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--negatives", type=int, default=d.negatives)
    parser.add_argument("--alpha", type=float, default=d.alpha, help="negatives ∝ popularity^alpha")
    parser.add_argument("--horizon-hours", type=float, default=d.horizon_s / 3600, help="churn horizon")
    parser.add_argument("--max-items", type=int, default=d.max_items, help="item vocabulary capacity")
    parser.add_argument("--calibrate-frac", type=float, default=d.calibrate_frac,
                        help="last share of the log's time held out to calibrate the copy/explore "
                             "mixture (0: no hold-out)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--version", type=int, default=1, help="model version stored in the checkpoint")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="skip", help="bad log rows")
    parser.add_argument("--no-progress", action="store_true")


def run_train_command(args: argparse.Namespace) -> int:
    """Train from a log and write a checkpoint. Returns the exit status; errors are one line."""
    from models.datasets import BadRow, ErrorReport, read_events
    checks = [(args.epochs >= 1, "--epochs must be >= 1"), (args.hidden >= 1, "--hidden must be >= 1"),
              (args.ring >= 1, "--ring must be >= 1"), (args.batch >= 1, "--batch must be >= 1"),
              (args.batch_events >= 0, "--batch-events must be >= 0"),
              (args.bptt >= 1, "--bptt must be >= 1"), (args.lr > 0, "--lr must be > 0"),
              (args.negatives >= 1, "--negatives must be >= 1"),
              (args.horizon_hours > 0, "--horizon-hours must be > 0"),
              (args.max_items >= 3, "--max-items must be >= 3"),
              (0 <= args.calibrate_frac < 1, "--calibrate-frac must be in [0, 1)")]
    for ok, msg in checks:
        if not ok:
            print(f"seqstream train: error: {msg}", file=sys.stderr)
            return 2
    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, emb=args.emb, ring=args.ring, batch=args.batch,
                      batch_events=args.batch_events,
                      bptt=args.bptt, lr=args.lr, negatives=args.negatives, alpha=args.alpha,
                      horizon_s=args.horizon_hours * 3600, max_items=args.max_items,
                      calibrate_frac=args.calibrate_frac, seed=args.seed,
                      device=args.device, progress=not args.no_progress)
    report = ErrorReport()
    try:
        ck = train_model(read_events(args.log, args.format, on_error=args.on_error, errors=report), cfg)
    except FileNotFoundError:
        print(f"seqstream train: error: no such file: {args.log}", file=sys.stderr)
        return 2
    except (BadRow, ValueError) as e:
        print(f"seqstream train: error: {e}", file=sys.stderr)
        return 1
    ck.meta["source"] = {"log": str(args.log), "format": args.format, "bad_rows": report.count}
    save_checkpoint(args.out, ck.model, ck.item_vocab, ck.category_vocab, version=args.version, meta=ck.meta)
    rate = np.median(ck.meta["events_per_s"]) if ck.meta["events_per_s"] else 0.0
    print(f"wrote {args.out}: {ck.meta['events']} events, {ck.meta['users']} users, "
          f"{len(ck.item_vocab) - 2} items, {len(ck.category_vocab) - 2} categories, "
          f"{rate:.0f} events/s, bad rows skipped: {report.count}", file=sys.stderr)
    cal = ck.meta.get("calibration") or {}
    if "item_temp" in cal:
        print(f"calibrated on {cal['item_rows']:.0f} held-out next items: explore temperature "
              f"{cal['item_temp']:g}, gate shift {cal['item_gate_shift']:+g}, NLL "
              f"{cal['item_nll_before']:.3f} -> {cal['item_nll_after']:.3f}", file=sys.stderr)
    if "successor_rank_scale" in cal:
        print(f"category ranking: successor term x{cal['successor_rank_scale']:g}, held-out MRR@20 "
              f"{cal['successor_rank_mrr20_before']:.4f} -> {cal['successor_rank_mrr20_after']:.4f} "
              f"({cal['successor_rank_rows']:.0f} rows)", file=sys.stderr)
    return 0
