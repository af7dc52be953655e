"""The wire contract: every kind of bad input gets its reason; good input round-trips."""
import msgpack
import pytest

from models.schema import LogEvent
from stream.events import (MAX_VALUE_BYTES, Event, Invalid, Reason, dead_letter_headers,
                           dead_letter_key, dead_letter_value, decode_event, encode_value,
                           input_topic, user_key)

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


@pytest.mark.parametrize("price", [float("nan"), float("inf"), float("-inf"), -0.01, -3])
def test_non_finite_or_negative_price_is_dead_lettered(price):
    # found by tests/faults/test_fuzz_input.py: these were scored as if the price were real
    value = pack({"user_id": 1, "item_id": 2, "ts": TS, "price": price})
    bad = decode_event(b"1", value, topic="cart")
    assert isinstance(bad, Invalid) and bad.reason == Reason.BAD_TYPE and "price" in bad.detail


@pytest.mark.parametrize("price", [0, 0.0, 19.99, 2**64 - 1, 1e308])
def test_finite_non_negative_price_is_kept(price):
    ev = decode_event(b"1", pack({"user_id": 1, "item_id": 2, "ts": TS, "price": price}), topic="cart")
    assert isinstance(ev, Event) and ev.price == float(price)


def test_a_dead_letter_fits_in_one_kafka_message_whatever_it_carries():
    # found by tests/faults/test_fuzz_input.py: a value just under Kafka's 1 MiB made a dead
    # letter over it; the worker's producer refused it and the whole batch was lost
    key, value = bytes(range(256)) * 3600, b"\x93" + bytes(1_048_300)
    bad = decode_event(key, value, topic="click")
    assert isinstance(bad, Invalid) and bad.reason == Reason.OVERSIZED
    record = dead_letter_value(bad)
    size = len(record) + len(dead_letter_key(bad) or b"") + sum(
        len(k) + len(v) for k, v in dead_letter_headers(bad))
    assert size < 1024 * 1024 - 64 * 1024
    dl = msgpack.unpackb(record, raw=False)
    assert dl["value_bytes"] == len(value) and value.startswith(dl["value"]) and dl["value"]
    assert dl["key_bytes"] == len(key) and key.startswith(dl["key"]) and dl["key"]
    assert dead_letter_key(bad) is None
    # just over the input limit: carried whole, keyed as it came
    bad = decode_event(b"7", b"\x93" + bytes(MAX_VALUE_BYTES), topic="click")
    dl = msgpack.unpackb(dead_letter_value(bad), raw=False)
    assert dl["value"] == bad.value and "value_bytes" not in dl and dead_letter_key(bad) == b"7"


def test_unknown_topic_is_rejected():
    bad = decode_event(b"1", pack({"user_id": 1, "item_id": 2, "ts": TS}), topic="views")
    assert isinstance(bad, Invalid) and bad.reason == Reason.UNKNOWN_TOPIC


def test_input_topic_rejects_unknown_action():
    with pytest.raises(ValueError, match="unknown action"):
        input_topic("fav")


# ------------------------------------------------------------------ ids as shops have them


def test_numeric_string_user_id_is_the_same_integer_id():
    # the case that used to be dead-lettered as bad-type
    ev = decode_event(b"541312140", pack({"user_id": "541312140", "item_id": 5, "ts": TS}),
                      topic="click")
    assert isinstance(ev, Event), ev
    assert ev.user_id == 541312140 and type(ev.user_id) is int
    as_int = decode_event(b"541312140", pack({"user_id": 541312140, "item_id": "5", "ts": TS}),
                          topic="click")
    assert isinstance(as_int, Event) and (as_int.user_id, as_int.item_id) == (ev.user_id, ev.item_id)


@pytest.mark.parametrize("sku", ["B07XJ8C8F5", "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "007", "-7",
                                 "7.0", " 7", "ü" * 64, "x" * 128])
def test_string_ids_are_kept_exactly(sku):
    ev = decode_event(b"u-1", pack({"user_id": "u-1", "item_id": sku, "category_id": sku, "ts": TS}),
                      topic="cart")
    assert isinstance(ev, Event), ev
    assert (ev.user_id, ev.item_id, ev.category_id) == ("u-1", sku, sku)


def test_string_ids_round_trip_through_encode_value():
    log = LogEvent(user_id="shopper-9", item_id="B07XJ8C8F5", action="click", ts_ms=TS,
                   category_id="shoes")
    ev = decode_event(user_key("shopper-9"), encode_value(log), topic="click")
    assert isinstance(ev, Event)
    assert (ev.user_id, ev.item_id, ev.category_id) == ("shopper-9", "B07XJ8C8F5", "shoes")
    assert user_key("shopper-9") == b"shopper-9" and user_key(541312140) == b"541312140"


@pytest.mark.parametrize("field,bad,why", [
    ("user_id", "", "empty"),
    ("item_id", "", "empty"),
    ("category_id", "", "empty"),
    ("item_id", "x" * 129, "129 UTF-8 bytes"),
    ("item_id", "ü" * 65, "130 UTF-8 bytes"),  # 65 characters, but 130 bytes
    ("item_id", True, "bool"),
    ("user_id", False, "bool"),
    ("item_id", 5.0, "float"),
    ("category_id", 1.5, "float"),
    ("item_id", None, "None"),
    ("user_id", None, "None"),
    ("item_id", [1], "list"),
    ("item_id", {"sku": "B0"}, "dict"),
    ("item_id", b"B07", "bytes"),
    ("item_id", -4, "out of range"),
    ("user_id", 2**63, "out of range"),
])
def test_malformed_ids_are_bad_type_naming_the_field(field, bad, why):
    body = {"user_id": 1, "item_id": 2, "ts": TS, field: bad}
    bad_ev = decode_event(b"1", pack(body), topic="click")
    assert isinstance(bad_ev, Invalid), bad_ev
    assert bad_ev.reason == Reason.BAD_TYPE
    assert repr(field) in bad_ev.detail and why in bad_ev.detail


def test_optional_category_nil_means_none():
    ev = decode_event(b"1", pack({"user_id": 1, "item_id": 2, "ts": TS, "category_id": None}),
                      topic="click")
    assert isinstance(ev, Event) and ev.category_id is None


def test_key_must_match_the_canonical_user_id():
    # "007" is a string id distinct from 7: its key is b"007", not b"7"
    ok = decode_event(b"007", pack({"user_id": "007", "item_id": 2, "ts": TS}), topic="click")
    assert isinstance(ok, Event) and ok.user_id == "007"
    bad = decode_event(b"7", pack({"user_id": "007", "item_id": 2, "ts": TS}), topic="click")
    assert isinstance(bad, Invalid) and bad.reason == Reason.KEY_MISMATCH


def test_predictions_echo_string_item_ids():
    from stream.events import Prediction, encode_predictions

    ev = decode_event(b"541312140", pack({"user_id": "541312140", "item_id": "B07XJ8C8F5", "ts": TS}),
                      topic="click")
    assert isinstance(ev, Event)
    p = Prediction(ev.user_id, ev, 1, {"click": 1.0}, [("B01N5IB20Q", 0.5), ("B07XJ8C8F5", 0.25)],
                   0.1, False, 1)
    msg = msgpack.unpackb(encode_predictions([p], TS)[0], raw=False)
    assert msg["user_id"] == 541312140 and msg["event"]["item_id"] == "B07XJ8C8F5"
    assert msg["next_items"] == [["B01N5IB20Q", 0.5], ["B07XJ8C8F5", 0.25]]
