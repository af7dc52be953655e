"""RetailRocket ``events.csv`` (header ``timestamp,visitorid,event,itemid,transactionid``)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from models.datasets.common import RowError, csv_with_header, parse_id, parse_int
from models.schema import LogEvent


RETAILROCKET_ACTIONS: dict[str, str] = {"view": "click", "addtocart": "cart", "transaction": "purchase"}
_RETAILROCKET_COLUMNS = ("timestamp", "visitorid", "event", "itemid")


def retailrocket_rows(path: Path) -> Iterator[tuple[int, int, LogEvent | str]]:
    for reader, row, col, rec, width in csv_with_header(path, _RETAILROCKET_COLUMNS):
        try:
            if len(rec) != width:
                raise RowError(f"expected {width} fields, got {len(rec)}")
            event = rec[col["event"]].strip()
            action = RETAILROCKET_ACTIONS.get(event)
            if action is None:
                raise RowError(f"unknown event {event!r}")
            yield reader.line_num, row, LogEvent(
                user_id=parse_id(rec[col["visitorid"]], "visitorid"),
                item_id=parse_id(rec[col["itemid"]], "itemid"),
                action=action,
                ts_ms=parse_int(rec[col["timestamp"]], "timestamp"),
                row=row,
            )
        except RowError as e:
            yield reader.line_num, row, str(e)
