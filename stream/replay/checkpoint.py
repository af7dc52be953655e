"""Resume progress of a replay: the checkpoint file (FILE.replay-checkpoint.json), read and
written atomically, and what its lane positions say is settled."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from models.schema import LogEvent
from stream.replay.options import ReplayError

CHECKPOINT_SUFFIX = ".replay-checkpoint.json"


@dataclass
class ReplayCheckpoint:
    """Where a replay of `source` stands: the first `position` input events are settled.

    With several producers, `lanes[k]` is lane k's position (its events before it are settled;
    see stream/replay/lanes.py), `position` is min(lanes), and `partitions` is the partition
    count that decided which lane owns an event (a lanes checkpoint is only valid with it).
    """

    source: str
    fmt: str
    position: int
    sent: int = 0  # events sent over all runs (filtered ones are not counted)
    complete: bool = False
    prefix: str = ""
    updated_at: str = ""
    lanes: list[int] | None = None
    partitions: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def checkpoint_path(source: str | Path, explicit: str | Path | None = None) -> Path:
    return Path(explicit) if explicit else Path(f"{source}{CHECKPOINT_SUFFIX}")


def read_checkpoint(path: str | Path) -> ReplayCheckpoint | None:
    """The checkpoint at `path`, or None when there is none. A corrupt one is an error: we
    must not guess a position (duplicates or gaps)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        cp = ReplayCheckpoint(**{k: data[k] for k in ReplayCheckpoint.__dataclass_fields__
                                 if k in data})
        if not isinstance(cp.position, int) or cp.position < 0:
            raise ValueError(f"bad position {cp.position!r}")
        if cp.lanes is not None:
            if (not isinstance(cp.lanes, list) or not cp.lanes
                    or not all(isinstance(p, int) and p >= 0 for p in cp.lanes)):
                raise ValueError(f"bad lanes {cp.lanes!r}")
            if not isinstance(cp.partitions, int) or cp.partitions < 1:
                raise ValueError(f"bad partitions {cp.partitions!r}")
            if cp.position != min(cp.lanes):
                raise ValueError(f"position {cp.position} is not min(lanes) {min(cp.lanes)}")
    except (ValueError, TypeError, KeyError) as exc:
        raise ReplayError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from None
    return cp


def write_checkpoint(path: str | Path, cp: ReplayCheckpoint) -> None:
    """Atomic and durable: write a temp file, fsync, rename (a crash leaves the old or new one)."""
    path = Path(path)
    cp.updated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cp.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def settled_in_lanes(lanes: list[int], lane_of: Callable[[LogEvent], int]) -> Callable[[int, LogEvent], bool]:
    """For one producer resuming a lanes checkpoint: is event `i` settled already?

    Event i of lane k (`lane_of(ev)`) is settled iff i < lanes[k]. A predicate for
    `replay_events(skip=...)` rather than a filtering generator: replay_events counts positions
    by the events it reads, so settled events must go through it (counted, not sent)."""
    lanes = list(lanes)
    top = max(lanes)

    def settled(i: int, ev: LogEvent) -> bool:
        return i < top and i < lanes[lane_of(ev)]

    return settled


def lanes_after(lanes: list[int] | None, position: int) -> list[int] | None:
    """The lane positions once one producer has settled every event before `position`; None
    once no lane is ahead of it (the plain `position` then says it all)."""
    if lanes is None or max(lanes) <= position:
        return None
    return [max(p, position) for p in lanes]


def check_lane_partitions(cp_path: Path, n_lanes: int, expected: int | None, actual: int) -> None:
    """Lane positions are only valid for the partition count that assigned events to lanes."""
    if expected != actual:
        raise ReplayError(f"checkpoint {cp_path} was written by {n_lanes} producers over "
                          f"{expected} partitions, but the topics have {actual}; "
                          f"delete it to start over")
