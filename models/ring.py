"""Ring features: the user's recent events as tensors (windows, `Recent`), grouped by id
(`RingGroups`), and the per-event weights and buckets the copy heads read (gap, rank, decay,
transitions)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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
