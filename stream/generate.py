"""A synthetic log (models.synthetic) to a file (.jsonl or .msgpack) and/or straight to the input
topics, for `seqstream generate`.

The ground truth (churners, their last event time, drift time, trending items) goes to
FILE.truth.json beside the log (or to --truth when only --to-kafka is given).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from models.schema import LogEvent
from models.synthetic import SyntheticLog
from stream.replay.loop import ReplaySummary, replay_events
from stream.replay.producer import Replayer

WRITERS = (".jsonl", ".msgpack")


def _progress(events: Iterable[LogEvent], total: int, desc: str, enabled: bool) -> Iterator[LogEvent]:
    from tqdm import tqdm

    with tqdm(total=total, unit="ev", unit_scale=True, desc=desc, file=sys.stderr,
              disable=not enabled, mininterval=0.5) as bar:
        pending = 0
        for ev in events:
            yield ev
            pending += 1
            if pending == 8192:  # per-event bar updates would cost more than the writing
                bar.update(pending)
                pending = 0
        bar.update(pending)


def truth_path(out: Path) -> Path:
    return out.with_name(out.name + ".truth.json")


def write_log(log: SyntheticLog, out: Path, progress: bool) -> int:
    """Write the log's events to `out` (.jsonl or .msgpack); the number written."""
    from models.datasets.dump import write_jsonl, write_msgpack

    writer = write_jsonl if out.suffix == ".jsonl" else write_msgpack
    return writer(_progress(log.events(), len(log), "write", progress), out)


def send_log(log: SyntheticLog, bootstrap: str, prefix: str, progress: bool,
             options: dict | None = None) -> ReplaySummary:
    """Produce the log's events to the input topics at max speed (one producer, file order);
    `options`: the cluster's security options (stream.kafka.kafka_client_options)."""
    replayer = Replayer(bootstrap, prefix=prefix, options=dict(options or {}))
    try:
        return replay_events(log.events(), replayer, progress=progress, total=len(log))
    finally:
        replayer.close()
