"""Mini-batches: groups of users of similar length as padded tensors with next-event targets,
their recent rings per step, and the shared negative sampler."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.config import GAP_FIRST
from models.ring import Recent, gap_bucket, recent_windows
from models.train.sequences import SeqData


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
