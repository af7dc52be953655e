"""The protocol's data: a log's events as sorted columns (`EventTable`), and the split, candidate
set V and scored events of one task (`EvalData`, `build_eval_data`)."""
from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.ids import IdLabels
from models.schema import ACTION_INDEX, ACTIONS, LogEvent


Target = Literal["item", "category"]
Mode = Literal["frozen", "online"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class EventTable:
    """All events of a log as columns, stable-sorted by (user, ts, row). Nothing is filtered.

    `category` is -1 where the source has no category (`has_category` tells whether any has).
    Ids are int64 keys (models/ids.py): string ids are negative keys named by `labels`."""

    user: IntArray
    item: IntArray
    category: IntArray
    action: npt.NDArray[np.int8]
    ts: FloatArray  # seconds, UTC
    row: IntArray
    has_category: bool
    labels: IdLabels = field(default_factory=IdLabels)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_events(cls, events: Iterable[LogEvent], progress: bool = False) -> EventTable:
        # array('q') keeps ~8 bytes per field while streaming: no list of LogEvent objects.
        user, item, cat, act, ts_ms, row = (array("q") for _ in range(6))
        any_cat = False
        labels = IdLabels()
        key = labels.key
        it: Iterable[LogEvent] = events
        if progress:
            it = tqdm(events, desc="reading", unit=" ev", file=sys.stderr, disable=None, leave=False)
        for ev in it:
            # integers are their own keys: checked inline, the common case costs no call
            u, i, c = ev.user_id, ev.item_id, ev.category_id
            user.append(u if type(u) is int else key(u))
            item.append(i if type(i) is int else key(i))
            if c is None:
                cat.append(-1)
            else:
                cat.append(c if type(c) is int else key(c))
                any_cat = True
            act.append(ACTION_INDEX[ev.action])
            ts_ms.append(ev.ts_ms)
            row.append(ev.row)
        u = np.frombuffer(user, dtype=np.int64)
        t = np.frombuffer(ts_ms, dtype=np.int64) / 1000.0
        r = np.frombuffer(row, dtype=np.int64)
        order = np.lexsort((r, t, u))  # stable sort by (user, ts, row)
        return cls(
            user=u[order],
            item=np.frombuffer(item, dtype=np.int64)[order],
            category=np.frombuffer(cat, dtype=np.int64)[order],
            action=np.frombuffer(act, dtype=np.int64)[order].astype(np.int8),
            ts=t[order],
            row=r[order],
            has_category=any_cat,
            labels=labels,
        )


@dataclass
class EvalData:
    """The filtered sequences of one task (item or category), encoded for models.

    Only the *remaining* events are here (train events, and test events whose target is in V),
    in (user, ts, row) order; so `y` is never -1. Events of user u are
    `seq_start[u]:seq_start[u+1]`; `start[i]` is the first event of event i's user, so the
    context a model may use to score event i is `start[i]:i`. `V[y[i]]` is the raw target id.
    """

    target: Target
    V: IntArray  # raw target ids, sorted; index = candidate id
    user_ids: IntArray  # raw user id per user index
    user: IntArray  # per event: user index
    y: IntArray  # per event: target index in V
    item: IntArray  # per event: raw item id
    category: IntArray  # per event: raw category id (-1 if absent)
    action: npt.NDArray[np.int8]  # per event: index into ACTIONS
    ts: FloatArray  # per event: seconds
    row: IntArray  # per event: source data row
    is_train: BoolArray
    is_scored: BoolArray
    seq_start: IntArray  # [n_users + 1] CSR offsets
    start: IntArray  # per event: seq_start[user]
    q: float  # split time: train ts < q <= test ts
    t_max: float  # last event time of the whole (unfiltered) log
    user_next_test_ts: FloatArray  # per user: first (unfiltered) event with ts >= q, inf if none
    n_removed: int  # test events dropped because their target is not in V
    train_action_freq: FloatArray = field(default_factory=lambda: np.full(len(ACTIONS), 1 / len(ACTIONS)))
    labels: IdLabels = field(default_factory=IdLabels)  # text of the string ids' keys

    @property
    def n_V(self) -> int:
        return len(self.V)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return len(self.y)

    @property
    def scored_idx(self) -> IntArray:
        return np.flatnonzero(self.is_scored)

    @property
    def train_idx(self) -> IntArray:
        return np.flatnonzero(self.is_train)

    def test_idx_in_time_order(self) -> IntArray:
        """Remaining test events in global time order (ts, row): the order of a live stream."""
        test = np.flatnonzero(~self.is_train)
        return test[np.lexsort((self.row[test], self.ts[test]))]

    def context(self, i: int) -> slice:
        """The events a model may use when scoring event i: its user's events before i."""
        return slice(int(self.start[i]), int(i))

    def last_train_idx(self) -> IntArray:
        """Per user with at least one train event: the index of that user's last train event."""
        tr = np.flatnonzero(self.is_train)
        if len(tr) == 0:
            return tr
        last = np.r_[self.user[tr][1:] != self.user[tr][:-1], True]
        return tr[last]


def build_eval_data(table: EventTable, target: Target) -> EvalData:
    """Split, build V, drop test events outside V, mark scored events (EVALUATION.md §2)."""
    if target not in ("item", "category"):
        raise ValueError(f"target must be 'item' or 'category', got {target!r}")
    if len(table) == 0:
        raise ValueError("no events to evaluate")
    if target == "category" and not table.has_category:
        raise ValueError("the category task needs category ids, and this log has none")
    ts = table.ts
    q = float(np.quantile(ts, 0.8))
    train = ts < q
    raw = table.item if target == "item" else table.category
    usable = np.ones(len(table), dtype=bool) if target == "item" else raw != -1
    V = np.unique(raw[train & usable])
    if len(V) == 0:
        raise ValueError("no train events: V is empty")
    pos = np.searchsorted(V, raw)
    in_V = V[np.minimum(pos, len(V) - 1)] == raw
    # Train events always stay (except, for the category task, events without a category).
    keep = np.where(train, usable, in_V & usable)
    n_removed = int((~train & ~keep).sum())

    u_raw = table.user[keep]
    first = np.r_[True, u_raw[1:] != u_raw[:-1]]  # rows are sorted by user
    seq_start = np.r_[np.flatnonzero(first), len(u_raw)].astype(np.int64)
    user = np.cumsum(first) - 1
    is_train = train[keep]
    # Scored: a remaining test event with an earlier remaining event of the same user.
    is_scored = ~is_train & ~first

    user_ids = u_raw[first]
    # Per user: the first test event of the *unfiltered* log (churn labels use every event).
    next_test = np.full(len(user_ids), np.inf)
    tu, ti = np.unique(table.user[~train], return_index=True)  # first index = earliest (sorted)
    loc = np.searchsorted(user_ids, tu)
    ok = (loc < len(user_ids)) & (user_ids[np.minimum(loc, len(user_ids) - 1)] == tu)
    next_test[loc[ok]] = ts[~train][ti[ok]]

    action = table.action[keep]
    freq = np.bincount(action[is_train], minlength=len(ACTIONS)).astype(np.float64)
    return EvalData(
        target=target,
        V=V,
        user_ids=user_ids,
        user=user.astype(np.int64),
        y=pos[keep].astype(np.int64),
        item=table.item[keep],
        category=table.category[keep],
        action=action,
        ts=ts[keep],
        row=table.row[keep],
        is_train=is_train,
        is_scored=is_scored,
        seq_start=seq_start,
        start=seq_start[user],
        q=q,
        t_max=float(ts.max()),
        user_next_test_ts=next_test,
        n_removed=n_removed,
        train_action_freq=freq / max(freq.sum(), 1.0),
        labels=table.labels,
    )
