"""Streaming readers for public behaviour logs and our own dumps, all yielding `LogEvent`.

Every reader works line by line (or object by object), so memory stays constant however big the
file is. `.gz` files are decompressed on the fly.

Formats (`FORMATS`) and how they map onto seqstream's actions ("click", "cart", "purchase"):

- ``taobao``: Taobao UserBehavior CSV, no header: ``user,item,category,behavior,unix_seconds``.
  ``pv`` -> click, ``cart`` -> cart, ``buy`` -> purchase. ``fav`` (favourite) is KEPT as a
  click with ``flag="fav"`` (the evaluation protocol keeps every action as an event).
- ``retailrocket``: RetailRocket ``events.csv`` with header
  ``timestamp,visitorid,event,itemid,transactionid`` (timestamp in ms). ``view`` -> click,
  ``addtocart`` -> cart, ``transaction`` -> purchase. No categories (``category_id=None``).
- ``rees46``: REES46 eCommerce CSV with header ``event_time,event_type,product_id,category_id,
  category_code,brand,price,user_id,user_session``; event_time like ``2019-10-01 00:00:00 UTC``.
  ``view`` -> click, ``cart`` -> cart, ``purchase`` -> purchase. ``remove_from_cart`` is KEPT
  as a click with ``flag="remove_from_cart"``, like Taobao's ``fav``. ``user_session``
  (a UUID) becomes a deterministic 63-bit integer ``session_id``. Price is not part of LogEvent.
- ``otto``: OTTO JSONL, one session per line:
  ``{"session": int, "events": [{"aid": int, "ts": ms, "type": "clicks"|"carts"|"orders"}]}``.
  session -> ``user_id`` (and ``session_id``), aid -> ``item_id``; no categories.
- ``jsonl``: our own dump, one JSON object per line with keys ``user_id, item_id, action,
  ts`` (ms) and optional ``category_id, session_id, price, quantity, flag`` (price and quantity
  are accepted and ignored: LogEvent has no field for them).
- ``msgpack``: a stream of msgpack maps with the same keys as ``jsonl``.

``row`` is the 0-based index of the data row in the file (header excluded; for OTTO, the running
index of the event across all sessions; for msgpack, the object index). A row that is skipped
(bad) still uses up its index, so ``row`` always points back to the file.

Bad rows: with ``on_error="skip"`` they are counted in an ``ErrorReport`` (which keeps the first
N messages, each ``path:line: reason``); with ``on_error="stop"`` the first one raises
``BadRow``. Line numbers are 1-based physical lines (for msgpack: 1-based object numbers).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal

from models.schema import ACTIONS, LogEvent

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("taobao", "retailrocket", "rees46", "otto", "jsonl", "msgpack")
OnError = Literal["skip", "stop"]

TAOBAO_ACTIONS: dict[str, tuple[str, str | None]] = {
    "pv": ("click", None),
    "cart": ("cart", None),
    "buy": ("purchase", None),
    "fav": ("click", "fav"),
}
RETAILROCKET_ACTIONS: dict[str, str] = {"view": "click", "addtocart": "cart", "transaction": "purchase"}
REES46_ACTIONS: dict[str, tuple[str, str | None]] = {
    "view": ("click", None),
    "cart": ("cart", None),
    "purchase": ("purchase", None),
    "remove_from_cart": ("click", "remove_from_cart"),
}
OTTO_ACTIONS: dict[str, str] = {"clicks": "click", "carts": "cart", "orders": "purchase"}

_RETAILROCKET_COLUMNS = ("timestamp", "visitorid", "event", "itemid")
_REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "user_id", "user_session")


class BadRow(ValueError):
    """A malformed data row, raised with ``on_error="stop"``; message is ``path:line: reason``."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


@dataclass
class ErrorReport:
    """Counts bad rows and keeps the first `max_messages` messages (``path:line: reason``)."""

    max_messages: int = 20
    count: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, path: str | Path, line: int, reason: str) -> None:
        self.count += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(f"{path}:{line}: {reason}")

    def summary(self) -> str:
        text = f"{self.count} bad row(s)"
        if self.messages:
            more = self.count - len(self.messages)
            text += "\n  " + "\n  ".join(self.messages) + (f"\n  ... and {more} more" if more > 0 else "")
        return text


class _RowError(Exception):
    """Internal: a reason why one row is bad; converted to BadRow/ErrorReport by the reader."""


# --------------------------------------------------------------------------- field parsers


def _int(value: Any, name: str) -> int:
    """Strict integer: accepts ints, integral floats and decimal strings; rejects bools."""
    if isinstance(value, bool):
        raise _RowError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _RowError(f"{name} must be an integer, got {value!r}")


def _opt_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    return _int(value, name)


_day_cache: dict[str, int] = {}


def _rees46_ts_ms(text: str) -> int:
    """'2019-10-01 00:00:00 UTC' -> epoch ms. Hand-parsed (with a per-day cache) because
    strptime would dominate the cost of reading a multi-GB REES46 file."""
    text = text.strip()
    if len(text) < 19 or text[4] != "-" or text[10] != " " or text[13] != ":" or text[16] != ":":
        raise _RowError(f"bad event_time {text!r}")
    tz = text[19:].strip()
    if tz not in ("", "UTC"):
        raise _RowError(f"event_time must be UTC, got {text!r}")
    day = text[:10]
    base = _day_cache.get(day)
    try:
        if base is None:
            base = (date.fromisoformat(day) - date(1970, 1, 1)).days * 86400
            if len(_day_cache) < 100_000:  # bounded: constant memory
                _day_cache[day] = base
        h, m, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
    except ValueError:
        raise _RowError(f"bad event_time {text!r}") from None
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
        raise _RowError(f"bad event_time {text!r}")
    return (base + h * 3600 + m * 60 + s) * 1000


def session_id_from_string(text: str) -> int:
    """Deterministic 63-bit integer for a string session id (UUIDs use their first 63 bits)."""
    hexed = text.replace("-", "")
    if len(hexed) == 32:
        try:
            return int(hexed[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF
        except ValueError:
            pass
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


# --------------------------------------------------------------------------- file helpers


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _header_index(header: list[str], required: tuple[str, ...], path: Path) -> dict[str, int]:
    """Column positions by name, so column order does not matter. A wrong header is a file
    error, not a row error: it always raises."""
    names = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}:1: header {header!r} lacks column(s) {missing}")
    return {c: names.index(c) for c in names}


# --------------------------------------------------------------------------- per-format parsers
# Each yields (line, row, LogEvent | str) where str is the reason why the row is bad.


def _taobao(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    with _open_text(path) as f:
        reader = csv.reader(f)
        row = -1
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            row += 1
            try:
                if len(rec) != 5:
                    raise _RowError(f"expected 5 fields, got {len(rec)}")
                behavior = rec[3].strip()
                mapped = TAOBAO_ACTIONS.get(behavior)
                if mapped is None:
                    raise _RowError(f"unknown behavior {behavior!r}")
                yield reader.line_num, row, LogEvent(
                    user_id=_int(rec[0], "user_id"),
                    item_id=_int(rec[1], "item_id"),
                    action=mapped[0],
                    ts_ms=_int(rec[4], "timestamp") * 1000,
                    category_id=_int(rec[2], "category_id"),
                    row=row,
                    flag=mapped[1],
                )
            except _RowError as e:
                yield reader.line_num, row, str(e)


def _csv_with_header(path: Path, columns: tuple[str, ...]
                     ) -> Iterator[tuple[Any, int, dict[str, int], list[str], int]]:
    """Rows of a CSV with a required header: (reader, row, column index, fields, header width).
    Blank lines are skipped and use no row index; the caller checks the width (a bad row)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        col = _header_index(header, columns, path)
        width = len(header)
        row = -1
        for rec in reader:
            if not rec:
                continue
            row += 1
            yield reader, row, col, rec, width


def _retailrocket(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    for reader, row, col, rec, width in _csv_with_header(path, _RETAILROCKET_COLUMNS):
        try:
            if len(rec) != width:
                raise _RowError(f"expected {width} fields, got {len(rec)}")
            event = rec[col["event"]].strip()
            action = RETAILROCKET_ACTIONS.get(event)
            if action is None:
                raise _RowError(f"unknown event {event!r}")
            yield reader.line_num, row, LogEvent(
                user_id=_int(rec[col["visitorid"]], "visitorid"),
                item_id=_int(rec[col["itemid"]], "itemid"),
                action=action,
                ts_ms=_int(rec[col["timestamp"]], "timestamp"),
                row=row,
            )
        except _RowError as e:
            yield reader.line_num, row, str(e)


def _rees46(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    for reader, row, col, rec, width in _csv_with_header(path, _REES46_COLUMNS):
        try:
            if len(rec) != width:
                raise _RowError(f"expected {width} fields, got {len(rec)}")
            event = rec[col["event_type"]].strip()
            mapped = REES46_ACTIONS.get(event)
            if mapped is None:
                raise _RowError(f"unknown event_type {event!r}")
            session = rec[col["user_session"]].strip()
            yield reader.line_num, row, LogEvent(
                user_id=_int(rec[col["user_id"]], "user_id"),
                item_id=_int(rec[col["product_id"]], "product_id"),
                action=mapped[0],
                ts_ms=_rees46_ts_ms(rec[col["event_time"]]),
                category_id=_opt_int(rec[col["category_id"]], "category_id"),
                session_id=session_id_from_string(session) if session else None,
                row=row,
                flag=mapped[1],
            )
        except _RowError as e:
            yield reader.line_num, row, str(e)


def _otto(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    row = -1
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("events"), list):
                    raise _RowError("expected an object with an 'events' list")
                session = _int(obj.get("session"), "session")
            except (ValueError, _RowError) as e:  # json.JSONDecodeError is a ValueError
                # The whole session line is unusable; it counts as one data row.
                row += 1
                yield line_no, row, f"bad session: {e}"
                continue
            for i, ev in enumerate(obj["events"]):
                row += 1
                try:
                    if not isinstance(ev, dict):
                        raise _RowError("event is not an object")
                    kind = ev.get("type")
                    action = OTTO_ACTIONS.get(kind) if isinstance(kind, str) else None
                    if action is None:
                        raise _RowError(f"unknown type {kind!r}")
                    yield line_no, row, LogEvent(
                        user_id=session,
                        item_id=_int(ev.get("aid"), "aid"),
                        action=action,
                        ts_ms=_int(ev.get("ts"), "ts"),
                        session_id=session,
                        row=row,
                    )
                except _RowError as e:
                    yield line_no, row, f"event {i}: {e}"


def _event_from_mapping(obj: Any, row: int) -> LogEvent:
    """Our own dump format (jsonl and msgpack share it)."""
    if not isinstance(obj, dict):
        raise _RowError(f"expected an object, got {type(obj).__name__}")
    missing = [k for k in ("user_id", "item_id", "action", "ts") if k not in obj]
    if missing:
        raise _RowError(f"missing key(s) {missing}")
    action = obj["action"]
    if action not in ACTIONS:
        raise _RowError(f"unknown action {action!r} (expected one of {ACTIONS})")
    flag = obj.get("flag")
    if flag is not None and not isinstance(flag, str):
        raise _RowError(f"flag must be a string, got {flag!r}")
    return LogEvent(
        user_id=_int(obj["user_id"], "user_id"),
        item_id=_int(obj["item_id"], "item_id"),
        action=action,
        ts_ms=_int(obj["ts"], "ts"),
        category_id=_opt_int(obj.get("category_id"), "category_id"),
        session_id=_opt_int(obj.get("session_id"), "session_id"),
        row=row,
        flag=flag,
    )


def _jsonl(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    row = -1
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row += 1
            try:
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise _RowError(f"invalid JSON: {e}") from None
                yield line_no, row, _event_from_mapping(obj, row)
            except _RowError as e:
                yield line_no, row, str(e)


def _msgpack(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    import msgpack  # local: only needed for this format

    with _open_binary(path) as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
        row = -1
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                return
            except (ValueError, msgpack.UnpackException) as e:
                # A corrupt stream cannot be resynchronised: report it and stop reading.
                row += 1
                yield row + 1, row, f"corrupt msgpack stream: {e}"
                return
            row += 1
            try:
                yield row + 1, row, _event_from_mapping(obj, row)
            except _RowError as e:
                yield row + 1, row, str(e)


_PARSERS = {
    "taobao": _taobao,
    "retailrocket": _retailrocket,
    "rees46": _rees46,
    "otto": _otto,
    "jsonl": _jsonl,
    "msgpack": _msgpack,
}


# --------------------------------------------------------------------------- public API


def read_events(
    path: str | Path,
    fmt: str,
    on_error: OnError = "skip",
    errors: ErrorReport | None = None,
) -> Iterator[LogEvent]:
    """Stream the events of `path` in file order, with constant memory.

    `fmt` is one of `FORMATS`. Bad rows are counted in `errors` (a fresh report is used, and a
    warning logged at the end, when none is given) with ``on_error="skip"``, or raise `BadRow`
    with ``on_error="stop"``.
    """
    if fmt not in _PARSERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    path = Path(path)
    report = errors if errors is not None else ErrorReport()
    for line, _row, item in _PARSERS[fmt](path):
        if isinstance(item, LogEvent):
            yield item
        elif on_error == "stop":
            raise BadRow(path, line, item)
        else:
            report.add(path, line, item)
    if errors is None and report.count:
        log.warning("%s: skipped %s", path, report.summary())


def event_to_dict(event: LogEvent) -> dict[str, Any]:
    """The dump record of one event: required keys always, optional ones only when set."""
    out: dict[str, Any] = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "action": event.action,
        "ts": event.ts_ms,
    }
    if event.category_id is not None:
        out["category_id"] = event.category_id
    if event.session_id is not None:
        out["session_id"] = event.session_id
    if event.flag is not None:
        out["flag"] = event.flag
    return out


def write_jsonl(events: Iterable[LogEvent], path: str | Path) -> int:
    """Dump events as JSONL (readable back with fmt="jsonl"); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(event_to_dict(ev), separators=(",", ":")))
            f.write("\n")
            n += 1
    return n


def write_msgpack(events: Iterable[LogEvent], path: str | Path) -> int:
    """Dump events as a msgpack stream (readable back with fmt="msgpack"); returns the count."""
    import msgpack

    packer = msgpack.Packer()
    n = 0
    with open(path, "wb") as f:
        for ev in events:
            f.write(packer.pack(event_to_dict(ev)))
            n += 1
    return n
