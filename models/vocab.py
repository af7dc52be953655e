"""`Vocab`: the bounded map from raw item/category ids to model indices (0 = padding, 1 = unknown)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from models.config import UNKNOWN


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
