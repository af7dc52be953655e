"""Replay one log file: resume from its checkpoint, then send with one producer or with lanes."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from models.schema import LogEvent
from stream.replay.checkpoint import (
    ReplayCheckpoint, check_lane_partitions, checkpoint_path, lanes_after, read_checkpoint,
    settled_in_lanes, write_checkpoint,
)
from stream.replay.lanes import replay_lanes
from stream.replay.loop import ReplaySummary, replay_events, skip_events
from stream.replay.options import FORMATS, ReplayError, ReplayOptions, lanes_apply
from stream.replay.producer import Replayer, ReplayerFactory

log = logging.getLogger("seqstream.replay")


def replay_file(opts: ReplayOptions, replayer: Replayer | ReplayerFactory) -> ReplaySummary:
    """Replay one log file with checkpoints; see the package docstring for the guarantees.

    `replayer`: a Replayer, owned by the caller (the replay then uses that one producer), or a
    factory that makes one. Several producers (`opts.producers` > 1, or a lanes checkpoint
    resumed at --speed max) need the factory: each lane makes its own after the fork, since a
    live producer (a thread, sockets) must not be forked.
    """
    if opts.fmt not in FORMATS:
        raise ReplayError(f"unknown format {opts.fmt!r}; expected one of {', '.join(FORMATS)}")
    if not opts.path.is_file():
        raise ReplayError(f"no such file: {opts.path}")
    cp_path = checkpoint_path(opts.path, opts.checkpoint)
    source = str(opts.path.resolve())
    previous = read_checkpoint(cp_path)
    position, sent_before = 0, 0
    lanes: list[int] | None = None  # per-lane positions to resume from
    if opts.resume and previous is not None:
        if previous.fmt != opts.fmt or previous.source != source:
            raise ReplayError(f"checkpoint {cp_path} is for {previous.source} ({previous.fmt}), "
                              f"not {source} ({opts.fmt})")
        if previous.prefix != opts.prefix:
            raise ReplayError(f"checkpoint {cp_path} was written with prefix {previous.prefix!r}, "
                              f"not {opts.prefix!r}")
        position, sent_before = previous.position, previous.sent
        if previous.complete:
            log.info("checkpoint %s says the replay is complete; nothing to send", cp_path)
        else:
            lanes = previous.lanes
            log.info("resuming %s at event %d%s", opts.path, position,
                     f" (lanes at {lanes})" if lanes else "")
    elif opts.resume:
        log.info("no checkpoint at %s: starting from the beginning", cp_path)
    elif previous is not None:
        log.warning("starting over; %s (position %d) will be overwritten", cp_path, previous.position)

    factory = None if isinstance(replayer, Replayer) else replayer
    n = 1
    if factory is not None and lanes_apply(opts.speed, opts.limit):
        n = opts.producers
        if lanes is not None and len(lanes) != n:
            # A partition's lane is partition % N: only the checkpoint's N keeps positions valid.
            log.info("checkpoint %s has %d lanes: resuming with that many producers, not %d",
                     cp_path, len(lanes), n)
            n = len(lanes)
    if n > 1:
        assert factory is not None
        return replay_lanes(opts, factory, lanes or [position] * n, cp_path=cp_path,
                            source=source, sent_before=sent_before,
                            partitions=previous.partitions if lanes and previous else None)

    own = factory is not None  # we make the producer, so we close it
    rep = factory() if factory is not None else replayer
    assert isinstance(rep, Replayer)
    try:
        skip = None
        if lanes is not None:
            assert previous is not None
            check_lane_partitions(cp_path, len(lanes), previous.partitions, rep.partitions)
            n_lanes, part = len(lanes), rep.partition_of
            skip = settled_in_lanes(lanes, lambda ev: part(ev.user_id) % n_lanes)
        summary = _replay_one(opts, rep, cp_path, source, position, sent_before, lanes, skip)
    finally:
        if own:
            rep.close()
    return summary


def _replay_one(opts: ReplayOptions, replayer: Replayer, cp_path: Path, source: str,
                position: int, sent_before: int, lanes: list[int] | None,
                skip: Callable[[int, LogEvent], bool] | None) -> ReplaySummary:
    """The single-producer replay from `position` (see replay_file)."""
    from models.datasets.common import BadRow, ErrorReport
    from models.datasets.reader import read_events

    errors = ErrorReport()
    already_sent = dict(replayer.sent)

    def on_checkpoint(pos: int, complete: bool) -> None:
        sent_now = sum(replayer.sent.values()) - sum(already_sent.values())
        # Resumed from lanes: lanes still ahead of `pos` keep their own (larger) positions.
        now_lanes = lanes_after(lanes, pos)
        write_checkpoint(cp_path, ReplayCheckpoint(
            source, opts.fmt, pos, sent_before + sent_now, complete, opts.prefix, lanes=now_lanes,
            partitions=replayer.partitions if now_lanes else None))

    events = skip_events(read_events(opts.path, opts.fmt, on_error=opts.on_error, errors=errors),
                         position)
    try:
        summary = replay_events(events, replayer, speed=opts.speed, from_ts=opts.from_ts,
                                to_ts=opts.to_ts, limit=opts.limit, position=position,
                                on_checkpoint=on_checkpoint,
                                checkpoint_every=opts.checkpoint_every, progress=opts.progress,
                                skip=skip)
    except BadRow as exc:  # --on-error stop: the checkpoint was written up to the bad row
        raise ReplayError(f"bad row, stopping: {exc}") from None
    summary.bad_rows = errors.count
    if errors.count:
        log.warning("%s: skipped %s", opts.path, errors.summary())
    return summary
