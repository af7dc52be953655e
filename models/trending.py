"""Trending items: popularity decayed by event time, the state a cold-start answer needs.

Each observed event of item v at time t adds 2^(-(now - t) / half_life) to v's score at `now`:
an event one half-life old counts half. The state is one float per item, stored relative to an
anchor time so that observing is O(1) per event and nothing is rescaled on every event (the
anchor moves, rescaling everything once, only after ~500 half-lives). Pure numpy: the
evaluation's "trending" baseline uses it, and the stream workers can keep one to answer users
with too little history.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


DEFAULT_HALF_LIFE_S = 24 * 3600.0
# 2^512 ~ 1e154: far from float64's 1e308 limit even after summing many events.
_MAX_EXPONENT = 512.0

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class TrendingCounts:
    """Decayed event counts of items 0..n_items-1 (vocabulary indices).

    `scores(now)` is meant for `now` at or after the events observed: an event later than `now`
    counts more than 1 (the state does not know what has not happened yet, so keeping the future
    out is the caller's job)."""

    n_items: int
    half_life_s: float = DEFAULT_HALF_LIFE_S
    _mass: FloatArray = field(init=False, repr=False)  # sum of 2^((ts - anchor) / half_life)
    _anchor: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {self.half_life_s}")
        self._mass = np.zeros(self.n_items, dtype=np.float64)

    def _exponents(self, ts: FloatArray) -> FloatArray:
        if self._anchor is None:
            self._anchor = float(ts.min())
        e = (ts - self._anchor) / self.half_life_s
        top = float(e.max())
        if top > _MAX_EXPONENT:
            # Move the anchor to the newest event; old mass shrinks (and may underflow to 0,
            # which is what > 500 half-lives of age is worth).
            self._mass *= np.exp2(-top)
            self._anchor += top * self.half_life_s
            e = e - top
        return e

    def observe(self, item: int, ts: float) -> None:
        """One event of `item` at `ts` (seconds). Any order of events gives the same state."""
        self.observe_many(np.array([item], dtype=np.int64), np.array([ts], dtype=np.float64))

    def observe_many(self, items: npt.ArrayLike, ts: npt.ArrayLike) -> None:
        items = np.asarray(items, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.float64)
        if len(items) == 0:
            return
        np.add.at(self._mass, items, np.exp2(self._exponents(ts)))

    def scores(self, now: float) -> FloatArray:
        """Decayed counts at time `now` (seconds), one per item."""
        if self._anchor is None:
            return np.zeros(self.n_items, dtype=np.float64)
        return self._mass * np.exp2((self._anchor - now) / self.half_life_s)

    def top(self, k: int, now: float) -> IntArray:
        """The (at most) k items with the highest decayed count at `now`, best first; ties go
        to the lower index; items never observed (count 0) are not returned."""
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        s = self.scores(now)
        live = np.flatnonzero(s > 0)
        if len(live) > k:
            kth = np.partition(s[live], len(live) - k)[len(live) - k]
            live = live[s[live] >= kth]  # every tie at the cut, so the lower index can win
        return live[np.lexsort((live, -s[live]))][:k].astype(np.int64)
