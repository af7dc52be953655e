"""What a replay is asked to do: the options, the flag values they are parsed from, and the
error a replay stops with.

Every other module of the package builds on this one."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stream.events import MAX_TS_MS, MIN_TS_MS

FORMATS: tuple[str, ...] = ("taobao", "retailrocket", "rees46", "otto", "jsonl", "msgpack")
DEFAULT_CHECKPOINT_EVERY = 100_000


class ReplayError(RuntimeError):
    """A replay cannot go on; the message is one line for the operator."""


def parse_speed(text: str) -> float | None:
    """'max' -> None (as fast as possible); a positive factor -> float."""
    if text.strip().lower() == "max":
        return None
    try:
        factor = float(text)
    except ValueError:
        raise ValueError(f"speed must be 'max' or a positive number, got {text!r}") from None
    if not factor > 0 or factor == float("inf"):
        raise ValueError(f"speed must be 'max' or a positive number, got {text!r}")
    return factor


def parse_ts(text: str) -> int:
    """An event-time bound: integer ms since the epoch, or ISO 8601 (naive means UTC)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        ts = int(text)
        if not MIN_TS_MS <= ts <= MAX_TS_MS:
            raise ValueError(f"timestamp {ts} is not in ms since the epoch between 2000 and 2100 "
                             f"(seconds by mistake?)")
        return ts
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp must be ms since the epoch or ISO 8601, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def in_window(ts_ms: int, from_ts: int | None, to_ts: int | None) -> bool:
    """--from is inclusive, --to exclusive, so consecutive windows neither overlap nor gap."""
    return (from_ts is None or ts_ms >= from_ts) and (to_ts is None or ts_ms < to_ts)


@dataclass
class ReplayOptions:
    """One `seqstream replay`: the file, its format and the flags."""

    path: Path
    fmt: str
    speed: float | None = None
    prefix: str = ""
    from_ts: int | None = None
    to_ts: int | None = None
    resume: bool = False
    on_error: str = "skip"
    limit: int | None = None
    checkpoint: Path | None = None  # default: FILE.replay-checkpoint.json
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    progress: bool = True
    producers: int = 1  # lanes, for --speed max without --limit (stream/replay/lanes.py)
    # Tests only: lane k stops after sending stop_lanes_after[k] events, as if interrupted.
    stop_lanes_after: tuple[int | None, ...] | None = None


def lanes_apply(speed: float | None, limit: int | None) -> bool:
    """Several producers only at --speed max without --limit: pacing and a global limit need
    one process that sees every event in file order."""
    return speed is None and limit is None


def default_producers(speed: float | None, limit: int | None, cpus: int | None = None) -> int:
    """--producers when not given: 2 where several apply and there are 2+ CPUs, else 1."""
    cpus = os.cpu_count() if cpus is None else cpus
    return 2 if lanes_apply(speed, limit) and (cpus or 1) >= 2 else 1
