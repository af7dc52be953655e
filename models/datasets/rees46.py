"""REES46 eCommerce CSV (header ``event_time,event_type,product_id,category_id,...``)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from models.datasets.common import RowError, csv_with_header, parse_id, parse_opt_id
from models.schema import LogEvent


REES46_ACTIONS: dict[str, tuple[str, str | None]] = {
    "view": ("click", None),
    "cart": ("cart", None),
    "purchase": ("purchase", None),
    "remove_from_cart": ("click", "remove_from_cart"),
}
_REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "user_id", "user_session")


_day_cache: dict[str, int] = {}


def _rees46_ts_ms(text: str) -> int:
    """'2019-10-01 00:00:00 UTC' -> epoch ms. Hand-parsed (with a per-day cache) because
    strptime would dominate the cost of reading a multi-GB REES46 file."""
    text = text.strip()
    if len(text) < 19 or text[4] != "-" or text[10] != " " or text[13] != ":" or text[16] != ":":
        raise RowError(f"bad event_time {text!r}")
    tz = text[19:].strip()
    if tz not in ("", "UTC"):
        raise RowError(f"event_time must be UTC, got {text!r}")
    day = text[:10]
    base = _day_cache.get(day)
    try:
        if base is None:
            base = (date.fromisoformat(day) - date(1970, 1, 1)).days * 86400
            if len(_day_cache) < 100_000:  # bounded: constant memory
                _day_cache[day] = base
        h, m, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
    except ValueError:
        raise RowError(f"bad event_time {text!r}") from None
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
        raise RowError(f"bad event_time {text!r}")
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


def rees46_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    for reader, row, col, rec, width in csv_with_header(path, _REES46_COLUMNS):
        try:
            if len(rec) != width:
                raise RowError(f"expected {width} fields, got {len(rec)}")
            event = rec[col["event_type"]].strip()
            mapped = REES46_ACTIONS.get(event)
            if mapped is None:
                raise RowError(f"unknown event_type {event!r}")
            session = rec[col["user_session"]].strip()
            yield reader.line_num, row, LogEvent(
                user_id=parse_id(rec[col["user_id"]], "user_id"),
                item_id=parse_id(rec[col["product_id"]], "product_id"),
                action=mapped[0],
                ts_ms=_rees46_ts_ms(rec[col["event_time"]]),
                category_id=parse_opt_id(rec[col["category_id"]], "category_id"),
                session_id=session_id_from_string(session) if session else None,
                row=row,
                flag=mapped[1],
            )
        except RowError as e:
            yield reader.line_num, row, str(e)
