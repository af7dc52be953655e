"""Churn alerts in event time: who went quiet, exactly once per inactivity episode.

A user becomes *due* when their last churn risk is at least `risk_threshold` (default 0: every
user; the churn head is not yet better than recency, see BENCHMARKS.md) and no event has followed
their last one for `inactivity_ms` of event time. Every alert carries the risk, for ranking. Two paths find due users, and both
produce the same message, so a replay at any speed gives the same alerts:

- the sweep: a timer that compares each partition's event-time clock with the due times in an
  in-memory index (cost: the due users, not all users). Timers cannot write tables, so the sweep
  only sends a command to the co-partitioned `churn-commands` topic; the agent that owns the
  table applies it (checks the user is still due, marks them alerted, publishes the alert);
- the stream: an event that arrives after its user was already due (the sweep had not got there
  yet, as in a fast replay) raises the same alert first, then a `returned` message.

An alerted user who comes back gets a `returned` message, and the alert re-arms.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Iterator

from models.ids import Id
from models.schema import ACTION_INDEX
from stream.state import UserState

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class ChurnPolicy:
    inactivity_ms: int = 2 * DAY_MS  # alert after this much event time without an event
    risk_threshold: float = 0.0  # ...if the model's churn risk at the last event was this high
    allowed_lateness_ms: int = 60_000  # the clock trails the newest event by this much

    def due_ts(self, st: UserState) -> int | None:
        """Event time at which this user becomes due, or None if they never will as things stand."""
        if st.last_ts is None or st.churn_alerted or st.churn_risk < self.risk_threshold:
            return None
        return st.last_ts + self.inactivity_ms


def churn_reason(st: UserState) -> str:
    """The main reason, from the ring: what the operator reads first."""
    cart, purchase = ACTION_INDEX["cart"], ACTION_INDEX["purchase"]
    last_cart = max((i for i, e in enumerate(st.ring) if e.action == cart), default=-1)
    last_buy = max((i for i, e in enumerate(st.ring) if e.action == purchase), default=-1)
    if last_cart > last_buy:
        return "cart-abandoned"
    ts = [e.ts for e in st.ring]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    if len(gaps) >= 4 and sum(gaps[-2:]) / 2 > 2 * (sum(gaps[:-2]) / len(gaps[:-2]) + 1):
        return "activity-dropping"
    return "inactive"


def alert_message(st: UserState, policy: ChurnPolicy, model_version: int) -> dict:
    assert st.last_ts is not None
    return {"type": "churn", "user_id": st.user_id, "last_event_ts": st.last_ts,
            "alert_ts": st.last_ts + policy.inactivity_ms, "inactivity_ms": policy.inactivity_ms,
            "risk": round(st.churn_risk, 6), "model_version": model_version,
            "reason": churn_reason(st), "events": st.n_events}


def returned_message(st: UserState, returned_ts: int, model_version: int) -> dict:
    assert st.last_ts is not None
    return {"type": "returned", "user_id": st.user_id, "last_event_ts": st.last_ts,
            "returned_ts": returned_ts, "gap_ms": returned_ts - st.last_ts,
            "model_version": model_version}


def on_event(st: UserState, event_ts: int, policy: ChurnPolicy, model_version: int) -> list[dict]:
    """Messages that a new event of this user closes. Call before the event is applied."""
    if st.last_ts is None or event_ts < st.last_ts:
        return []  # first event, or a late one: no episode ended
    out: list[dict] = []
    due = policy.due_ts(st)
    if due is not None and event_ts >= due:  # the episode happened; the sweep had not seen it
        out.append(alert_message(st, policy, model_version))
        st.churn_alerted = True
    if st.churn_alerted:
        out.append(returned_message(st, event_ts, model_version))
    return out


@dataclass
class PartitionClock:
    """Event-time clock per partition: newest event time seen minus the allowed lateness."""

    allowed_lateness_ms: int
    newest: dict[int, int] = field(default_factory=dict)
    late_events: int = 0  # older than the clock when they arrived

    def observe(self, partition: int, ts: int) -> None:
        if ts < self.now(partition, default=ts):
            self.late_events += 1
        if ts > self.newest.get(partition, ts - 1):
            self.newest[partition] = ts

    def now(self, partition: int, default: int | None = None) -> int | None:
        newest = self.newest.get(partition)
        return default if newest is None else newest - self.allowed_lateness_ms


@dataclass
class DueIndex:
    """Users that will become due, per partition, ordered by due time (lazy deletion)."""

    # (due time, push number, user): the push number breaks ties, so user ids, which may be
    # ints and strings side by side (models/ids.py), are never compared with each other
    heaps: dict[int, list[tuple[int, int, Id]]] = field(default_factory=dict)
    due: dict[Id, int] = field(default_factory=dict)  # user -> current due time
    pushes: Iterator[int] = field(default_factory=itertools.count)

    def update(self, partition: int, user_id: Id, due_ts: int | None) -> None:
        if due_ts is None:
            self.due.pop(user_id, None)
            return
        if self.due.get(user_id) != due_ts:
            self.due[user_id] = due_ts
            heapq.heappush(self.heaps.setdefault(partition, []), (due_ts, next(self.pushes), user_id))

    def pop_due(self, partition: int, clock_ts: int) -> list[Id]:
        heap = self.heaps.get(partition, [])
        out = []
        while heap and heap[0][0] <= clock_ts:
            due_ts, _, user = heapq.heappop(heap)
            if self.due.get(user) == due_ts:  # else superseded by a newer event
                del self.due[user]
                out.append(user)
        return out

    def drop_partition(self, partition: int) -> None:
        for _, _, user in self.heaps.pop(partition, []):
            self.due.pop(user, None)

    def __len__(self) -> int:
        return len(self.due)
