"""Online fine-tuning of `models.gru.SeqModel` in micro-batches: pure PyTorch, no Kafka, no Faust.

The streaming trainer (stream/online.py) and the drift benchmark (bench/bench_drift.py) run this
same code. River-like API:

    learner = OnlineLearner.from_checkpoint(ckpt, OnlineConfig(lr=1e-3))
    report = learner.learn_many(samples)      # one round: test on them, decide, then train
    if report.promoted:
        publish(learner.serving, learner.version)
    learner.evaluate(samples)                 # HR@20, MRR@20, next-action log-loss

A **sample** is what the worker saw when one in-order event was applied: the user's ring after
insertion, oldest -> newest. `ring[:-1]` is the context, `ring[-1]` the target (item, category,
action and, through its time, the gap). Bounded: at most the ring's L events (see `encode_sample`).

One round (`learn_many`), prequential ("test, then train"):
1. the round's new samples are *held back*: neither the serving version nor the candidate has
   trained on them. Both are evaluated on them (full ranking over the vocabulary).
2. promotion: the candidate (the serving version plus everything learned since) replaces the
   serving version if it is not worse by more than `margin` (relative) on HR@K, MRR@K and the
   next-action log-loss (`promotion_decision`). After `reset_after` rejections in a row the
   candidate is reset to the serving weights (a poisoned candidate cannot linger).
3. the new samples go into a bounded FIFO replay buffer of recent samples, and the candidate takes
   Adam steps on mini-batches that mix the new samples with as many replayed ones
   (`replay_ratio`), at most `max_steps` per round, so one burst cannot wreck the model.

Losses are the offline ones of models/train.py (`item_log_prob` with popularity-aware shared
negatives and the log-Q correction, `category_log_prob`, next-action cross-entropy, churn BCE),
with the same weights by default. Online differences:
- context: the hidden state is re-encoded from zeros over the newest `encode_context` (20)
  events of the sample's ring (the serving Scorer re-folds a stale state from the whole ring after
  a swap; 20 keeps a training step 2.5x cheaper than 49 and a GRU's memory is mostly recent);
  the copy path sees the whole ring, as when serving;
- negatives are drawn ∝ pop^alpha from popularity counted online over the targets seen, decayed
  (half-life `pop_half_life` samples), so that trending items are sampled as they trend;
- churn: the label of the context's last event is "the target came more than `horizon_s` later".
  Users who never come back produce no sample, so online churn labels are biased towards "no
  churn" (right-censored): the online churn weight is small (`w_churn`, default 0.1).
Vocabulary: fixed to the serving checkpoint's. Targets outside it are not trained on and not
scored (no version can rank an item it has no row for); new items need an offline retrain.
"""
from __future__ import annotations

import copy
import io
import math
import os
import random
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import msgpack
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.gru import (GAP_FIRST, UNKNOWN, Checkpoint, Recent, SeqModel, Vocab, gap_bucket,
                        load_checkpoint, save_checkpoint)
from models.schema import ACTIONS
from models.train import (GradientStep, NegativeSampler, TrainConfig, category_log_prob, item_log_prob,
                          target_ranks)

SAMPLE_FORMAT = 1
MAX_SAMPLE_EVENTS = 1000  # the ring is at most 1000 long (Settings.validate)
_OFFLINE = TrainConfig()


# --------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True, slots=True)
class Sample:
    """Context + target of one user, oldest -> newest; the last entry is the target."""

    user_id: int
    items: tuple[int, ...]
    categories: tuple[int, ...]  # -1: no category
    actions: tuple[int, ...]  # indices into ACTIONS
    ts_ms: tuple[int, ...]
    model_version: int = -1  # the version that served the prediction before the target

    def __len__(self) -> int:
        return len(self.items)

    @property
    def gap_s(self) -> float:
        """Seconds between the last context event and the target."""
        return (self.ts_ms[-1] - self.ts_ms[-2]) / 1000.0


def encode_sample(user_id: int, items: Sequence[int], categories: Sequence[int],
                  actions: Sequence[int], ts_ms: Sequence[int], model_version: int = -1) -> bytes:
    """Compact msgpack: times delta-encoded, actions as bytes (about 4-6 bytes per event)."""
    ts = list(ts_ms)
    deltas = [ts[0]] + [b - a for a, b in zip(ts, ts[1:])] if ts else []
    return msgpack.packb({"f": SAMPLE_FORMAT, "u": int(user_id), "i": list(items),
                          "c": list(categories), "a": bytes(actions), "t": deltas,
                          "v": int(model_version)}, use_bin_type=True)


def decode_sample(data: bytes) -> Sample:
    """bytes -> Sample; ValueError for anything malformed (a bad sample is dropped, never trained)."""
    try:
        d = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several types
        raise ValueError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(d, dict) or d.get("f") != SAMPLE_FORMAT:
        raise ValueError("not a training sample")
    try:
        items, cats, acts, deltas = d["i"], d["c"], d["a"], d["t"]
        n = len(items)
        if not 2 <= n <= MAX_SAMPLE_EVENTS or not (len(cats) == len(acts) == len(deltas) == n):
            raise ValueError(f"bad sample length {n}")
        if not isinstance(acts, bytes) or max(acts) >= len(ACTIONS):
            raise ValueError("bad actions")
        if not all(type(x) is int for x in items) or not all(type(x) is int for x in cats):
            raise ValueError("bad ids")
        if not all(type(x) is int for x in deltas) or min(deltas[1:]) < 0:
            raise ValueError("bad times (must be event-time ordered)")
        ts = np.cumsum(np.asarray(deltas, dtype=np.int64)).tolist()
        return Sample(int(d["u"]), tuple(items), tuple(cats), tuple(acts), tuple(ts),
                      int(d.get("v", -1)))
    except (KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"bad sample: {type(exc).__name__}") from None


# --------------------------------------------------------------------------------------------
# Config, replay, metrics


@dataclass
class OnlineConfig:
    lr: float = _OFFLINE.lr / 3  # as GRURanker's online mode
    batch: int = 128  # samples per gradient step
    max_steps: int = 64  # gradient steps per round, at most
    max_new_per_round: int = 4096  # a larger burst is sub-sampled (it stays in the replay buffer)
    replay_size: int = 20_000  # FIFO of recent samples
    replay_ratio: float = 1.0  # replayed samples per new sample in a round
    max_context: int = 50  # context events per sample for the copy path (the ring bounds it)
    encode_context: int = 20  # of which the newest this many are run through the GRU for h
    negatives: int = _OFFLINE.negatives
    alpha: float = _OFFLINE.alpha
    pop_half_life: float = 50_000.0  # in samples
    horizon_s: float = _OFFLINE.horizon_s
    w_category: float = _OFFLINE.w_category
    w_action: float = _OFFLINE.w_action
    w_churn: float = 0.1  # right-censored online labels: see the module docstring
    clip: float = _OFFLINE.clip
    k: int = 20  # HR@k, MRR@k
    margin: float = 0.02  # relative: promote unless worse than serving by more than this
    min_eval: int = 30  # scored item targets needed to decide; else the round defers
    reset_after: int = 3  # rejections in a row before the candidate restarts from serving
    train: bool = True  # False: a frozen learner (evaluation only)
    device: str | None = None  # None: cuda when available
    seed: int = 0

    def validate(self) -> "OnlineConfig":
        if self.lr <= 0 or self.batch < 1 or self.max_steps < 1 or self.replay_size < 0:
            raise ValueError("online config: lr, batch, max_steps must be positive")
        if not 0 <= self.margin < 1 or self.replay_ratio < 0:
            raise ValueError("online config: margin must be in [0, 1), replay_ratio >= 0")
        return self


class ReplayBuffer:
    """A bounded FIFO of recent samples with uniform sampling (O(1) append, O(k) sample)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = int(capacity)
        self._items: deque[Sample] = deque(maxlen=max(self.capacity, 1))
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._items) if self.capacity > 0 else 0

    def add_many(self, samples: Iterable[Sample]) -> None:
        if self.capacity > 0:
            self._items.extend(samples)

    def sample(self, k: int) -> list[Sample]:
        n = len(self)
        if n == 0 or k <= 0:
            return []
        return [self._items[self._rng.randrange(n)] for _ in range(k)]


def promotion_decision(candidate: dict[str, float], serving: dict[str, float], *, margin: float,
                       min_eval: int, k: int = 20) -> tuple[bool | None, str]:
    """(True, why) promote / (False, why) reject / (None, why) not enough evidence.

    Not worse than serving by more than `margin` (relative) on HR@k, MRR@k and action log-loss."""
    if candidate.get("n_items", 0) < min_eval:
        return None, f"only {candidate.get('n_items', 0)} scored targets (< {min_eval})"
    worse = []
    for key in (f"hr@{k}", f"mrr@{k}"):
        if candidate[key] < serving[key] * (1.0 - margin) - 1e-12:
            worse.append(f"{key} {candidate[key]:.4f} < {serving[key]:.4f}")
    ll = "action_logloss"
    if candidate[ll] > serving[ll] * (1.0 + margin) + 1e-12:
        worse.append(f"{ll} {candidate[ll]:.4f} > {serving[ll]:.4f}")
    if worse:
        return False, "worse: " + "; ".join(worse)
    return True, "not worse than serving"


@dataclass
class RoundReport:
    """What one `learn_many` round did (JSON-friendly through `to_dict`)."""

    n_samples: int
    decision: str  # promoted | rejected | deferred | untrained
    reason: str
    version: int  # serving version after the round
    parent: int | None  # for a promotion: the version it replaced
    candidate: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] = field(default_factory=dict)  # the version served before the round
    steps: int = 0
    loss: float = math.nan
    seconds: float = 0.0
    trained_samples: int = 0  # samples the candidate has trained on since it was forked

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Tensors of samples


@dataclass
class SampleBatch:
    """Samples as tensors: context for `encode` (right padded) and the ring for the copy path."""

    items: Tensor  # [S, T] vocabulary indices, right padded
    cats: Tensor
    actions: Tensor
    gaps: Tensor
    lengths: Tensor  # [S] context lengths (>= 1)
    recent: Recent  # [S, T] left padded (oldest -> newest): the ring after the last context event
    t_item: Tensor  # [S] target indices (UNKNOWN = not in the vocabulary)
    t_cat: Tensor
    t_action: Tensor
    churn: Tensor  # [S] float: 1 if the target came more than horizon_s later

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def rows(self, idx: Tensor) -> "SampleBatch":
        r = self.recent
        return SampleBatch(self.items[idx], self.cats[idx], self.actions[idx], self.gaps[idx],
                           self.lengths[idx], Recent(r.items[idx], r.categories[idx], r.actions[idx],
                                                     r.age[idx], r.mask[idx]),
                           self.t_item[idx], self.t_cat[idx], self.t_action[idx], self.churn[idx])


def make_sample_batch(samples: Sequence[Sample], items: Vocab, categories: Vocab, *,
                      n_gap_buckets: int, max_context: int, horizon_s: float,
                      device: torch.device, encode_context: int | None = None) -> SampleBatch:
    S = len(samples)
    ctx_len = np.array([min(len(s) - 1, max_context) for s in samples], dtype=np.int64)
    T = int(ctx_len.max()) if S else 1
    raw_i = np.zeros((S, T), dtype=np.int64)
    raw_c = np.full((S, T), -1, dtype=np.int64)
    act = np.zeros((S, T), dtype=np.int64)
    ts = np.zeros((S, T), dtype=np.float64)
    mask = np.zeros((S, T), dtype=bool)
    tgt = np.zeros((S, 3), dtype=np.int64)
    gap_t = np.zeros(S, dtype=np.float64)
    for r, s in enumerate(samples):
        n = int(ctx_len[r])
        lo = len(s) - 1 - n
        raw_i[r, :n] = s.items[lo:-1]
        raw_c[r, :n] = s.categories[lo:-1]
        act[r, :n] = s.actions[lo:-1]
        ts[r, :n] = s.ts_ms[lo:-1]
        mask[r, :n] = True
        tgt[r] = (s.items[-1], s.categories[-1], s.actions[-1])
        gap_t[r] = (s.ts_ms[-1] - s.ts_ms[-2]) / 1000.0
    ts /= 1000.0
    idx_i = np.where(mask, items.index(raw_i), 0)
    idx_c = np.where(mask, categories.index(raw_c), 0)
    gaps = np.where(mask, gap_bucket(np.diff(ts, prepend=ts[:, :1]), n_gap_buckets), 0)
    gaps[:, 0] = GAP_FIRST  # re-encoded from zeros, as the Scorer's fold(None, None, ring)
    # the ring for the copy path: same rows, left aligned to the newest context event
    shift = T - ctx_len  # right-pad -> left-pad
    cols = (np.arange(T)[None, :] - shift[:, None]) % T
    take = lambda a: np.take_along_axis(a, cols, axis=1)  # noqa: E731
    l_mask = take(mask)
    l_ts = take(ts)
    newest = ts[np.arange(S), np.maximum(ctx_len - 1, 0)]
    age = np.where(l_mask, gap_bucket(newest[:, None] - l_ts, n_gap_buckets), 0)
    t = lambda a, dt=torch.long: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    enc_len = ctx_len
    if encode_context is not None and 0 < encode_context < T:
        # h from the newest `encode_context` events only (the GRU cost per sample is its length);
        # the copy path still sees the whole ring
        enc_len = np.minimum(ctx_len, encode_context)
        start = ctx_len - enc_len
        cols_e = np.minimum(start[:, None] + np.arange(encode_context)[None, :], T - 1)
        valid = np.arange(encode_context)[None, :] < enc_len[:, None]
        pick = lambda a: np.where(valid, np.take_along_axis(a, cols_e, axis=1), 0)  # noqa: E731
        idx_i_e, idx_c_e, act_e, gaps_e = pick(idx_i), pick(idx_c), pick(act), pick(gaps)
        gaps_e[:, 0] = GAP_FIRST
    else:
        idx_i_e, idx_c_e, act_e, gaps_e = idx_i, idx_c, act, gaps
    recent = Recent(t(np.where(l_mask, take(idx_i), 0)), t(np.where(l_mask, take(idx_c), 0)),
                    t(np.where(l_mask, take(act), 0)), t(age), t(l_mask, torch.bool))
    t_item = items.index(tgt[:, 0])
    t_cat = categories.index(tgt[:, 1])
    return SampleBatch(t(idx_i_e), t(idx_c_e), t(act_e), t(gaps_e), t(enc_len), recent, t(t_item),
                       t(t_cat), t(tgt[:, 2]), t(gap_t > horizon_s, torch.float32))


def _hidden(model: SeqModel, b: SampleBatch) -> Tensor:
    _, h = model.encode(None, b.items, b.cats, b.actions, b.gaps, b.lengths)
    return h


@torch.no_grad()
def evaluate_model(model: SeqModel, b: SampleBatch, k: int = 20,
                   max_cells: int = 1 << 24) -> dict[str, float]:
    """Full-ranking HR@k / MRR@k of the next item (targets in the vocabulary only; rank counts
    ties against the model) and the next-action log-loss, over all rows of `b`."""
    was_training = model.training
    model.eval()
    n_items = int(model.item_valid.shape[0])
    rows = max(1, max_cells // max(n_items, 1))
    ranks: list[Tensor] = []
    ll_sum, n = 0.0, len(b)
    for lo in range(0, n, rows):
        sub = b.rows(torch.arange(lo, min(n, lo + rows), device=b.lengths.device))
        h = _hidden(model, sub)
        ok = (sub.t_item > UNKNOWN) & model.item_valid[sub.t_item]
        if ok.any():
            ranks.append(target_ranks(model.item_logits(h, sub.recent)[ok], sub.t_item[ok]).cpu())
        ll_sum += float(F.cross_entropy(model.action_logits(h), sub.t_action, reduction="sum"))
    r = torch.cat(ranks).double() if ranks else torch.zeros(0, dtype=torch.float64)
    hit = r <= k
    if was_training:
        model.train()
    return {"n": n, "n_items": int(len(r)),
            f"hr@{k}": float(hit.double().mean()) if len(r) else 0.0,
            f"mrr@{k}": float((hit / r).mean()) if len(r) else 0.0,
            "action_logloss": ll_sum / max(n, 1)}


# --------------------------------------------------------------------------------------------
# The learner


class OnlineLearner:
    """Keeps the serving version and a candidate that learns from micro-batches of samples."""

    def __init__(self, model: SeqModel, items: Vocab, categories: Vocab, *, version: int,
                 config: OnlineConfig | None = None) -> None:
        self.config = (config or OnlineConfig()).validate()
        name = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        self.items, self.categories = items, categories
        self.replay = ReplayBuffer(self.config.replay_size, seed=self.config.seed)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(self.config.seed)
        self._rng = np.random.default_rng(self.config.seed)
        self.pop = np.zeros(model.cfg.n_items, dtype=np.float64)
        self.rounds = 0
        self.latest_version = int(version)  # highest version number known anywhere
        self.rebase(model, items, categories, version)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, config: OnlineConfig | None = None) -> "OnlineLearner":
        return cls(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, version=ckpt.version,
                   config=config)

    # -- versions ----------------------------------------------------------------------------

    def rebase(self, model: SeqModel, items: Vocab, categories: Vocab, version: int) -> None:
        """Serve `model` as `version` (e.g. a rollback seen on model-updates); restart the candidate."""
        self.serving = copy.deepcopy(model).to(self.device).eval()
        if len(self.pop) != model.cfg.n_items:
            self.pop = np.zeros(model.cfg.n_items, dtype=np.float64)
        self.items, self.categories = items, categories
        self.version = int(version)
        self.parent: int | None = None
        self.observe_version(version)
        self._fork()

    def observe_version(self, version: int) -> None:
        """A version number seen elsewhere (model-updates): new numbers go above it."""
        self.latest_version = max(self.latest_version, int(version))

    def _fork(self) -> None:
        self.candidate = copy.deepcopy(self.serving).train()
        self.opt = torch.optim.Adam(self.candidate.parameters(), lr=self.config.lr)
        self.trained_samples = 0
        self.rejections = 0

    # -- tensors -------------------------------------------------------------------------------

    def batch(self, samples: Sequence[Sample]) -> SampleBatch:
        c = self.config
        return make_sample_batch(samples, self.items, self.categories,
                                 n_gap_buckets=self.serving.cfg.n_gap_buckets,
                                 max_context=c.max_context, horizon_s=c.horizon_s, device=self.device,
                                 encode_context=c.encode_context)

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, samples: Sequence[Sample] | SampleBatch,
                 model: SeqModel | None = None) -> dict[str, float]:
        """Metrics of `model` (default: the serving version) on samples it has not trained on."""
        b = samples if isinstance(samples, SampleBatch) else self.batch(samples)
        if len(b) == 0:
            return {"n": 0, "n_items": 0, f"hr@{self.config.k}": 0.0, f"mrr@{self.config.k}": 0.0,
                    "action_logloss": 0.0}
        return evaluate_model(model if model is not None else self.serving, b, self.config.k)

    # -- one round -------------------------------------------------------------------------------

    def learn_many(self, samples: Sequence[Sample]) -> RoundReport:
        """Test the serving version and the candidate on `samples`, maybe promote, then train."""
        started = time.perf_counter()
        c = self.config
        samples = list(samples)
        self.rounds += 1
        if not samples:
            return RoundReport(0, "deferred", "no samples", self.version, None)
        held = self.batch(samples)
        serving_m = self.evaluate(held)
        report = RoundReport(len(samples), "untrained", "candidate has not trained yet",
                             self.version, None, serving=serving_m)
        if self.trained_samples > 0:
            cand_m = self.evaluate(held, self.candidate)
            report.candidate = cand_m
            ok, why = promotion_decision(cand_m, serving_m, margin=c.margin, min_eval=c.min_eval,
                                         k=c.k)
            report.reason = why
            if ok:
                report.parent = self.version
                report.trained_samples = self.trained_samples
                self._promote()
                report.decision = "promoted"
                report.version = self.version
            elif ok is None:
                report.decision = "deferred"
            else:
                report.decision = "rejected"
                self.rejections += 1
                if self.rejections >= c.reset_after:
                    report.reason += f"; candidate reset to v{self.version} after {self.rejections} rejections"
                    self._fork()
        if c.train:
            report.steps, report.loss = self._train(samples)
        report.seconds = time.perf_counter() - started
        return report

    def _promote(self) -> None:
        self.parent = self.version
        self.latest_version += 1
        self.version = self.latest_version
        self.serving = copy.deepcopy(self.candidate).eval()
        self.trained_samples = 0
        self.rejections = 0
        # the candidate and its optimizer state carry on from where they are

    def _observe_popularity(self, samples: Sequence[Sample]) -> None:
        decay = 0.5 ** (len(samples) / max(self.config.pop_half_life, 1.0))
        self.pop *= decay
        t = self.items.index(np.fromiter((s.items[-1] for s in samples), dtype=np.int64, count=len(samples)))
        np.add.at(self.pop, t[t > UNKNOWN], 1.0)

    def _sampler(self) -> NegativeSampler:
        counts = self.pop.copy()
        valid = self.serving.item_valid.cpu().numpy()
        # a small floor for every valid item, so items that have not trended yet still get
        # pushed down sometimes (offline, every item in the vocabulary has been seen)
        counts = np.where(valid, counts + 1e-3 * max(counts.sum(), 1.0) / max(valid.sum(), 1), 0.0)
        return NegativeSampler(counts, self.config.alpha, self.device)

    def _train(self, new: list[Sample]) -> tuple[int, float]:
        c = self.config
        if len(new) > c.max_new_per_round:
            pick = self._rng.choice(len(new), c.max_new_per_round, replace=False)
            fresh = [new[i] for i in pick]
        else:
            fresh = new
        mix = fresh + self.replay.sample(int(round(len(fresh) * c.replay_ratio)))
        self.replay.add_many(new)
        b = self.batch(mix)
        self._observe_popularity(fresh)
        sampler = self._sampler()
        model, opt = self.candidate, self.opt
        model.train()
        order = torch.randperm(len(b), generator=torch.Generator().manual_seed(self.rounds))
        steps, loss_sum = 0, 0.0
        step = GradientStep(model, opt, c.clip)
        for lo in range(0, len(b), c.batch):
            if steps >= c.max_steps:
                break
            mb = b.rows(order[lo: lo + c.batch].to(self.device))
            loss = self.loss(model, mb, sampler)
            if not loss.requires_grad:
                continue
            step(loss)
            steps += 1
            loss_sum += float(loss.detach())
        self.trained_samples += min(len(b), steps * c.batch)
        return steps, (loss_sum / steps if steps else math.nan)

    def loss(self, model: SeqModel, b: SampleBatch, sampler: NegativeSampler) -> Tensor:
        """The offline objective (models/train.py) on one target per sample."""
        c = self.config
        h = _hidden(model, b)
        total = h.new_zeros(())
        sel = b.t_item > UNKNOWN
        if sel.any():
            r = b.recent
            rs = Recent(r.items[sel], r.categories[sel], r.actions[sel], r.age[sel], r.mask[sel])
            lp = item_log_prob(model, h[sel], rs, b.t_item[sel],
                               sampler.sample(c.negatives, self._gen), sampler)
            total = total - lp.mean()
        selc = b.t_cat > UNKNOWN
        if selc.any() and c.w_category > 0:
            r = b.recent
            rs = Recent(r.items[selc], r.categories[selc], r.actions[selc], r.age[selc], r.mask[selc])
            total = total - c.w_category * category_log_prob(model, h[selc], rs, b.t_cat[selc]).mean()
        if c.w_action > 0:
            total = total + c.w_action * F.cross_entropy(model.action_head(model.drop(h)), b.t_action)
        if c.w_churn > 0:
            logit = model.churn_logit(h, b.recent)
            total = total + c.w_churn * F.binary_cross_entropy_with_logits(logit, b.churn)
        return total


# --------------------------------------------------------------------------------------------
# Weights as bytes (the checkpoint format of models/gru.py)


def checkpoint_bytes(model: SeqModel, items: Vocab, categories: Vocab, *, version: int,
                     meta: dict[str, Any]) -> bytes:
    """The exact `save_checkpoint` format, as bytes (loads with `checkpoint_from_bytes`)."""
    fd, name = tempfile.mkstemp(suffix=".pt", prefix="seqstream-online-")
    os.close(fd)
    try:
        save_checkpoint(name, model, items, categories, version=version, meta=meta)
        with open(name, "rb") as f:
            return f.read()
    finally:
        for p in (name, name + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)


def checkpoint_from_bytes(data: bytes, device: torch.device | str | None = None) -> Checkpoint:
    return load_checkpoint(io.BytesIO(data), device=device)  # type: ignore[arg-type]
