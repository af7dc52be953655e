"""Taobao UserBehavior CSV, no header: ``user,item,category,behavior,unix_seconds``."""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from models.datasets.common import RowError, open_text, parse_id, parse_int
from models.schema import LogEvent


TAOBAO_ACTIONS: dict[str, tuple[str, str | None]] = {
    "pv": ("click", None),
    "cart": ("cart", None),
    "buy": ("purchase", None),
    "fav": ("click", "fav"),
}


def taobao_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    with open_text(path) as f:
        reader = csv.reader(f)
        row = -1
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            row += 1
            try:
                if len(rec) != 5:
                    raise RowError(f"expected 5 fields, got {len(rec)}")
                behavior = rec[3].strip()
                mapped = TAOBAO_ACTIONS.get(behavior)
                if mapped is None:
                    raise RowError(f"unknown behavior {behavior!r}")
                yield reader.line_num, row, LogEvent(
                    user_id=parse_id(rec[0], "user_id"),
                    item_id=parse_id(rec[1], "item_id"),
                    action=mapped[0],
                    ts_ms=parse_int(rec[4], "timestamp") * 1000,
                    category_id=parse_id(rec[2], "category_id"),
                    row=row,
                    flag=mapped[1],
                )
            except RowError as e:
                yield reader.line_num, row, str(e)
