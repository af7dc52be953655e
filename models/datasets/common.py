"""What every log reader shares: bad-row reporting (`BadRow`, `ErrorReport`), strict field
parsers, and opening (possibly gzipped) files."""
from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from models.ids import BadId, Id, normalize_id


OnError = Literal["skip", "stop"]


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


class RowError(Exception):
    """Internal: a reason why one row is bad; converted to BadRow/ErrorReport by the reader."""


# --------------------------------------------------------------------------- field parsers


def parse_int(value: Any, name: str) -> int:
    """Strict integer: accepts ints, integral floats and decimal strings; rejects bools."""
    if isinstance(value, bool):
        raise RowError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RowError(f"{name} must be an integer, got {value!r}")


def parse_opt_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    return parse_int(value, name)


def parse_id(value: Any, name: str) -> Id:
    """A user/item/category id, normalised as on the wire (models/ids.py: an int, or a string of
    at most 128 UTF-8 bytes; a canonical decimal string is that int). Files are a little more
    lenient than the wire, as before string ids: surrounding whitespace is stripped (CSV
    padding) and an integral float (a JSON 5.0) is that integer."""
    if isinstance(value, str):
        value = value.strip()
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return normalize_id(value, name)
    except BadId as bad:
        raise RowError(str(bad)) from None


def parse_opt_id(value: Any, name: str) -> Id | None:
    if value is None or value == "":
        return None
    return parse_id(value, name)


def open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def header_index(header: list[str], required: tuple[str, ...], path: Path) -> dict[str, int]:
    """Column positions by name, so column order does not matter. A wrong header is a file
    error, not a row error: it always raises."""
    names = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}:1: header {header!r} lacks column(s) {missing}")
    return {c: names.index(c) for c in names}


def csv_with_header(path: Path, columns: tuple[str, ...]
                     ) -> Iterator[tuple[Any, int, dict[str, int], list[str], int]]:
    """Rows of a CSV with a required header: (reader, row, column index, fields, header width).
    Blank lines are skipped and use no row index; the caller checks the width (a bad row)."""
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        col = header_index(header, columns, path)
        width = len(header)
        row = -1
        for rec in reader:
            if not rec:
                continue
            row += 1
            yield reader, row, col, rec, width
