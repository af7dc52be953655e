"""Hypothesis strategies for input records: valid events, and malformed records by category.

Each malformed record is built from a valid one with one known defect, so the test knows the
outcome (dead-letter) and the reason(s) the contract allows for it, without asking the decoder.
The expected key of a valid record is worked out here, not by stream/events.py: an integer id's
decimal text, or a string id's own UTF-8 (a canonical decimal string is its integer, whose text is
the same bytes).
"""
from __future__ import annotations

import math
import random
import unicodedata
from dataclasses import dataclass

import msgpack
from hypothesis import strategies as st

from models.schema import ACTIONS

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
MIN_TS, MAX_TS = 946_684_800_000, 4_102_444_800_000  # the contract's 2000..2100 in ms
MAX_ID = 2**63 - 1
LIMIT = 64 * 1024  # the worker's max value bytes (Settings.max_value_bytes)
N_ITEMS, N_CATS = 200, 10
KNOWN = ("user_id", "item_id", "ts", "category_id", "session_id", "price", "quantity")

# reasons (stream/events.py Reason) spelled out: the test states the contract itself
NOT_MSGPACK, NOT_A_MAP, MISSING, BAD_TYPE = "not-msgpack", "not-a-map", "missing-field", "bad-type"
BAD_TS, OVERSIZED, KEY_MISMATCH = "bad-timestamp", "oversized", "key-mismatch"
DECODE_REASONS = frozenset({NOT_MSGPACK, NOT_A_MAP, MISSING, BAD_TYPE, BAD_TS, KEY_MISMATCH})

# one example's malformed records, by category (a fixed schedule, not a weighted draw:
# hypothesis favours the first choices, and values over 64 KiB are costly on the wire)
CATEGORIES = ("random_bytes", "truncated", "wrong_type", "bad_number", "nested", "unicode_id",
              "missing_key", "key_mismatch", "ts_seconds", "oversized")
PER_EXAMPLE = dict(zip(CATEGORIES, (2, 2, 3, 3, 2, 2, 2, 2, 1, 1)))
SCHEDULE = tuple(c for c in CATEGORIES for _ in range(PER_EXAMPLE[c]))  # 20 records
# Kafka's default message limit (broker message.max.bytes, the worker's producer max request)
KAFKA_LIMIT = 1_048_576


@dataclass(frozen=True)
class Rec:
    category: str  # "valid" or one of CATEGORIES
    action: str
    key: bytes | None
    value: bytes | None
    reasons: frozenset[str] = frozenset()  # the allowed dead-letter reasons; empty when valid


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def key_of(ident: int | str) -> bytes:
    return (str(ident) if isinstance(ident, int) else ident).encode("utf-8")


# ----------------------------------------------------------------------------- valid events

_chars = st.characters(exclude_categories=("Cs",))  # no lone surrogates: not UTF-8
text_ids = st.one_of(
    st.text(_chars, min_size=1, max_size=32),  # <= 128 UTF-8 bytes
    st.sampled_from(["007", "+7", "-7", " 7", "7.0", "0", "9223372036854775807",
                     "99999999999999999999", "SKU-ä-🛒", "x" * 128, "é" * 64]),
    st.integers(0, MAX_ID).map(str),  # canonical decimal: the integer itself
)
user_ids = st.one_of(st.integers(0, 60), st.integers(0, MAX_ID), text_ids)
item_ids = st.one_of(st.integers(0, N_ITEMS + 20), st.integers(0, MAX_ID), text_ids)
timestamps = st.one_of(st.integers(T0, T0 + 30 * DAY_MS), st.sampled_from([MIN_TS, MAX_TS]))
# unknown fields are kept but ignored: nested, NaN, huge, whatever msgpack can carry
leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                   st.text(max_size=8), st.binary(max_size=8))
extras_values = st.recursive(leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=8)
extra_fields = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in KNOWN),
                               extras_values, max_size=2)


@st.composite
def bodies(draw, rich: bool = True) -> tuple[dict, bytes]:
    """A valid body and its key; `rich`: with optional and unknown fields (a malformed record's
    base leaves them out: fewer draws, and its one defect is what matters)."""
    uid = draw(user_ids)
    body = {"user_id": uid, "item_id": draw(item_ids), "ts": draw(timestamps)}
    if not rich:
        return body, key_of(uid)
    if draw(st.booleans()):
        body["category_id"] = draw(st.one_of(st.none(), st.integers(0, N_CATS + 3), text_ids))
    if draw(st.booleans()):
        body["session_id"] = draw(st.integers(0, MAX_ID))
    if draw(st.booleans()):
        body["price"] = draw(st.one_of(st.floats(0, 1e308), st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        body["quantity"] = draw(st.integers(0, MAX_ID))
    body.update(draw(extra_fields))
    return body, key_of(uid)


@st.composite
def valid_records(draw) -> Rec:
    body, key = draw(bodies())
    return Rec("valid", draw(st.sampled_from(ACTIONS)), key, pack(body))


# ----------------------------------------------------------------------------- malformed

ints = st.integers(-2**63, 2**64 - 1)  # what msgpack can carry


def _bad(category: str, key: bytes | None, value: bytes | None, *reasons: str) -> tuple:
    return category, key, value, frozenset(reasons)


non_maps = st.one_of(st.none(), st.booleans(), ints, st.floats(),
                     st.text(max_size=20), st.binary(max_size=20),
                     st.lists(ints, max_size=5))
nested = st.recursive(st.integers(0, 9) | st.text(max_size=3),
                      lambda kids: st.lists(kids, min_size=1, max_size=3)
                      | st.dictionaries(st.text(max_size=3), kids, min_size=1, max_size=3),
                      max_leaves=12)
exts = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)) | st.builds(
    msgpack.Timestamp, st.integers(0, 2**32 - 1))


def wrong_values(name: str):
    """Values of the wrong type for a field (string ids are valid, so never strings for ids)."""
    common = [st.booleans(), st.binary(max_size=8), st.lists(ints, max_size=3),
              st.dictionaries(st.text(max_size=3), ints, max_size=2), exts]
    if name in ("user_id", "item_id", "category_id"):
        return st.one_of(*common, st.floats())
    if name == "price":
        return st.one_of(*common, st.text(max_size=6))
    return st.one_of(*common, st.floats(), st.text(max_size=13))  # ts, session_id, quantity


@st.composite
def malformed(draw, category: str) -> tuple:  # noqa: C901 - one branch per category
    body, key = draw(bodies(rich=False))
    ok = pack(body)
    if category == "random_bytes":
        value = draw(st.one_of(st.none(), st.binary(max_size=64)))  # None: a tombstone
        try:
            obj = msgpack.unpackb(value, raw=False, strict_map_key=False) if value else None
        except Exception:  # noqa: BLE001 - garbage, as intended
            obj = None
        if isinstance(obj, dict) and {"user_id", "item_id", "ts"} <= set(obj):
            value = b"\xc1" + value  # 0xc1 is never used in msgpack: garbage for sure
        return _bad(category, key, value, *DECODE_REASONS)
    if category == "truncated":
        if draw(st.booleans()):  # msgpack is prefix-free: a cut value is never complete
            return _bad(category, key, ok[:draw(st.integers(0, len(ok) - 1))], NOT_MSGPACK)
        return _bad(category, key, ok + draw(st.binary(min_size=1, max_size=8)), NOT_MSGPACK)
    if category == "wrong_type":
        name = draw(st.sampled_from(KNOWN))
        body[name] = draw(wrong_values(name))
        return _bad(category, key, pack(body), BAD_TYPE)
    if category == "bad_number":
        name = draw(st.sampled_from(KNOWN))
        if name == "price":
            body[name] = draw(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                                        st.floats(max_value=-1e-300), st.integers(-2**63, -1)))
            return _bad(category, key, pack(body), BAD_TYPE)
        body[name] = draw(st.one_of(st.integers(-2**63, -1), st.integers(MAX_ID + 1, 2**64 - 1),
                                    st.sampled_from([math.nan, math.inf, -math.inf])))
        int_ts = name == "ts" and isinstance(body[name], int)
        return _bad(category, key, pack(body), BAD_TS if int_ts else BAD_TYPE)
    if category == "nested":
        kind = draw(st.sampled_from(["top", "field", "deep"]))
        if kind == "top":  # the value is no map at all
            return _bad(category, key, pack(draw(st.one_of(non_maps, st.lists(nested)))), NOT_A_MAP)
        if kind == "field":
            name = draw(st.sampled_from(("user_id", "item_id", "ts", "category_id")))
            body[name] = draw(nested.filter(lambda v: isinstance(v, (list, dict))))
            return _bad(category, key, pack(body), BAD_TYPE)
        depth = draw(st.integers(1100, 5000))  # past msgpack's nesting limit
        opener = draw(st.sampled_from([b"\x91", b"\x81\xa1k"]))
        return _bad(category, key, opener * depth + b"\xc0", NOT_MSGPACK)
    if category == "unicode_id":
        name = draw(st.sampled_from(("user_id", "item_id", "category_id")))
        kind = draw(st.sampled_from(["empty", "long", "bad_utf8", "nfd_key"]))
        if kind == "empty":
            body[name] = ""
        elif kind == "long":  # over 128 UTF-8 bytes
            body[name] = draw(st.sampled_from(["x" * 129, "é" * 65, "🛒" * 33, "ä" * 200]))
        elif kind == "bad_utf8":  # a msgpack str whose bytes are not UTF-8 (lone surrogate...)
            raw = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc3", b"a\x80b"]))
            body[name] = "\x00PLACEHOLDER\x00"
            value = pack(body).replace(pack("\x00PLACEHOLDER\x00"), bytes([0xa0 | len(raw)]) + raw)
            return _bad(category, key, value, NOT_MSGPACK)
        else:  # the key spells the same text decomposed: bytes differ, so the key is wrong
            text = draw(st.sampled_from(["é", "café", "Å-7", "ñandú"]))
            body["user_id"] = unicodedata.normalize("NFC", text)
            key = unicodedata.normalize("NFD", text).encode("utf-8")
            return _bad(category, key, pack(body), KEY_MISMATCH)
        return _bad(category, key, pack(body), BAD_TYPE)
    if category == "missing_key":
        kind = draw(st.sampled_from(["drop", "nil_ts", "bin_names", "no_kafka_key"]))
        if kind == "drop":
            for name in draw(st.lists(st.sampled_from(("user_id", "item_id", "ts")),
                                      min_size=1, max_size=3, unique=True)):
                del body[name]
        elif kind == "nil_ts":
            body["ts"] = None
        elif kind == "bin_names":  # the names as msgpack bin, not str: not the fields
            body = {k.encode(): v for k, v in body.items() if isinstance(k, str)}
        else:
            return _bad(category, None, ok, KEY_MISMATCH)
        return _bad(category, key, pack(body), MISSING)
    if category == "key_mismatch":
        kind = draw(st.sampled_from(["suffix", "empty", "other", "padded", "huge"]))
        if kind == "huge":  # a key up to Kafka's message limit (the value is small)
            rnd = random.Random(draw(st.integers(0, 2**32)))
            bad_key = rnd.randbytes(rnd.choice([200, 70_000, KAFKA_LIMIT - 1024 - len(ok)]))
        elif kind == "suffix":
            bad_key = key + draw(st.sampled_from([b" ", b"\x00", b"x", b"0"]))
        elif kind == "empty":
            bad_key = b""
        elif kind == "other":
            bad_key = key_of(draw(user_ids))
            if bad_key == key:
                bad_key = key + b"-other"
        else:
            bad_key = b"0" + key
        return _bad(category, bad_key, ok, KEY_MISMATCH)
    if category == "ts_seconds":
        ts = body["ts"]
        body["ts"] = draw(st.sampled_from([ts // 1000, ts * 1000, MIN_TS - 1, MAX_TS + 1, 0]))
        return _bad(category, key, pack(body), BAD_TS)
    if category == "oversized":
        # just over the limit mostly; 1 in 20 up to Kafka's own 1 MiB message limit (the broker
        # refuses the largest: they never reach the worker, and the test counts them). Python's
        # random, seeded by hypothesis, sets the odds: hypothesis favours the bounds of a range
        rnd = random.Random(draw(st.integers(0, 2**32)))
        pick = rnd.random()
        size = (rnd.randint(KAFKA_LIMIT - 1024, KAFKA_LIMIT) if pick < 0.05 else
                rnd.randint(LIMIT + 1, 4 * LIMIT) if pick < 0.1 else
                rnd.randint(LIMIT + 1, LIMIT + 4096))
        blob = rnd.randbytes(size)
        if draw(st.booleans()):
            body["blob"] = blob
            value = pack(body)
        else:
            value = blob
        return _bad(category, key, value, OVERSIZED)
    raise AssertionError(category)


def _rec(made: tuple, action: str) -> Rec:
    category, key, value, reasons = made
    return Rec(category, action, key, value, reasons)


# one example's malformed records: SCHEDULE's categories, each on a random input topic
malformed_batch = st.tuples(*(st.builds(_rec, malformed(c), st.sampled_from(ACTIONS))
                              for c in SCHEDULE)).map(list)
