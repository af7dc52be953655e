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

import logging
from collections.abc import Iterator
from pathlib import Path

from models.datasets.common import BadRow, ErrorReport, OnError
from models.datasets.dump import jsonl_rows, msgpack_rows
from models.datasets.otto import otto_rows
from models.datasets.rees46 import rees46_rows
from models.datasets.retailrocket import retailrocket_rows
from models.datasets.taobao import taobao_rows
from models.schema import LogEvent


log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("taobao", "retailrocket", "rees46", "otto", "jsonl", "msgpack")


PARSERS = {
    "taobao": taobao_rows,
    "retailrocket": retailrocket_rows,
    "rees46": rees46_rows,
    "otto": otto_rows,
    "jsonl": jsonl_rows,
    "msgpack": msgpack_rows,
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
    if fmt not in PARSERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    path = Path(path)
    report = errors if errors is not None else ErrorReport()
    for line, _row, item in PARSERS[fmt](path):
        if isinstance(item, LogEvent):
            yield item
        elif on_error == "stop":
            raise BadRow(path, line, item)
        else:
            report.add(path, line, item)
    if errors is None and report.count:
        log.warning("%s: skipped %s", path, report.summary())
