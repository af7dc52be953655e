"""Our own dumps, ``jsonl`` and ``msgpack`` (the same keys): reading them and writing them."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from models.datasets.common import RowError, open_binary, open_text, parse_id, parse_int, parse_opt_id, parse_opt_int
from models.schema import ACTIONS, LogEvent


def event_from_mapping(obj: Any, row: int) -> LogEvent:
    """Our own dump format (jsonl and msgpack share it)."""
    if not isinstance(obj, dict):
        raise RowError(f"expected an object, got {type(obj).__name__}")
    missing = [k for k in ("user_id", "item_id", "action", "ts") if k not in obj]
    if missing:
        raise RowError(f"missing key(s) {missing}")
    action = obj["action"]
    if action not in ACTIONS:
        raise RowError(f"unknown action {action!r} (expected one of {ACTIONS})")
    flag = obj.get("flag")
    if flag is not None and not isinstance(flag, str):
        raise RowError(f"flag must be a string, got {flag!r}")
    return LogEvent(
        user_id=parse_id(obj["user_id"], "user_id"),
        item_id=parse_id(obj["item_id"], "item_id"),
        action=action,
        ts_ms=parse_int(obj["ts"], "ts"),
        category_id=parse_opt_id(obj.get("category_id"), "category_id"),
        session_id=parse_opt_int(obj.get("session_id"), "session_id"),
        row=row,
        flag=flag,
    )


def jsonl_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    row = -1
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row += 1
            try:
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise RowError(f"invalid JSON: {e}") from None
                yield line_no, row, event_from_mapping(obj, row)
            except RowError as e:
                yield line_no, row, str(e)


def msgpack_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    import msgpack  # local: only needed for this format

    with open_binary(path) as f:
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
                yield row + 1, row, event_from_mapping(obj, row)
            except RowError as e:
                yield row + 1, row, str(e)


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
