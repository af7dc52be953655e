"""The one event shape that every log reader, the generator and the stream agree on."""
from __future__ import annotations

from dataclasses import dataclass

ACTIONS: tuple[str, ...] = ("click", "cart", "purchase")
ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One user-behaviour event, as read from a historical log or produced by the generator.

    `ts_ms` is event time in milliseconds since the epoch (UTC). `row` is the 0-based data-row
    index in its source (used by the evaluation protocol's stable sort). `category_id` is None
    when the source has no categories.
    """

    user_id: int | str  # ids are normalised by models/ids.py (normalize_id)
    item_id: int | str
    action: str
    ts_ms: int
    category_id: int | str | None = None
    session_id: int | None = None
    row: int = 0
    flag: str | None = None  # source-specific marker, e.g. "fav" mapped to click
