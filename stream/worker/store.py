"""User state in faust's table: the only code that touches faust's private table context.

faust only lets a table be read or written while a "current event" is set (it picks the
RocksDB partition from it), and a take() batch has none; we set it per user to one of that
user's events, which is the same partition by co-partitioning.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any

from faust.streams import _current_event  # the contextvar faust's tables read

from stream.events import Event, user_key
from stream.state import UserState, decode_state, encode_state
from stream.worker.metrics import WorkerMetrics

log = logging.getLogger("seqstream.worker")


def _set_current_event(event: Any) -> None:
    _current_event.set(weakref.ref(event) if event is not None else None)


class StateStore:
    """Encoded UserStates in the table (user key bytes -> state bytes)."""

    def __init__(self, table: Any, metrics: WorkerMetrics) -> None:
        self.table = table
        self.metrics = metrics

    def load_states(self, valid: list[tuple[Event, Any]]) -> tuple[dict[int, UserState], dict[int, Any]]:
        """The stored state of each user in a batch, and each user's last event in it."""
        states: dict[int, UserState] = {}
        last_event: dict[int, Any] = {}
        table = self.table
        for ev, fev in valid:
            last_event[ev.user_id] = fev
            if ev.user_id in states:
                continue
            _set_current_event(fev)
            raw = table.get(user_key(ev.user_id))
            if raw is not None:
                try:
                    states[ev.user_id] = decode_state(raw)
                except Exception:  # a state we cannot read must not stop the partition
                    log.exception("unreadable state for user %s; starting fresh", ev.user_id)
        return states, last_event

    def store_states(self, states: dict[int, UserState], last_event: dict[int, Any]) -> None:
        table = self.table
        sizes = []
        for user_id, st in states.items():
            _set_current_event(last_event[user_id])
            data = encode_state(st)
            table[user_key(user_id)] = data
            sizes.append(len(data))
        _set_current_event(None)
        m = self.metrics
        m.state_bytes += sum(sizes)
        m.state_writes += len(sizes)
        m.state_size.observe_many(sizes)

    # Inside an agent's `stream.events()` loop faust has set the current event itself.

    def get(self, key: bytes) -> UserState | None:
        raw = self.table.get(key)
        return None if raw is None else decode_state(raw)

    def put(self, key: bytes, st: UserState) -> None:
        self.table[key] = encode_state(st)
