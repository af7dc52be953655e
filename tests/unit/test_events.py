"""The wire contract: every kind of bad input gets its reason; good input round-trips."""
import msgpack
import pytest

from models.schema import LogEvent
from stream.events import (MAX_VALUE_BYTES, Event, Invalid, Reason, decode_event, dead_letter_value,
                           encode_value, input_topic, user_key)

pytestmark = pytest.mark.unit

TS = 1_700_000_000_000


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_valid_event_round_trips_with_optional_and_unknown_fields():
    value = pack({"user_id": 7, "item_id": 42, "ts": TS, "category_id": 3, "price": 9.5,
                  "quantity": 2, "session_id": 11, "colour": "red"})
    ev = decode_event(b"7", value, topic="p.cart", partition=2, offset=5, prefix="p.")
    assert isinstance(ev, Event)
    assert (ev.user_id, ev.item_id, ev.action, ev.ts, ev.category_id) == (7, 42, "cart", TS, 3)
    assert (ev.price, ev.quantity, ev.session_id, ev.partition, ev.offset) == (9.5, 2, 11, 2, 5)


def test_encode_value_matches_decoder():
    log = LogEvent(user_id=5, item_id=9, action="purchase", ts_ms=TS, category_id=1)
    ev = decode_event(user_key(5), encode_value(log), topic=input_topic("purchase"))
    assert isinstance(ev, Event) and ev.action == "purchase" and ev.category_id == 1


@pytest.mark.parametrize("key,value,reason", [
    (b"1", b"\xc1\xc1 not msgpack", Reason.NOT_MSGPACK),
    (b"1", None, Reason.NOT_MSGPACK),
    (b"1", pack([1, 2, 3]), Reason.NOT_A_MAP),
    (b"1", pack({"user_id": 1, "ts": TS}), Reason.MISSING_FIELD),
    (b"1", pack({"user_id": 1, "item_id": "", "ts": TS}), Reason.BAD_TYPE),
    (b"1", pack({"user_id": 1, "item_id": True, "ts": TS}), Reason.BAD_TYPE),
    (b"1", pack({"user_id": 1, "item_id": -4, "ts": TS}), Reason.BAD_TYPE),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": TS, "price": "cheap"}), Reason.BAD_TYPE),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": 1_700_000_000}), Reason.BAD_TIMESTAMP),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": 0}), Reason.BAD_TIMESTAMP),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": -5}), Reason.BAD_TIMESTAMP),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": "now"}), Reason.BAD_TYPE),
    (b"1", pack({"user_id": 1, "item_id": 2, "ts": TS, "pad": "x" * MAX_VALUE_BYTES}), Reason.OVERSIZED),
    (b"2", pack({"user_id": 1, "item_id": 2, "ts": TS}), Reason.KEY_MISMATCH),
    (None, pack({"user_id": 1, "item_id": 2, "ts": TS}), Reason.KEY_MISMATCH),
])
def test_invalid_messages_get_their_reason(key, value, reason):
    bad = decode_event(key, value, topic="click")
    assert isinstance(bad, Invalid), bad
    assert bad.reason == reason
    assert bad.key == key and bad.value == value  # nothing is lost
    dl = msgpack.unpackb(dead_letter_value(bad), raw=False)
    assert dl["reason"] == reason and dl["value"] == value and dl["topic"] == "click"


def test_unknown_topic_is_rejected():
    bad = decode_event(b"1", pack({"user_id": 1, "item_id": 2, "ts": TS}), topic="views")
    assert isinstance(bad, Invalid) and bad.reason == Reason.UNKNOWN_TOPIC


def test_input_topic_rejects_unknown_action():
    with pytest.raises(ValueError, match="unknown action"):
        input_topic("fav")
