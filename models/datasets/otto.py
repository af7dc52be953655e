"""OTTO JSONL, one session per line: ``{"session": int, "events": [{"aid", "ts", "type"}]}``."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from models.datasets.common import RowError, open_text, parse_id, parse_int
from models.schema import LogEvent


OTTO_ACTIONS: dict[str, str] = {"clicks": "click", "carts": "cart", "orders": "purchase"}


def otto_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    row = -1
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("events"), list):
                    raise RowError("expected an object with an 'events' list")
                session = parse_int(obj.get("session"), "session")
            except (ValueError, RowError) as e:  # json.JSONDecodeError is a ValueError
                # The whole session line is unusable; it counts as one data row.
                row += 1
                yield line_no, row, f"bad session: {e}"
                continue
            for i, ev in enumerate(obj["events"]):
                row += 1
                try:
                    if not isinstance(ev, dict):
                        raise RowError("event is not an object")
                    kind = ev.get("type")
                    action = OTTO_ACTIONS.get(kind) if isinstance(kind, str) else None
                    if action is None:
                        raise RowError(f"unknown type {kind!r}")
                    yield line_no, row, LogEvent(
                        user_id=session,
                        item_id=parse_id(ev.get("aid"), "aid"),
                        action=action,
                        ts_ms=parse_int(ev.get("ts"), "ts"),
                        session_id=session,
                        row=row,
                    )
                except RowError as e:
                    yield line_no, row, f"event {i}: {e}"
