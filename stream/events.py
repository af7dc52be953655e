"""The messages on the wire: the input codec (msgpack, validation, dead-letter reasons) and the
prediction message the worker publishes.

Input values are msgpack maps (see ../shared/DESIGN.md). `user_id`, `item_id` and `ts` (event
time, ms since epoch) are required; `category_id`, `session_id`, `price` (a finite number, not
negative) and `quantity` are optional; unknown fields are kept but ignored. `user_id`, `item_id`
and `category_id` are integers or strings of at most 128 UTF-8 bytes, normalised by
models/ids.py (`normalize_id`: a canonical decimal string is that integer, so "541312140" and
541312140 are one id). The key is the canonical user id as text: decimal ASCII for an integer,
the UTF-8 string otherwise. The topic names the action.

Predictions go out keyed by the same user key, one msgpack map per scored event
(`Prediction.to_message`, packed by `encode_predictions`); so do profiles, on the compacted
`profiles` topic, when a user's interests changed materially (`encode_profile`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack

from models.ids import BadId, Id, normalize_id
from models.schema import ACTIONS, LogEvent

MAX_VALUE_BYTES = 64 * 1024
# Event time must be after 2000-01-01 and before 2100-01-01: anything else is a unit mistake
# (seconds instead of ms) or garbage, and would poison the event-time clock.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
MAX_ID = 2**63 - 1
# A dead letter must fit in one Kafka message (1 MiB by default, the worker's producer limit)
# although the record it carries was up to that size itself (key and value): past these bounds
# it keeps their head. A value over MAX_VALUE_BYTES is dead-lettered whole up to 768 KiB.
DEAD_LETTER_KEY_BYTES = 64 * 1024
DEAD_LETTER_VALUE_BYTES = 768 * 1024


class Reason:
    """Dead-letter reasons: stable strings that operators alert on."""

    NOT_MSGPACK = "not-msgpack"
    NOT_A_MAP = "not-a-map"
    MISSING_FIELD = "missing-field"
    BAD_TYPE = "bad-type"
    BAD_TIMESTAMP = "bad-timestamp"
    OVERSIZED = "oversized"
    KEY_MISMATCH = "key-mismatch"
    UNKNOWN_TOPIC = "unknown-topic"

    ALL = (NOT_MSGPACK, NOT_A_MAP, MISSING_FIELD, BAD_TYPE, BAD_TIMESTAMP, OVERSIZED,
           KEY_MISMATCH, UNKNOWN_TOPIC)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated input event, with where it came from."""

    user_id: Id  # normalised (models/ids.py): an int, or a string that is not canonical decimal
    item_id: Id
    action: str
    ts: int  # event time, ms since epoch
    category_id: Id | None = None
    session_id: int | None = None
    price: float | None = None
    quantity: int | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that failed validation: what goes to dead-letter."""

    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


def user_key(user_id: Id) -> bytes:
    """The message/table key of a normalised user id: its text, UTF-8."""
    if type(user_id) is str:
        return user_id.encode("utf-8")  # type: ignore[union-attr]
    return str(int(user_id)).encode("ascii")


def _wire_id(ident: Id) -> Id:
    return ident if type(ident) is str else int(ident)


def encode_value(ev: LogEvent | Event) -> bytes:
    """The msgpack value for an input topic (the action is the topic, so it is not included).
    Ids go out in their own type: a string SKU stays a string."""
    body: dict[str, Any] = {"user_id": _wire_id(ev.user_id), "item_id": _wire_id(ev.item_id),
                            "ts": int(ev.ts_ms if isinstance(ev, LogEvent) else ev.ts)}
    if ev.category_id is not None:
        body["category_id"] = _wire_id(ev.category_id)
    if ev.session_id is not None:
        body["session_id"] = int(ev.session_id)
    for name in ("price", "quantity"):
        value = getattr(ev, name, None)
        if value is not None:
            body[name] = value
    return msgpack.packb(body, use_bin_type=True)


def input_topic(action: str, prefix: str = "") -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    return f"{prefix}{action}"


def action_of_topic(topic: str, prefix: str = "") -> str | None:
    if not topic.startswith(prefix):
        return None
    name = topic[len(prefix):]
    return name if name in ACTIONS else None


def _int_field(body: dict, name: str, required: bool) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _Bad(Reason.MISSING_FIELD, f"field {name!r} is required")
        return None
    # bool is an int subclass in Python; a boolean id is a producer bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(Reason.BAD_TYPE, f"field {name!r} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise _Bad(Reason.BAD_TYPE, f"field {name!r} out of range: {value}")
    return value


def _id_field(body: dict, name: str, required: bool) -> Id | None:
    value = body.get(name)
    if value is None:
        if not required:
            return None  # an optional id sent as nil means "none", like leaving it out
        if name not in body:
            raise _Bad(Reason.MISSING_FIELD, f"field {name!r} is required")
        # a required id sent as nil is a producer bug in the value, not a missing field
        raise _Bad(Reason.BAD_TYPE, f"field {name!r} must be an integer or a string, got None")
    try:
        return normalize_id(value, name)
    except BadId as bad:
        raise _Bad(Reason.BAD_TYPE, str(bad)) from None


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_event(key: bytes | None, value: bytes | None, *, topic: str, partition: int = -1,
                 offset: int = -1, prefix: str = "",
                 max_value_bytes: int = MAX_VALUE_BYTES) -> Event | Invalid:
    """Bytes from Kafka -> a validated Event, or an Invalid with the reason. Never raises."""
    def invalid(reason: str, detail: str) -> Invalid:
        return Invalid(reason, detail, key, value, topic, partition, offset)

    action = action_of_topic(topic, prefix)
    if action is None:
        return invalid(Reason.UNKNOWN_TOPIC, f"topic {topic!r} is not an input topic")
    if value is None:
        return invalid(Reason.NOT_MSGPACK, "empty value (tombstone)")
    if len(value) > max_value_bytes:
        return invalid(Reason.OVERSIZED, f"value is {len(value)} bytes, limit {max_value_bytes}")
    try:
        body = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        return invalid(Reason.NOT_MSGPACK, f"{type(exc).__name__}: {exc}"[:200])
    if not isinstance(body, dict):
        return invalid(Reason.NOT_A_MAP, f"value is a msgpack {type(body).__name__}, not a map")
    try:
        user_id = _id_field(body, "user_id", True)
        item_id = _id_field(body, "item_id", True)
        ts = body.get("ts")
        if ts is None:
            raise _Bad(Reason.MISSING_FIELD, "field 'ts' is required")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise _Bad(Reason.BAD_TYPE, f"field 'ts' must be an integer, got {type(ts).__name__}")
        category_id = _id_field(body, "category_id", False)
        session_id = _int_field(body, "session_id", False)
        quantity = _int_field(body, "quantity", False)
        price = body.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
            raise _Bad(Reason.BAD_TYPE, f"field 'price' must be a number, got {type(price).__name__}")
        # NaN, infinities and negative prices are garbage, like negative ids and quantities
        if price is not None and not 0 <= price < math.inf:
            raise _Bad(Reason.BAD_TYPE, f"field 'price' must be finite and not negative, got {price}")
    except _Bad as bad:
        return invalid(bad.reason, bad.detail)
    assert user_id is not None and item_id is not None and ts is not None
    if not MIN_TS_MS <= ts <= MAX_TS_MS:
        return invalid(Reason.BAD_TIMESTAMP,
                       f"ts {ts} is outside 2000..2100 in ms since epoch (seconds by mistake?)")
    if key is None or key != user_key(user_id):
        shown = key.decode("utf-8", "replace")[:40] if key is not None else None
        return invalid(Reason.KEY_MISMATCH, f"key {shown!r} does not match user_id {user_id!r}")
    return Event(user_id, item_id, action, ts, category_id, session_id,
                 float(price) if price is not None else None, quantity, topic, partition, offset)


def dead_letter_value(bad: Invalid) -> bytes:
    """The dead-letter message: the original bytes and the reason, so nothing is lost. A key or
    value past its bound (DEAD_LETTER_*_BYTES) is cut to its head, and `key_bytes` /
    `value_bytes` give the original size; the whole record stays in its input topic, at the
    topic/partition/offset given."""
    body: dict[str, Any] = {
        "reason": bad.reason,
        "detail": bad.detail,
        "topic": bad.topic,
        "partition": bad.partition,
        "offset": bad.offset,
        "key": bad.key,
        "value": bad.value,
    }
    for name, raw, limit in (("key", bad.key, DEAD_LETTER_KEY_BYTES),
                             ("value", bad.value, DEAD_LETTER_VALUE_BYTES)):
        if raw is not None and len(raw) > limit:
            body[name] = raw[:limit]
            body[f"{name}_bytes"] = len(raw)
    return msgpack.packb(body, use_bin_type=True)


def dead_letter_key(bad: Invalid) -> bytes | None:
    """The dead-letter record's key: the input's key, or none when it is past its bound."""
    return bad.key if bad.key is None or len(bad.key) <= DEAD_LETTER_KEY_BYTES else None


def dead_letter_headers(bad: Invalid) -> list[tuple[str, bytes]]:
    return [("seqstream-reason", bad.reason.encode()),
            ("seqstream-source", f"{bad.topic}/{bad.partition}/{bad.offset}".encode())]


# ============================================================================ predictions


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the worker publishes for one event (see DESIGN.md's prediction message)."""

    user_id: Id
    event: Event
    model_version: int
    next_action: dict[str, float]
    next_items: list[tuple[Id, float]]  # item ids in the catalogue's own type (Vocab.ids_of)
    churn_risk: float
    late: bool
    user_events: int  # the user's event count after this event: state continuity
    churn_messages: tuple[dict, ...] = ()  # alerts / returns this event closed (churn-alerts)
    anomaly_messages: tuple[dict, ...] = ()  # abnormal-behaviour alerts it raised (anomalies)
    # interest profiles (models/interests.py): up to 5 [category id, weight], heaviest first;
    # and the `profiles` message when they changed materially (else None)
    interests: list[list] = field(default_factory=list)
    profile: dict | None = None

    def to_message(self, produced_at_ms: int | None = None) -> dict:
        ev = self.event
        return {
            "user_id": self.user_id,
            "event": {"topic": ev.topic, "partition": ev.partition, "offset": ev.offset,
                      "ts": ev.ts, "item_id": ev.item_id, "action": ev.action},
            "model_version": self.model_version,
            "next_action": self.next_action,
            "next_items": self.next_items,  # (item, score) pairs pack as msgpack arrays
            "churn_risk": self.churn_risk,
            "late": self.late,
            "user_events": self.user_events,
            "interests": self.interests,  # [[category id, weight], ...]; [] without categories
            "produced_at": produced_at_ms if produced_at_ms is not None else int(time.time() * 1000),
        }


def encode_predictions(predictions: Sequence[Prediction], produced_at_ms: int) -> list[bytes]:
    """The prediction-topic values of one batch, in order (one msgpack packer for the batch)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return [pack(p.to_message(produced_at_ms)) for p in predictions]


def encode_profile(profile: dict) -> bytes:
    """The `profiles` topic value: {user_id, interests, event_ts, model_version} (Prediction.profile)."""
    return msgpack.packb(profile, use_bin_type=True)
