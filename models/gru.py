"""The seqstream sequence model, in one file: embeddings -> GRU -> heads with a repeat/copy path.

Per event the model reads four ids: item, category, action (click/cart/purchase) and a log-spaced
bucket of the seconds since the user's previous event. A GRU carries one hidden vector per user,
so the streaming worker pays one `step` per event; `encode` runs the same nn.GRU over whole
sequences for training, and the two agree exactly (tests/unit/test_gru.py).

After each event `predict` gives, for the user's NEXT event:
- item scores over the whole vocabulary: a RepeatNet-style mixture
      p(v) = g * p_repeat(v) + (1 - g) * p_explore(v)
  where p_repeat scores the DISTINCT ids of the user's recent ring of events by generic features
  (recency rank, age, last action, count, time- and event-decayed counts of the id and of its
  category, carted/bought, same category as the newest event, how often the user went from the
  newest id to it and from it to the newest id),
  starting exactly as the "repeat" baseline's most-recent-first order; p_explore is a softmax
  over the whole catalogue through the SHARED item embedding table (pointer-generator style), and
  g is a learned gate. After training, a temperature of the explore logits and a shift of the gate
  are fitted on held-out events (`explore_temp`, `gate_shift`). On Taobao-like logs most next
  items are revisits, so the copy path is what lets a sequence model beat the "repeat" baseline;
- the same mixture for categories, with two differences: the user's own categories always rank
  above new ones (`cat_history_first`), and the explore head also reads train successor counts
  of the newest category (`cat_successors`), scaled in served rankings by a factor fitted on
  held-out events by MRR@20 (`cat_succ_rank_scale`: categories are only served as a ranking);
- next action (3-way softmax) and churn (a logit; sigmoid = P(no event within the horizon)).

Ids: `Vocab` maps raw ids to a bounded index range (0 = padding, 1 = unknown).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bptt_gru import BPTTGRU
from models.schema import ACTIONS

PAD = 0
UNKNOWN = 1
GAP_PAD = 0  # padding / no event
GAP_FIRST = 1  # the user's first event: no previous event to measure a gap from
CHECKPOINT_FORMAT = "seqstream-gru/1"
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Config and small helpers


@dataclass
class ModelConfig:
    n_items: int = 50_002  # capacity incl. 0 = padding, 1 = unknown
    n_categories: int = 5_002  # same convention
    hidden: int = 64
    emb: int = 64
    n_gap_buckets: int = 48
    ring: int = 50  # L: recent events the copy path attends over
    action_emb: int = 16
    gap_emb: int = 16
    attn: int = 16  # width of the copy path's context-dependent feature keys
    max_count: int = 16  # occurrence counts in the ring are clipped here
    copy_ids: bool = True  # copy keys include the id embedding (else generic features only)
    copy_context: bool = False  # copy scores also depend on h (q(h).k); off: generic features only
    # "tiered": where the gate says P(repeat) > 0.5, every ring id ranks above every explore id
    # (order within each tier kept, still a distribution), like the repeat baseline; elsewhere,
    # and with "mixture" everywhere, the plain g*p_repeat + (1-g)*p_explore
    fusion: str = "tiered"
    # categories, with "tiered": the user's own categories rank above new ones on every row, not
    # only where the gate favours a revisit (the repeat baseline's tiers). The explore head, with
    # its successor counts, then orders the new ones below them. On the Taobao time slice, where
    # six in ten category targets are new, the gate alone let sharp explore scores displace the
    # newest category (R@1 .339 with successor counts, against .348 this way)
    cat_history_first: bool = True
    # copy scores also read time- and position-decayed occurrence counts of each ring id (learned
    # weights, zero at the start): "how much, and how lately, did the user dwell on it" is the
    # strongest revisit signal, and the clipped count table cannot weigh old against new visits
    copy_decay: bool = True
    # copy scores also read the user's own transitions around the newest id: how often each ring
    # id came right after it, and right before it ("A, B, A, B": people compare two items)
    copy_transitions: bool = True
    # the category explore head also reads how often each category followed the newest one in the
    # training log (its `cat_successors` most frequent successors; 0: off): a memory of
    # transitions that a 64-dim embedding cannot hold, and what item-kNN ranks new categories by
    cat_successors: int = 32
    dropout: float = 0.25
    n_actions: int = len(ACTIONS)


def gap_bucket(seconds: np.ndarray | Tensor, n_buckets: int = 48) -> np.ndarray | Tensor:
    """Log-spaced bucket ids (2 .. n_buckets-1) of gaps in seconds; half-octave steps.

    Bucket 0 is padding and 1 marks a user's first event; negative gaps (out-of-order events)
    count as 0 s. 2 + floor(2*log2(1+s)): 0 s -> 2, 1 s -> 4, 1 min -> 13, 1 h -> 25, 1 day -> 34.
    """
    if isinstance(seconds, Tensor):
        s = seconds.to(torch.float64).clamp(min=0.0)
        b = 2 + torch.floor(2.0 * torch.log2(1.0 + s)).long()
        return b.clamp(max=n_buckets - 1)
    s = np.clip(np.asarray(seconds, dtype=np.float64), 0.0, None)
    b = 2 + np.floor(2.0 * np.log2(1.0 + s)).astype(np.int64)
    return np.minimum(b, n_buckets - 1)


@dataclass
class Recent:
    """The user's last L events (oldest -> newest, left padded), all [B, L].

    `age` is the gap bucket of each event relative to the newest one (0 = padding)."""

    items: Tensor
    categories: Tensor
    actions: Tensor
    age: Tensor
    mask: Tensor  # Bool

    def to(self, device: torch.device | str) -> "Recent":
        return Recent(*(t.to(device) for t in (self.items, self.categories, self.actions, self.age, self.mask)))

    def trimmed(self) -> "Recent":
        """The same rings without the leading columns that are padding in every row. Every head
        reads rings from the right (positions, ranks and decay count back from the newest event),
        so no score changes, and short histories stop paying for the full ring: half of training's
        ring positions on taobao_users were such padding."""
        L = self.mask.shape[-1]
        width = max(int(self.mask.sum(-1).max()), 1) if self.mask.numel() else L
        if width >= L:
            return self
        return Recent(*(t[..., L - width:] for t in (self.items, self.categories, self.actions, self.age, self.mask)))


@dataclass
class Prediction:
    item_logits: Tensor  # [B, n_items] log-probabilities; pad/unknown/unused rows = -inf
    category_logits: Tensor  # [B, n_categories] same
    action_logits: Tensor  # [B, 3] unnormalised
    churn_logit: Tensor  # [B]


def windows(x: Tensor, length: int, fill: int | bool = 0) -> Tensor:
    """[B, T] -> [B, T, L]: at step t the values of steps t-L+1..t (left padded with `fill`)."""
    padded = F.pad(x, (length - 1, 0), value=fill)
    return padded.unfold(1, length, 1)


def recent_windows(items: Tensor, cats: Tensor, actions: Tensor, ts: Tensor, mask: Tensor,
                   length: int, n_gap_buckets: int) -> Recent:
    """Recent rings at every step of right-padded sequences [B, T] -> Recent of [B, T, L].

    `ts` are event times in seconds (any integer/float dtype); `mask` marks real events."""
    m = windows(mask, length, False) & mask.unsqueeze(-1)
    wts = windows(ts, length, 0)
    age = gap_bucket(ts.unsqueeze(-1) - wts, n_gap_buckets)
    age = torch.where(m, age, torch.zeros_like(age))
    z = lambda x: torch.where(m, windows(x, length, 0), torch.zeros_like(m, dtype=torch.long))  # noqa: E731
    return Recent(z(items), z(cats), z(actions), age, m)


@dataclass
class RingGroups:
    """The distinct ids of rings [N, L], most recent first: slot j holds the id whose newest
    occurrence is the j-th most recent among the ring's ids (its recency rank, 0 = the newest
    id, the "repeat" baseline's order). G is the largest number of distinct ids in any row."""

    pos: Tensor  # [N, G] ring position of each slot's newest occurrence (0 in empty slots)
    valid: Tensor  # [N, G] Bool: the slot holds an id
    group_of: Tensor  # [N, L] row of `group_sums` for each ring position
    group_sums: Tensor  # [N * L, 3 + K]: occurrences, carts, purchases, then the sums of the K weights
    sums: Tensor = field(init=False)  # [N, G, 3 + K] the same per slot (0 in empty slots)

    def __post_init__(self) -> None:
        self.sums = self.sums_at(self.pos) * self.valid.unsqueeze(-1)

    def sums_at(self, pos: Tensor) -> Tensor:
        """The sums of the id found at ring positions `pos` [N, M] -> [N, M, 3 + K]."""
        rows = self.group_of.gather(1, pos).reshape(-1)
        return self.group_sums.index_select(0, rows).view(*pos.shape, self.group_sums.shape[1])


def ring_groups(ids: Tensor, actions: Tensor, mask: Tensor, weights: Tensor | None = None) -> RingGroups:
    """Group right-aligned rings [N, L] by id. With `weights` [N, L, K] (per-event weights, e.g.
    decay kernels) the sums also hold each id's weight sums over its occurrences.

    O(L log L) per ring (one sort, then segment reductions), not O(L^2). The copy heads then
    score G slots instead of L positions: G is a quarter of L for categories on taobao_users."""
    n, L = ids.shape
    dev = ids.device
    key = torch.where(mask, ids, torch.full_like(ids, -1))  # padding: its own group
    sv, perm = torch.sort(key, dim=-1, stable=True)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[:, 1:] = sv[:, 1:] != sv[:, :-1]
    gid_sorted = new.long().cumsum(-1) - 1  # group of each sorted position, 0..L-1
    gid = torch.empty_like(gid_sorted).scatter_(1, perm, gid_sorted)  # group per position
    group_of = gid + L * torch.arange(n, device=dev).unsqueeze(1)
    fl = group_of.reshape(-1)
    # per-id sums of per-event columns in one pass: occurrences, carts, purchases, then `weights`
    # (sums of 0/1 columns are exact in float32 for any ring length used here)
    cols = torch.stack([torch.ones_like(actions), actions == 1, actions == 2], -1).reshape(n * L, 3).float()
    if weights is not None:
        cols = torch.cat([cols, weights.reshape(n * L, weights.shape[-1]).to(cols.dtype)], 1)
    group_sums = torch.zeros_like(cols).index_add_(0, fl, cols)
    pos = torch.arange(L, device=dev).expand(n, L)
    last = torch.full((n * L,), -1, dtype=torch.long, device=dev)
    last = last.scatter_reduce(0, fl, pos.reshape(-1), "amax", include_self=True).index_select(0, fl).view(n, L)
    latest = ((last == pos) & mask).long()
    newer = latest.sum(-1, keepdim=True) - latest.cumsum(-1)  # newest occurrences after each one
    G = max(int(latest.sum(-1).max()), 1) if n else 1
    slot = torch.where(latest.bool(), newer, torch.full_like(newer, G))  # G: a spare slot, dropped
    slot_pos = torch.zeros(n, G + 1, dtype=torch.long, device=dev).scatter_(1, slot, pos)[:, :G]
    valid = torch.arange(G, device=dev) < latest.sum(-1, keepdim=True)
    return RingGroups(slot_pos, valid, group_of, group_sums)


def rank_bucket(rank: Tensor) -> Tensor:
    """Recency ranks 0..7 exactly, then half-octaves: 8 -> 8, 11 -> 9, 16 -> 10, ... (< 32 for
    any ring up to 10^5)."""
    r = rank.clamp(min=0).float()
    b = torch.where(r < 8, r, 8 + torch.floor(2.0 * torch.log2(r / 8.0)))
    return b.long().clamp(max=RANK_BUCKETS - 1)


RANK_BUCKETS = 32
# decay kernels of the copy path's decayed counts: half-lives in events and in seconds
DECAY_EVENTS = (4.0, 16.0, 64.0)
DECAY_SECONDS = (3600.0, 86400.0)
N_DECAY = len(DECAY_EVENTS) + len(DECAY_SECONDS) + 1  # + no decay: the unclipped count


def decay_weights(age: Tensor, mask: Tensor, n_age_buckets: int = 48) -> Tensor:
    """Per-event decay kernels [..., L, N_DECAY] of a right-aligned ring: 2^(-d/hl) for the
    distance d (in events) from the newest event, 2^(-s/hl) for its age s in seconds (the middle
    of its age bucket, which is all the ring keeps), and 1 (summed: the unclipped count).
    Both kinds are tables (per ring position, per age bucket), broadcast rather than recomputed."""
    L = mask.shape[-1]
    d = (L - 1 - torch.arange(L, device=mask.device, dtype=torch.float32)).unsqueeze(-1)
    by_distance = torch.pow(2.0, -d / torch.tensor(DECAY_EVENTS, device=mask.device))  # [L, 3]
    b = torch.arange(n_age_buckets, device=mask.device, dtype=torch.float32).unsqueeze(-1)
    sec = torch.pow(2.0, (b - 1.5) / 2.0) - 1.0  # inverse of gap_bucket, mid-bucket
    by_age = torch.pow(2.0, -sec / torch.tensor(DECAY_SECONDS, device=mask.device))  # [buckets, 2]
    m = mask.unsqueeze(-1).float()
    return torch.cat([by_distance.expand(*mask.shape, -1) * m, F.embedding(age, by_age) * m, m], -1)


TRANSITION_CLIP = 4  # transition counts 0..3 (3 = three or more)


def transition_weights(ids: Tensor, mask: Tensor) -> Tensor:
    """Per-event indicators [..., L, 2] of a right-aligned ring: the event comes right after an
    occurrence of the newest id, and right before one. Summed over an id's occurrences
    (ring_groups' `weights`) they count the user's own transitions newest -> id and id -> newest."""
    newest = ids[..., -1:]
    is_newest = (ids == newest) & mask
    after = torch.zeros_like(mask)
    after[..., 1:] = is_newest[..., :-1] & mask[..., 1:]
    before = torch.zeros_like(mask)
    before[..., :-1] = is_newest[..., 1:] & mask[..., :-1]
    return torch.stack([after, before], -1).float()


def row_lookup(table: Tensor, idx: Tensor) -> Tensor:
    """table[idx] for a 1-D table and ring indices [N, L]. A gather over the table broadcast to
    [N, R]: its backward is one scatter per row, where embedding's backward or indexing's walks
    N * L indices one by one (10x slower on CPU at N * L ~ 10^5)."""
    return torch.gather(table.expand(idx.shape[0], -1), 1, idx)


def pooled_rows(table: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """sum_l weights[n, l] * table[idx[n, l]] -> [N, D], through the weight each table row gets,
    without building the [N, L, D] lookup."""
    per_row = torch.zeros(idx.shape[0], table.shape[0], dtype=weights.dtype, device=weights.device)
    return per_row.scatter_add(1, idx, weights) @ table


RING_COUNT_BUCKETS = 24  # half-octaves of the ring's event count (rings up to 4096)


# --------------------------------------------------------------------------------------------
# The model


class CopyHead(nn.Module):
    """Scores the DISTINCT ids of the ring (each at its newest position) -> p_repeat, plus the
    mixture gate.

    Score of an id = w * log(1 + recency rank)          (w < 0; starts as the repeat baseline's
                   + tables of generic features          most-recent-first order, exactly)
                     (rank bucket, count, age since its last occurrence, last action,
                      carted/bought, same id / same group as the newest event, group count)
                   + u . log(1 + decayed counts)         (copy_decay: occurrences of the id, and
                   + u_g . log(1 + group decayed counts)  of its group, summed with decay kernels
                                                          in events and in seconds; see
                                                          decay_weights)
                   + table(newest -> id, id -> newest)   (copy_transitions: the user's own
                                                          transitions; see transition_weights)
                   + q(h) . k(features)                  (context-dependent reweighting)
    All tables, u, u_g and q start at zero, so an untrained head ranks ring ids in recency order. The
    features are generic, so the head transfers across logs instead of learning per-item trivia.
    Cost per prediction: one sort of the ring (O(L log L)) to group it by id, then O(G) for its G
    distinct ids: cheap for rings of hundreds of events.

    Gate: P(next id is in the ring), from h and ring statistics (size, share of repeated events,
    whether the newest event was itself a repeat)."""

    def __init__(self, cfg: ModelConfig, id_dim: int):
        super().__init__()
        d = cfg.attn
        self.max_count = cfg.max_count
        self.n_age_buckets = cfg.n_gap_buckets
        self.action_n = cfg.n_actions
        self.use_ids = cfg.copy_ids
        self.n_flags = 16
        self.n_small = cfg.n_actions * cfg.max_count * self.n_flags
        self.rank_w = nn.Parameter(torch.tensor(-3.0))
        self.rank_s = nn.Embedding(RANK_BUCKETS, 1)
        self.small_s = nn.Embedding(self.n_small, 1)
        self.age_s = nn.Embedding(cfg.n_gap_buckets, 1)
        self.group_s = nn.Embedding(cfg.max_count, 1)
        self.rank_k = nn.Embedding(RANK_BUCKETS, d)
        self.small_k = nn.Embedding(self.n_small, d)
        self.age_k = nn.Embedding(cfg.n_gap_buckets, d)
        self.id_proj = nn.Linear(id_dim, d, bias=False) if cfg.copy_ids else None
        self.query = nn.Linear(cfg.hidden, d)
        self.use_context = cfg.copy_context
        for t in (self.rank_s, self.small_s, self.age_s, self.group_s):
            nn.init.zeros_(t.weight)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        # decayed-count weights: built from zeros (no RNG draw), so other inits are unchanged
        self.decay_w = nn.Parameter(torch.zeros(N_DECAY)) if cfg.copy_decay else None
        self.group_decay_w = nn.Parameter(torch.zeros(N_DECAY)) if cfg.copy_decay else None
        self.transition_s = nn.Parameter(torch.zeros(TRANSITION_CLIP ** 2)) if cfg.copy_transitions else None
        n_stats = 4
        self.gate = nn.Sequential(nn.Linear(cfg.hidden + d + n_stats, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, h: Tensor, ids: Tensor, id_table: Tensor | None, actions: Tensor, age: Tensor,
                mask: Tensor, groups: Tensor | None = None, sparse: bool = False) -> tuple[Tensor, Tensor]:
        """h [N, H]; ring tensors [N, L] (`groups`: e.g. the categories of ring items); `id_table`:
        the id embeddings [V, E] (row 0 padding; `sparse`: give it a sparse gradient). Returns
        (log p_repeat over ring positions [N, L]: finite only at each id's newest position, so it
        is a distribution over the distinct ring ids; gate logit [N]).

        Scores are computed per distinct id (RingGroups' slots, most recent first), not per ring
        position. The keys k = rank_k[rank] + small_k[small] + age_k[age] + W id_table[id] enter
        only through q(h) . k and the attention-pooled key, so neither builds [N, G, d]: tables are
        scored or pooled per row (row_lookup, pooled_rows), which keeps training's backward cheap."""
        dw = decay_weights(age, mask, self.n_age_buckets) if self.decay_w is not None else None
        w = dw
        if self.transition_s is not None:  # summed per id together with the decay kernels
            tw = transition_weights(ids, mask)
            w = tw if dw is None else torch.cat([dw, tw], -1)
        rg = ring_groups(ids, actions, mask, w)
        valid, pos = rg.valid, rg.pos
        G = pos.shape[1]
        at = lambda x: torch.where(valid, x.gather(1, pos), torch.zeros_like(pos))  # noqa: E731  at the newest occurrence
        slot_ids, slot_actions, slot_age = at(ids), at(actions), at(age)
        count = rg.sums[..., 0].long()
        small_count = count.clamp(max=self.max_count - 1)
        newest = torch.zeros_like(valid)
        newest[:, 0] = valid[:, 0]  # slot 0 is the newest event's id
        if groups is not None:
            same_g = (at(groups) == groups[:, -1:]) & valid
            slot_group_sums = ring_groups(groups, torch.zeros_like(actions), mask, dw).sums_at(pos)
            g_count = torch.where(valid, slot_group_sums[..., 0].long().clamp(max=self.max_count - 1), 0)
        else:
            same_g = torch.zeros_like(valid)
            g_count = torch.zeros_like(count)
        flags = (rg.sums[..., 1] > 0).long() + 2 * (rg.sums[..., 2] > 0).long() + 4 * newest.long() + 8 * same_g.long()
        small = slot_actions + self.action_n * (small_count + self.max_count * flags)
        rank = torch.arange(G, device=ids.device)
        rb = rank_bucket(rank).expand_as(pos)
        key_tables = ((self.rank_k.weight, rb), (self.small_k.weight, small), (self.age_k.weight, slot_age))
        use_ids = self.id_proj is not None and id_table is not None
        e = (self.rank_w * torch.log1p(rank.float()) + row_lookup(self.rank_s.weight[:, 0], rb)
             + row_lookup(self.small_s.weight[:, 0], small) + row_lookup(self.age_s.weight[:, 0], slot_age)
             + row_lookup(self.group_s.weight[:, 0], g_count))
        id_emb = None
        if self.use_context:
            q = self.query(h)
            for table, idx in key_tables:
                e = e + row_lookup(q @ table.t(), idx)
            if use_ids:  # q . W E[id] = (W^T q) . E[id]
                id_emb = F.embedding(slot_ids, id_table, padding_idx=PAD, sparse=sparse)
                e = e + torch.einsum("ne,nle->nl", q @ self.id_proj.weight, id_emb)
        if self.transition_s is not None:
            t = rg.sums[..., -2:].long().clamp(max=TRANSITION_CLIP - 1)  # exact integer sums
            e = e + row_lookup(self.transition_s, t[..., 0] + TRANSITION_CLIP * t[..., 1])
        if self.decay_w is not None:
            e = e + torch.log1p(rg.sums[..., 3: 3 + N_DECAY]) @ self.decay_w
            if groups is not None:  # the same for the id's group: "the user is back on this kind"
                e = e + torch.log1p(slot_group_sums[..., 3:]) @ self.group_decay_w
        any_valid = valid[:, :1]
        log_attn = torch.log_softmax(torch.where(any_valid, e.masked_fill(~valid, NEG_INF), torch.zeros_like(e)), -1)
        log_attn = log_attn.masked_fill(~valid, NEG_INF)
        attn = log_attn.exp()
        pooled = sum(pooled_rows(table, idx, attn) for table, idx in key_tables)
        if use_ids:
            pooled_id = (torch.einsum("nl,nle->ne", attn, id_emb) if id_emb is not None else
                         F.embedding_bag(slot_ids, id_table, per_sample_weights=attn, mode="sum", padding_idx=PAD,
                                         sparse=sparse))
            pooled = pooled + self.id_proj(pooled_id)
        n_valid = mask.sum(-1).float()
        newest_again = (count[:, 0] > 1).float()  # the newest id occurred earlier in the ring too
        stats = torch.stack([torch.log1p(n_valid) / 5.0, valid.sum(-1).float() / n_valid.clamp(min=1.0),
                             newest_again, newest_again], -1)  # (two features of older checkpoints coincide)
        gate = self.gate(torch.cat([h, pooled, stats], -1)).squeeze(-1)
        gate = gate.masked_fill(~any_valid.squeeze(-1), -30.0)  # empty ring: nothing to repeat
        L = ids.shape[-1]  # back to ring positions: each slot at its id's newest occurrence
        to = torch.where(valid, pos, torch.full_like(pos, L))
        per_position = torch.full((len(ids), L + 1), NEG_INF, dtype=log_attn.dtype, device=ids.device)
        return per_position.scatter(1, to, log_attn)[:, :L], gate


class SeqModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # sparse: a training step's gradient holds only the rows it read (see train.GradientStep)
        self.item_emb = nn.Embedding(cfg.n_items, cfg.emb, padding_idx=PAD, sparse=True)
        self.cat_emb = nn.Embedding(cfg.n_categories, cfg.emb, padding_idx=PAD)
        self.action_emb = nn.Embedding(cfg.n_actions, cfg.action_emb)
        self.gap_emb = nn.Embedding(cfg.n_gap_buckets, cfg.gap_emb)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = BPTTGRU(2 * cfg.emb + cfg.action_emb + cfg.gap_emb, cfg.hidden, batch_first=True)
        # explore heads: h -> query in embedding space, scored against the SHARED input tables
        self.item_query = nn.Linear(cfg.hidden, cfg.emb)
        self.item_bias = nn.Parameter(torch.zeros(cfg.n_items))
        self.cat_query = nn.Linear(cfg.hidden, cfg.emb)
        self.cat_bias = nn.Parameter(torch.zeros(cfg.n_categories))
        self.item_copy = CopyHead(cfg, cfg.emb)
        self.cat_copy = CopyHead(cfg, cfg.emb)
        self.action_head = nn.Linear(cfg.hidden, cfg.n_actions)
        self.churn_head = nn.Linear(cfg.hidden, 1)
        # churn also reads the pace of the ring: how long its events took (the age of the oldest
        # one) and how many there are. Additive tables, zero at the start (built from zeros, so
        # they draw nothing from the RNG and leave every other initialisation as it was).
        self.churn_span = nn.Embedding(cfg.n_gap_buckets, 1, _weight=torch.zeros(cfg.n_gap_buckets, 1))
        self.churn_count = nn.Embedding(RING_COUNT_BUCKETS, 1, _weight=torch.zeros(RING_COUNT_BUCKETS, 1))
        # rows that may be predicted (set from the vocabularies at training time)
        valid_i = torch.ones(cfg.n_items, dtype=torch.bool)
        valid_c = torch.ones(cfg.n_categories, dtype=torch.bool)
        valid_i[:2] = False
        valid_c[:2] = False
        self.register_buffer("item_valid", valid_i)
        self.register_buffer("cat_valid", valid_c)
        # fusion calibration, fitted on held-out events after training (models.train.calibrate_fusion):
        # the context term of the explore logits is divided by a temperature (the popularity-like
        # bias stays) and the gate logits shifted, per [item, category]. A sampled-softmax explore
        # head is overconfident about ids it saw a few times; the copy path it is mixed with is
        # not, and the mixture ranks one against the other.
        self.register_buffer("explore_temp", torch.ones(2))
        self.register_buffer("gate_shift", torch.zeros(2))
        # the same for the next-action head: logits / T + per-action shift, fitted on the held-out
        # events by NLL (models.train.calibrate_actions). Trained on a few thousand purchases and
        # carts, the head is overconfident: uncalibrated, its log-loss was above a constant prior's.
        self.register_buffer("action_temp", torch.ones(1))
        self.register_buffer("action_shift", torch.zeros(cfg.n_actions))
        # train successor counts of each category (set by models.train.fit_calibrated), read with a
        # learned weight that starts at zero
        if cfg.cat_successors:
            self.register_buffer("cat_succ_ids", torch.zeros(cfg.n_categories, cfg.cat_successors, dtype=torch.long))
            self.register_buffer("cat_succ_counts", torch.zeros(cfg.n_categories, cfg.cat_successors))
            self.cat_succ_w = nn.Parameter(torch.zeros(1))
        else:
            self.cat_succ_w = None
        # served category rankings read the successor term times this factor, fitted on held-out
        # events by MRR@20 (models.train.calibrate_successor_rank), not by likelihood: on the
        # Taobao time slice a sharper successor term orders new categories better while held-out
        # NLL wants the learned weight. Categories are served as a ranking only.
        self.register_buffer("cat_succ_rank_scale", torch.ones(1))
        nn.init.normal_(self.item_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()
            self.cat_emb.weight[PAD].zero_()

    @property
    def device(self) -> torch.device:
        return self.item_bias.device

    def set_valid(self, n_items_used: int, n_categories_used: int) -> None:
        """Only indices 2..n_used-1 of each vocabulary hold real ids; the rest are never output."""
        self.item_valid.zero_()
        self.item_valid[2:n_items_used] = True
        self.cat_valid.zero_()
        self.cat_valid[2:n_categories_used] = True

    # ---- recurrence ------------------------------------------------------------------------

    def init_hidden(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.cfg.hidden, device=self.device)

    def _inputs(self, item: Tensor, category: Tensor, action: Tensor, gap: Tensor) -> Tensor:
        x = torch.cat([self.item_emb(item), self.cat_emb(category), self.action_emb(action),
                       self.gap_emb(gap)], -1)
        return self.drop(x)

    def step(self, h: Tensor, item: Tensor, category: Tensor, action: Tensor, gap: Tensor) -> Tensor:
        """One event per user: h [B, H], ids Long[B] -> new h [B, H]."""
        x = self._inputs(item, category, action, gap).unsqueeze(1)
        _, h_new = self.gru(x, h.unsqueeze(0))
        return h_new.squeeze(0)

    def encode(self, h0: Tensor | None, items: Tensor, cats: Tensor, actions: Tensor, gaps: Tensor,
               lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole sequences [B, T] -> (outputs [B, T, H], h_T [B, H]).

        Same nn.GRU as `step`, so it equals stepping event by event. With right padding pass
        `lengths`: h_T is then taken at each sequence's last real step."""
        if h0 is None:
            h0 = self.init_hidden(items.shape[0])
        out, h_last = self.gru(self._inputs(items, cats, actions, gaps), h0.unsqueeze(0))
        if lengths is None:
            return out, h_last.squeeze(0)
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        h_t = out.gather(1, idx).squeeze(1)
        h_t = torch.where((lengths > 0).unsqueeze(-1), h_t, h0)
        return out, h_t

    # ---- heads -------------------------------------------------------------------------------

    def copy_item(self, h: Tensor, recent: Recent) -> tuple[Tensor, Tensor]:
        table = self.item_emb.weight if self.cfg.copy_ids else None
        log_attn, gate = self.item_copy(h, recent.items, table, recent.actions, recent.age, recent.mask,
                                        groups=recent.categories, sparse=self.item_emb.sparse)
        return log_attn, gate + self.gate_shift[0]

    def copy_category(self, h: Tensor, recent: Recent) -> tuple[Tensor, Tensor]:
        table = self.cat_emb.weight if self.cfg.copy_ids else None
        log_attn, gate = self.cat_copy(h, recent.categories, table, recent.actions, recent.age, recent.mask)
        return log_attn, gate + self.gate_shift[1]

    def item_vectors(self, items: Tensor) -> Tensor:
        """The item embeddings of `items` (same gradient layout as the input lookups)."""
        return F.embedding(items, self.item_emb.weight, sparse=self.item_emb.sparse)

    def item_explore_logits(self, h: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Unnormalised explore scores q(h) . E[v] / T + b[v] (all items, or `candidates` [K])."""
        q = self.item_query(self.drop(h)) / self.explore_temp[0]
        if candidates is None:
            return F.linear(q, self.item_emb.weight, self.item_bias)
        return F.linear(q, self.item_vectors(candidates), self.item_bias[candidates])

    def cat_explore_logits(self, h: Tensor, newest: Tensor | None = None, own: Tensor | None = None,
                           successor_scale: Tensor | float = 1.0) -> Tensor:
        """q(h) . C[c] / T + b[c], plus `successor_scale` x the successor term of the `newest`
        category [N] (see `cat_successor_scores`)."""
        q = self.cat_query(self.drop(h)) / self.explore_temp[1]
        logits = F.linear(q, self.cat_emb.weight, self.cat_bias)
        if newest is None or self.cat_succ_w is None:
            return logits
        return logits + successor_scale * self.cat_successor_scores(newest, own)

    def set_category_successors(self, ids: Tensor, counts: Tensor) -> None:
        """[n_categories, M] successor ids (0: none) and their train counts."""
        if self.cat_succ_w is None:
            return
        self.cat_succ_ids.copy_(ids)
        self.cat_succ_counts.copy_(counts)

    def cat_successor_scores(self, newest: Tensor, own: Tensor | None = None) -> Tensor:
        """[N, n_categories]: w * log(1 + train count of newest -> c). `own` [N]: the row's own
        next category, when the row's transition is itself one of the counted ones (training
        on the log the counts came from): it is left out, or the weight would learn from a
        count that includes the answer."""
        out = torch.zeros(len(newest), self.cfg.n_categories, device=newest.device)
        if self.cat_succ_w is None:
            return out
        ids, counts = self.cat_succ_ids[newest], self.cat_succ_counts[newest]
        if own is not None:
            counts = (counts - (ids == own.unsqueeze(1)).float()).clamp(min=0.0)
        return out.scatter_add(1, ids, self.cat_succ_w * torch.log1p(counts))

    @staticmethod
    def mixture(log_attn: Tensor, gate: Tensor, ring_ids: Tensor, explore_logits: Tensor,
                valid: Tensor, tiered: bool = False, history_first: bool = False) -> Tensor:
        """log p(v) over the whole table [N, V] from the copy attention and explore scores.

        Explore covers every id (pointer-generator style): p(v) = g p_rep(v) + (1-g) p_exp(v).
        `tiered`: see ModelConfig.fusion; with `history_first` the tiers hold on every row,
        whatever the gate."""
        n, v = explore_logits.shape
        # each distinct ring id has exactly one finite entry (its newest position): amax picks it
        log_rep = torch.full((n, v), NEG_INF, device=explore_logits.device, dtype=explore_logits.dtype)
        log_rep = log_rep.scatter_reduce(1, ring_ids, log_attn.to(log_rep.dtype), "amax", include_self=True)
        in_ring = torch.isfinite(log_rep) & valid
        log_exp = torch.log_softmax(explore_logits.masked_fill(~valid, NEG_INF), -1)
        exp_part = F.logsigmoid(-gate).unsqueeze(-1) + log_exp
        # pointer-generator mixture: explore covers ring ids too, so a learned "after A comes B"
        # still wins when B happens to be in the ring
        safe_rep = torch.where(in_ring, log_rep, torch.full_like(log_rep, -1e4))  # no NaN gradients
        rep_part = torch.logaddexp(F.logsigmoid(gate).unsqueeze(-1) + safe_rep, exp_part)
        if tiered:
            # rank-preserving fusion: shift the explore tier just below the weakest ring id, then
            # renormalise. Revisits keep the repeat baseline's guarantee (never displaced by a
            # "new item" guess); explore only decides the order after them.
            lo = torch.where(in_ring, rep_part, torch.full_like(rep_part, math.inf)).amin(-1, keepdim=True)
            hi = torch.where(in_ring | ~valid, torch.full_like(exp_part, NEG_INF), exp_part).amax(-1, keepdim=True)
            shift = (hi - lo + 1.0).clamp(min=0.0)
            # only where the gate says a revisit is the likelier outcome: a log whose next items
            # are mostly new (or a learned "after A comes B" rule) keeps the plain mixture
            tier = (gate.unsqueeze(-1) > 0) | history_first
            shift = torch.where(torch.isfinite(shift) & tier, shift, torch.zeros_like(shift))
            exp_part = exp_part - shift
        out = torch.where(in_ring, rep_part, exp_part).masked_fill(~valid, NEG_INF)
        return torch.log_softmax(out, -1) if tiered else out

    def action_logits(self, h: Tensor) -> Tensor:
        """Next-action logits [N, 3], calibrated (the training loss reads `action_head` raw)."""
        return self.action_head(self.drop(h)) / self.action_temp + self.action_shift

    def churn_logit(self, h: Tensor, recent: Recent) -> Tensor:
        """P(no event within the horizon) logit [N] from h and the ring's pace."""
        n = recent.mask.sum(-1)
        oldest = (recent.mask.shape[-1] - n).clamp(max=recent.mask.shape[-1] - 1).unsqueeze(-1)
        span = recent.age.gather(-1, oldest).squeeze(-1)  # rings are right-aligned
        count = torch.floor(2.0 * torch.log2(n.float().clamp(min=1.0))).long()
        return (self.churn_head(self.drop(h)).squeeze(-1) + self.churn_span(span).squeeze(-1)
                + self.churn_count(count.clamp(max=RING_COUNT_BUCKETS - 1)).squeeze(-1))

    def item_logits(self, h: Tensor, recent: Recent) -> Tensor:
        """Log-probabilities over every item [N, n_items]: the copy/explore mixture."""
        la, gate = self.copy_item(h, recent)
        return self.mixture(la, gate, recent.items, self.item_explore_logits(h), self.item_valid,
                            self.cfg.fusion == "tiered")

    def category_logits(self, h: Tensor, recent: Recent, successor_scale: Tensor | float | None = None,
                        own: Tensor | None = None) -> Tensor:
        """Log-scores over every category [N, n_categories], a distribution ordered for ranking:
        the successor term is scaled by `cat_succ_rank_scale` (or `successor_scale`). `own`: as
        in `cat_successor_scores`."""
        if successor_scale is None:
            successor_scale = self.cat_succ_rank_scale
        la, gate = self.copy_category(h, recent)
        explore = self.cat_explore_logits(h, recent.categories[:, -1], own, successor_scale)
        return self.mixture(la, gate, recent.categories, explore, self.cat_valid, self.cfg.fusion == "tiered",
                            self.cfg.cat_history_first)

    def predict(self, h: Tensor, recent: Recent) -> Prediction:
        return Prediction(self.item_logits(h, recent), self.category_logits(h, recent), self.action_logits(h),
                          self.churn_logit(h, recent))


    @torch.no_grad()
    def predict_top_items(self, h: Tensor, recent: Recent, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Serving fast path: exactly `topk(predict(h, recent).item_logits, k)`, plus the action
        logits and churn logit, without building the [B, V] mixture.

        Every transform the mixture applies to an id outside the ring is monotone in its explore
        logit and shared by the whole row, so the top k are among the ring ids and the top k
        explore ids outside the ring; the normalisers come from one logsumexp. tests/unit/test_gru.py holds this
        equal to `predict` for both fusions. Returns (values [B, k], indices [B, k], action
        logits [B, 3], churn logit [B]).
        """
        log_attn, gate = self.copy_item(h, recent)
        ring, valid = recent.items, self.item_valid
        # invalid rows masked through the bias: one [V] op instead of a [B, V] copy
        t = self.explore_temp[0]
        q = self.item_query(self.drop(h)) / t
        explore = F.linear(q, self.item_emb.weight, self.item_bias.masked_fill(~valid, NEG_INF))
        lse = torch.logsumexp(explore, -1, keepdim=True)
        ls_pos, ls_neg = F.logsigmoid(gate).unsqueeze(-1), F.logsigmoid(-gate).unsqueeze(-1)
        ring_ok = torch.isfinite(log_attn) & valid[ring]  # one entry per distinct valid ring id
        ring_exp = explore.gather(1, ring) - lse
        rep = torch.logaddexp(ls_pos + log_attn.masked_fill(~ring_ok, -1e4), ls_neg + ring_exp)
        rep = rep.masked_fill(~ring_ok, NEG_INF)
        # ring ids are scored by `rep`: take them out of the explore tier in place (PAD, row 0,
        # is invalid anyway), so a top-k of k, not k + L, finds the explore candidates
        explore.scatter_(1, torch.where(ring_ok, ring, torch.zeros_like(ring)), NEG_INF)
        top_e, top_i = explore.topk(min(k, explore.shape[1]), -1)
        exp_part = ls_neg + top_e - lse
        if self.cfg.fusion == "tiered":  # the same shift and renormalisation as `mixture`
            lo = rep.masked_fill(~ring_ok, math.inf).amin(-1, keepdim=True)
            hi = exp_part.amax(-1, keepdim=True)
            shift = (hi - lo + 1.0).clamp(min=0.0)
            shift = torch.where(torch.isfinite(shift) & (gate.unsqueeze(-1) > 0), shift,
                                torch.zeros_like(shift))
            exp_part = exp_part - shift
            ring_mass = ring_exp.masked_fill(~ring_ok, NEG_INF).exp().sum(-1, keepdim=True)
            rest = ls_neg - shift + torch.log1p(-ring_mass.clamp(max=1.0 - 1e-7))
            norm = torch.logaddexp(torch.logsumexp(rep, -1, keepdim=True), rest)
            rep, exp_part = rep - norm, exp_part - norm
        values, at = torch.cat([rep, exp_part], -1).topk(k, -1)
        indices = torch.cat([ring, top_i], -1).gather(1, at)
        return values, indices, self.action_logits(h), self.churn_logit(h, recent)


# --------------------------------------------------------------------------------------------
# Vocabulary


class Vocab:
    """Bounded vocabulary raw id -> index: 0 = padding, 1 = unknown, 2.. = known ids.

    Built from training data keeping the most frequent ids up to `capacity` indices. We use a
    bounded vocabulary rather than hashing because the model must output exact item ids (a hashed
    row would be shared by colliding items and could not be mapped back to one id); memory stays
    bounded by the capacity, and ids outside it (new or rare items) all use the unknown row's
    fallback embedding on input and are never recommended."""

    def __init__(self, ids: np.ndarray | Iterable[int], capacity: int):
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if len(ids) + 2 > capacity:
            raise ValueError(f"{len(ids)} ids do not fit a vocabulary of capacity {capacity}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("vocabulary ids must be distinct")
        self.ids = ids  # ids[i] is the raw id of index i + 2
        self.capacity = int(capacity)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    @classmethod
    def build(cls, raw_ids: np.ndarray | Iterable[int], capacity: int) -> "Vocab":
        """Most frequent ids first (ties: smaller raw id first), at most capacity - 2 of them."""
        raw = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids), dtype=np.int64)
        uniq, counts = np.unique(raw, return_counts=True)
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order][: max(capacity - 2, 0)], capacity)

    def __len__(self) -> int:
        """Indices in use, including padding and unknown."""
        return len(self.ids) + 2

    def index(self, raw_ids: np.ndarray | Iterable[int]) -> np.ndarray:
        raw = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids), dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(raw.shape, UNKNOWN, dtype=np.int64)
        pos = np.searchsorted(self._sorted, raw).clip(max=len(self._sorted) - 1)
        hit = self._sorted[pos] == raw
        return np.where(hit, self._order[pos] + 2, UNKNOWN).astype(np.int64)

    def raw(self, indices: np.ndarray | Iterable[int]) -> np.ndarray:
        """Raw ids of indices; padding/unknown/unused indices give -1."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        ok = (idx >= 2) & (idx < len(self))
        return np.where(ok, self.ids[np.clip(idx - 2, 0, max(len(self.ids) - 1, 0))] if len(self.ids) else -1, -1)

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "ids": self.ids.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocab":
        return cls(np.asarray(d["ids"], dtype=np.int64), int(d["capacity"]))


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class Checkpoint:
    model: SeqModel
    item_vocab: Vocab
    category_vocab: Vocab
    version: int
    meta: dict[str, Any] = field(default_factory=dict)
    config: ModelConfig = field(default_factory=ModelConfig)


def save_checkpoint(path: str | Path, model: SeqModel, item_vocab: Vocab, category_vocab: Vocab, *,
                    version: int, meta: dict[str, Any]) -> None:
    """Plain dict of tensors, ints, strings and lists: loads with torch.load(weights_only=True)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": int(version),
        "meta": dict(meta),
        "config": asdict(model.cfg),
        "state_dict": state,
        "item_vocab": {"capacity": item_vocab.capacity, "ids": torch.from_numpy(item_vocab.ids.copy())},
        "category_vocab": {"capacity": category_vocab.capacity,
                           "ids": torch.from_numpy(category_vocab.ids.copy())},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # atomic: readers never see half a checkpoint


LEGACY_CONFIG = {"copy_decay": False, "copy_transitions": False, "cat_successors": 0, "cat_history_first": False}
CALIBRATION_KEYS = ("explore_temp", "gate_shift", "action_temp", "action_shift", "cat_succ_rank_scale")


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> Checkpoint:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(format={blob.get('format') if isinstance(blob, dict) else None!r})")
    # fields added after a checkpoint was written take the value that reproduces its model
    cfg = ModelConfig(**{**LEGACY_CONFIG, **blob["config"]})
    model = SeqModel(cfg)
    state = blob["state_dict"]
    # buffers added after a checkpoint was written keep their neutral defaults
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k in CALIBRATION_KEYS}, **state})
    model.eval()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    vocab = lambda d: Vocab(d["ids"].numpy().astype(np.int64), int(d["capacity"]))  # noqa: E731
    return Checkpoint(model, vocab(blob["item_vocab"]), vocab(blob["category_vocab"]),
                      int(blob["version"]), dict(blob["meta"]), cfg)


# --------------------------------------------------------------------------------------------
# Cold start


class Popularity:
    """Event-time decayed popularity of item indices, overall and per category (cold start).

    Each event adds weight 2^((ts - t0) / half_life); scores are relative, so comparing items at
    any time needs no decay pass over the table. When the exponent grows large all weights are
    rescaled (rare). Bounded: arrays of the vocabulary capacity."""

    def __init__(self, n_items: int, half_life_s: float = 6 * 3600.0):
        self.half_life_s = float(half_life_s)
        self.scores = np.zeros(n_items, dtype=np.float64)
        self.item_category = np.zeros(n_items, dtype=np.int64)  # last seen category index
        self.t0: float | None = None
        self.t_max: float = -math.inf

    def update(self, items: np.ndarray, categories: np.ndarray | None, ts_s: np.ndarray) -> None:
        items = np.asarray(items, dtype=np.int64)
        ts = np.asarray(ts_s, dtype=np.float64)
        if len(items) == 0:
            return
        if self.t0 is None:
            self.t0 = float(ts.min())
        self.t_max = max(self.t_max, float(ts.max()))
        expo = (ts - self.t0) / self.half_life_s
        if expo.max() > 500:  # rescale to keep weights finite
            shift = float(expo.max())
            self.scores *= 2.0 ** (-shift)
            self.t0 += shift * self.half_life_s
            expo = expo - shift
        np.add.at(self.scores, items, 2.0 ** expo)
        if categories is not None:
            self.item_category[items] = np.asarray(categories, dtype=np.int64)

    def top(self, k: int, category: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most trending item indices (never pad/unknown) with decayed counts, best first;
        counts are expressed at the newest event time seen."""
        s = self.scores.copy()
        s[:2] = 0.0
        if category is not None:
            s[self.item_category != category] = 0.0
        nz = np.flatnonzero(s > 0)
        order = nz[np.lexsort((nz, -s[nz]))][:k]
        scale = 2.0 ** (-(self.t_max - (self.t0 or 0.0)) / self.half_life_s) if self.t0 is not None else 1.0
        return order, s[order] * scale
