"""UserState: the last L events of one user plus the GRU state, and its bytes on disk.

The hidden state summarises the user's whole history, not only the ring, so that one event
costs one GRU step. To recompute it exactly after a late event, we also keep the *anchor*:
the hidden state just before the oldest event still in the ring. When the ring evicts its
oldest event, the anchor absorbs it (one extra GRU step), so at all times

    hidden == fold(step, anchor, ring)

and a late event that lands inside the ring is handled by inserting it in event-time order
and re-folding from the anchor. An event older than the anchor cannot be placed exactly; it
is put first in the ring and counted as `n_too_late`.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgpack
import numpy as np

from models.anomaly import AnomalyStats
from models.interests import InterestProfile
from models.schema import ACTIONS

STATE_FORMAT = 1


@dataclass(slots=True)
class RingEntry:
    item: int
    category: int  # -1 when the source has no category
    action: int  # index into ACTIONS
    ts: int  # event time, ms
    offset: int = -1  # source offset: with the action (= topic) it identifies the message,
    #                   so a redelivered event (at-least-once) is recognised and not applied twice


@dataclass
class UserState:
    user_id: int
    ring: list[RingEntry] = field(default_factory=list)  # oldest -> newest, by event time
    hidden: np.ndarray | None = None  # float32 [H]; None before the first event
    anchor: np.ndarray | None = None  # hidden before ring[0]; None means zeros
    anchor_ts: int | None = None  # event time of the last event folded into the anchor
    model_version: int = -1  # the version that computed hidden and anchor
    n_events: int = 0
    n_by_action: list[int] = field(default_factory=lambda: [0] * len(ACTIONS))
    n_late: int = 0  # arrived after a later event of the same user
    n_too_late: int = 0  # older than the anchor: placed first, not exact
    first_ts: int | None = None
    last_ts: int | None = None  # the user's own event-time high-water mark
    churn_alerted: bool = False  # one alert per inactivity episode; re-armed by a new event
    churn_risk: float = 0.0  # the model's churn risk after the last event
    anomaly: AnomalyStats | None = None  # abnormal-behaviour running stats; None when off
    # interest profiles (issue 19): decayed category counts, and the top interests last sent
    # to the `profiles` topic (None: never), to decide when a change is worth publishing
    interests: InterestProfile = field(default_factory=InterestProfile)
    profile_sent: list | None = None

    @property
    def last_entry(self) -> RingEntry | None:
        return self.ring[-1] if self.ring else None


@dataclass(frozen=True, slots=True)
class Insertion:
    """What adding one event did to the ring: the scorer turns this into GRU work."""

    late: bool  # not appended at the end: hidden must be re-folded from the anchor
    evicted: RingEntry | None  # fell out of the ring: must be folded into the anchor
    prev_ts: int | None  # event time of the event before the evicted one (its gap)


def is_redelivery(state: UserState, action: int, offset: int) -> bool:
    """The same message was applied already (it is still in the ring)."""
    return offset >= 0 and any(e.offset == offset and e.action == action for e in state.ring)


def insert_event(state: UserState, entry: RingEntry, ring_size: int) -> Insertion:
    """Put one event into the ring in event-time order (ties keep arrival order)."""
    state.n_events += 1
    state.n_by_action[entry.action] += 1
    state.first_ts = entry.ts if state.first_ts is None else min(state.first_ts, entry.ts)
    if entry.ts >= (state.last_ts or entry.ts):
        state.churn_alerted = False  # a return re-arms the alert; a late event does not
    late = state.last_ts is not None and entry.ts < state.last_ts
    if late:
        state.n_late += 1
        if state.anchor_ts is not None and entry.ts < state.anchor_ts:
            state.n_too_late += 1
        keys = [e.ts for e in state.ring]
        state.ring.insert(bisect.bisect_right(keys, entry.ts), entry)
    else:
        state.ring.append(entry)
    state.last_ts = entry.ts if state.last_ts is None else max(state.last_ts, entry.ts)
    evicted = None
    prev_ts = state.anchor_ts
    if len(state.ring) > ring_size:
        evicted = state.ring.pop(0)
    return Insertion(late=late, evicted=evicted, prev_ts=prev_ts)


def _pack_vector(v: np.ndarray | None) -> bytes | None:
    return None if v is None else np.asarray(v, dtype=np.float32).tobytes()


def _unpack_vector(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.frombuffer(b, dtype=np.float32).copy()


def encode_state(state: UserState) -> bytes:
    """msgpack bytes; times delta-encoded so a 50-event ring stays around 1 KB."""
    ts = [e.ts for e in state.ring]
    ts_deltas = [ts[0]] + [b - a for a, b in zip(ts, ts[1:])] if ts else []
    d = {
        "f": STATE_FORMAT,
        "u": state.user_id,
        "i": [e.item for e in state.ring],
        "c": [e.category for e in state.ring],
        "a": bytes(e.action for e in state.ring),
        "t": ts_deltas,
        "o": [e.offset for e in state.ring],
        "h": _pack_vector(state.hidden),
        "ah": _pack_vector(state.anchor),
        "at": state.anchor_ts,
        "mv": state.model_version,
        "n": state.n_events,
        "na": state.n_by_action,
        "nl": state.n_late,
        "ntl": state.n_too_late,
        "ft": state.first_ts,
        "lt": state.last_ts,
        "ca": state.churn_alerted,
        "cr": round(float(state.churn_risk), 6),
    }
    # optional keys: format 1 without them still decodes
    if state.anomaly is not None:
        d["an"] = state.anomaly.to_dict()
    d.update(_pack_interests(state))
    return msgpack.packb(d, use_bin_type=True)


def decode_state(data: bytes) -> UserState:
    d = msgpack.unpackb(data, raw=False)
    if d.get("f") != STATE_FORMAT:
        raise ValueError(f"unknown user-state format {d.get('f')!r}")
    ts: list[int] = []
    for delta in d["t"]:
        ts.append(delta if not ts else ts[-1] + delta)
    offsets = d.get("o") or [-1] * len(ts)
    ring = [RingEntry(i, c, a, t, o) for i, c, a, t, o in zip(d["i"], d["c"], d["a"], ts, offsets)]
    return UserState(
        user_id=d["u"], ring=ring, hidden=_unpack_vector(d["h"]), anchor=_unpack_vector(d["ah"]),
        anchor_ts=d["at"], model_version=d["mv"], n_events=d["n"], n_by_action=list(d["na"]),
        n_late=d["nl"], n_too_late=d["ntl"], first_ts=d["ft"], last_ts=d["lt"],
        churn_alerted=d["ca"], churn_risk=d.get("cr", 0.0),
        anomaly=AnomalyStats.from_dict(d["an"]) if d.get("an") is not None else None,
        **_unpack_interests(d.get("ip")),
    )


def _pack_interests(state: UserState) -> dict:
    """The optional "ip" key (interest profiles): left out while the user has none, so state
    bytes without it (older workers, logs without categories) decode to an empty profile."""
    if not state.interests and state.profile_sent is None:
        return {}
    return {"ip": [state.interests.to_wire(), state.profile_sent]}


def _unpack_interests(packed: list | None) -> dict:
    if packed is None:
        return {}
    profile, sent = packed
    return {"interests": InterestProfile.from_wire(profile), "profile_sent": sent}
