"""`Vocab`: the bounded map from raw item/category ids to model indices (0 = padding, 1 = unknown)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from models.config import UNKNOWN
from models.ids import Id, IdLabels, id_key, normalize_id


class Vocab:
    """Bounded vocabulary raw id -> index: 0 = padding, 1 = unknown, 2.. = known ids.

    Built from training data keeping the most frequent ids up to `capacity` indices. We use a
    bounded vocabulary rather than hashing because the model must output exact item ids (a hashed
    row would be shared by colliding items and could not be mapped back to one id); memory stays
    bounded by the capacity, and ids outside it (new or rare items) all use the unknown row's
    fallback embedding on input and are never recommended.

    Ids are int64 keys (models/ids.py): integers are themselves, string ids (SKUs, UUIDs) are
    negative keys whose text `labels` keeps, so that `ids_of` answers each id in the type the
    catalogue uses."""

    def __init__(self, ids: np.ndarray | Iterable[int], capacity: int, labels: IdLabels | None = None):
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        strings = ids[ids < -1].tolist()
        known = labels.text if labels is not None else {}
        missing = [k for k in strings if k not in known]
        if missing:
            raise ValueError(f"{len(missing)} string id key(s) have no label (e.g. {missing[0]})")
        self.labels = IdLabels((k, known[k]) for k in strings)  # only this vocabulary's strings
        if len(ids) + 2 > capacity:
            raise ValueError(f"{len(ids)} ids do not fit a vocabulary of capacity {capacity}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("vocabulary ids must be distinct")
        self.ids = ids  # ids[i] is the raw id of index i + 2
        self.capacity = int(capacity)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    @classmethod
    def build(cls, raw_ids: np.ndarray | Iterable[int], capacity: int,
              labels: IdLabels | None = None) -> "Vocab":
        """Most frequent ids first (ties: smaller key first), at most capacity - 2 of them.
        `raw_ids` are keys; `labels` names the string ones (needed when there are any)."""
        raw = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids), dtype=np.int64)
        uniq, counts = np.unique(raw, return_counts=True)
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order][: max(capacity - 2, 0)], capacity, labels)

    @classmethod
    def of_ids(cls, ids: Iterable[Id], capacity: int) -> "Vocab":
        """A vocabulary of ids (ints and strings, normalised here), in the order given."""
        labels = IdLabels()
        return cls([labels.key(normalize_id(i, "id")) for i in ids], capacity, labels)


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

    def index_ids(self, ids: Iterable[Any]) -> np.ndarray:
        """Indices of ids as sent (ints and strings, normalised here: "42" is 42)."""
        return self.index(np.fromiter((id_key(normalize_id(i, "id")) for i in ids), dtype=np.int64))

    def ids_of(self, indices: np.ndarray) -> list:
        """The ids of indices as nested lists (the shape of `indices`): ints stay ints, string
        ids come back as their strings; padding/unknown give -1."""
        keys = self.raw(indices).tolist()
        if not len(self.labels):
            return keys
        ident = self.labels.ident
        if keys and isinstance(keys[0], list):
            return [[ident(k) for k in row] for row in keys]
        return [ident(k) for k in keys] if isinstance(keys, list) else ident(keys)

    def raw(self, indices: np.ndarray | Iterable[int]) -> np.ndarray:
        """Raw ids of indices; padding/unknown/unused indices give -1."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        ok = (idx >= 2) & (idx < len(self))
        return np.where(ok, self.ids[np.clip(idx - 2, 0, max(len(self.ids) - 1, 0))] if len(self.ids) else -1, -1)

    def label_list(self) -> list[str]:
        """The text of each string id, in `ids` order (what checkpoints store)."""
        return [self.labels.text[k] for k in self.ids[self.ids < -1].tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "ids": self.ids.tolist(), "labels": self.label_list()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocab":
        return cls.from_parts(np.asarray(d["ids"], dtype=np.int64), int(d["capacity"]), d.get("labels"))

    @classmethod
    def from_parts(cls, ids: np.ndarray, capacity: int, labels: list[str] | None) -> "Vocab":
        """ids + the text of its string ids in order. Vocabularies saved before string ids had
        no `labels` (and only non-negative ids): None loads them unchanged."""
        keys = ids[ids < -1].tolist()
        text = list(labels or [])
        if len(text) != len(keys):
            raise ValueError(f"vocabulary has {len(keys)} string ids but {len(text)} labels")
        table = IdLabels(zip(keys, text))
        bad = [t for k, t in zip(keys, text) if id_key(t) != k]
        if bad:
            raise ValueError(f"vocabulary label {bad[0]!r} does not match its key")
        return cls(ids, capacity, table)
