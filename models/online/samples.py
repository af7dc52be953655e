"""Training samples of online learning: their wire format (`encode_sample`/`decode_sample`),
the bounded replay buffer, and `SampleBatch`, their tensors.

A **sample** is what the worker saw when one in-order event was applied: the user's ring after
insertion, oldest -> newest. `ring[:-1]` is the context, `ring[-1]` the target (item, category,
action and, through its time, the gap). Bounded: at most the ring's L events (see `encode_sample`).
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import msgpack
import numpy as np
import torch
from torch import Tensor

from models.config import GAP_FIRST
from models.ring import Recent, gap_bucket
from models.schema import ACTIONS
from models.vocab import Vocab


SAMPLE_FORMAT = 1
MAX_SAMPLE_EVENTS = 1000  # the ring is at most 1000 long (Settings.validate)


@dataclass(frozen=True, slots=True)
class Sample:
    """Context + target of one user, oldest -> newest; the last entry is the target."""

    user_id: int | str
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


def encode_sample(user_id: int | str, items: Sequence[int], categories: Sequence[int],
                  actions: Sequence[int], ts_ms: Sequence[int], model_version: int = -1) -> bytes:
    """Compact msgpack: times delta-encoded, actions as bytes (about 4-6 bytes per event)."""
    ts = list(ts_ms)
    deltas = [ts[0]] + [b - a for a, b in zip(ts, ts[1:])] if ts else []
    user = user_id if type(user_id) is str else int(user_id)  # string user ids stay strings
    return msgpack.packb({"f": SAMPLE_FORMAT, "u": user, "i": list(items),
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
        user = d["u"] if type(d["u"]) is str else int(d["u"])  # string user ids stay strings
        return Sample(user, tuple(items), tuple(cats), tuple(acts), tuple(ts),
                      int(d.get("v", -1)))
    except (KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"bad sample: {type(exc).__name__}") from None


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
