"""Several producers for `seqstream replay --speed max`: lanes.

Why: kafka-python spends about 20 µs of Python per send, so one producer process tops out near
45k events/s however fast the broker is. Lanes spread the sends over processes.

Lanes. With N producers there are N lanes. Lane k is a forked child process with its own
Replayer (its own KafkaProducer); it reads the whole file with the same reader and sends only the
events whose partition p (`Replayer.partition_of(user_id)`, the default partitioner's) has
p % N == k. A partition belongs to exactly one lane and a lane sends its events in file order, so
each user's events stay in order within each topic, exactly as with one producer.

Positions. An event's index is its place in the whole input stream as `read_events` yields it,
all lanes' events counted. Lane k's position P means: every event *of lane k* with index < P is
settled (sent and acknowledged after a flush, or filtered out by --from/--to); it says nothing
about the other lanes' events. Lanes advance at their own pace, so the checkpoint keeps one
position per lane (`ReplayCheckpoint.lanes`) and `position` = min(lanes): every event before it is
settled whatever its lane, the safe answer for a reader that knows nothing of lanes.

Resuming. Lane k skips the first lanes[k] events of the stream and goes on from there: its own
events before lanes[k] are settled, the others are not its business. The lane count comes from
the checkpoint (an event's lane depends on it), and the partition count must match the one the
checkpoint was written with. One producer resuming a lanes checkpoint (a paced speed, --limit)
skips event i of lane k iff i < lanes[k] (`checkpoint.settled_in_lanes`).

Checkpoints. A lane flushes its producer, then reports its position to the parent over a pipe;
only the parent writes the checkpoint file (atomically, `checkpoint.write_checkpoint`). Each lane
checkpoints every checkpoint_every / N of its own sends, so the file is written about as often
as with one producer.

Stopping. Lanes ignore SIGINT: Ctrl-C reaches the whole process group, and a lane must stop once,
cleanly, not abort on the second copy. The parent turns its first SIGINT (from the group or to
it alone) into one SIGUSR1 per lane, on which a lane stops as one producer does on Ctrl-C: flush,
final checkpoint, summary. A second Ctrl-C terminates the lanes (the last checkpoint stands).
A lane that fails (a failed send, no broker, missing topics) or dies makes the parent stop the
others as on Ctrl-C (terminating any that have not stopped within WIND_DOWN_S) and raise one
ReplayError line. With --on-error stop every lane stops at the same bad
row (they all read every row), so the checkpoint ends just before it, as with one producer.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from models.schema import ACTIONS
from stream.replay.checkpoint import ReplayCheckpoint, check_lane_partitions, write_checkpoint
from stream.replay.loop import ReplaySummary, iso, replay_events, skip_events
from stream.replay.options import ReplayError, ReplayOptions
from stream.replay.producer import ReplayerFactory

log = logging.getLogger("seqstream.replay")

STOP_SIGNAL = signal.SIGUSR1  # parent -> lane: stop cleanly
WIND_DOWN_S = 15.0  # after one lane failed, how long the others get to flush and checkpoint


class _LaneStop:
    """A lane's stop flag (`replay_events(stop_flag=...)`), set by the parent's SIGUSR1.

    The handler is installed in the parent just before the fork, so a lane has it from its
    first instruction: an early stop request is neither lost nor fatal (SIGUSR1's default)."""

    stop = False

    def handle(self, signum: int, frame: Any) -> None:
        self.stop = True


_LANE_STOP = _LaneStop()


@dataclass(frozen=True)
class LaneTask:
    """What lane `lane` of `lanes` needs; inherited through the fork, never pickled."""

    lane: int
    lanes: int
    start: int  # the lane's position: where it resumes
    opts: ReplayOptions
    make_replayer: ReplayerFactory
    checkpoint_every: int  # this lane's sends between checkpoints
    cp_path: Path
    partitions: int | None  # the resumed checkpoint's partition count, checked; None when fresh
    limit: int | None = None  # tests: stop after this many sends


@dataclass
class LaneResult:
    """A lane's summary, sent to the parent when it ends normally (done, stopped or at limit)."""

    lane: int
    start: int
    sent: dict[str, int]
    filtered: int
    position: int
    interrupted: bool
    complete: bool
    t0: float  # time.monotonic(): comparable across processes on one host
    t1: float
    bad_rows: int = 0
    bad_messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- a lane (child)


def _lane_main(task: LaneTask, conn: Connection, inherited: list[Connection]) -> None:
    """Runs in lane `task.lane`'s process: replay its share and report over `conn`.

    Messages, in order: ("ready", k, partitions), then ("progress", k, n_sent, ts_ms) and
    ("checkpoint", k, position, sent, complete), then one of ("done", k, LaneResult),
    ("badrow", k, message) or ("error", k, message)."""
    from models.datasets.common import BadRow, ErrorReport
    from models.datasets.reader import read_events

    # Close the pipe ends this lane inherited but does not own: the parent must see EOF when a
    # lane dies, and a lane must get EPIPE (not block) when the parent is gone.
    for c in inherited:
        c.close()
    k, opts = task.lane, task.opts

    def report(*msg: Any) -> None:
        try:
            conn.send(msg)
        except OSError:  # the parent is gone: nobody to tell
            pass

    replayer = None
    try:
        replayer = task.make_replayer()
        if task.partitions is not None:
            check_lane_partitions(task.cp_path, task.lanes, task.partitions, replayer.partitions)
        conn.send(("ready", k, replayer.partitions))
        errors = ErrorReport()
        events = skip_events(read_events(opts.path, opts.fmt, on_error=opts.on_error,
                                         errors=errors), task.start)
        part, n, sent = replayer.partition_of, task.lanes, replayer.sent

        def on_checkpoint(position: int, complete: bool) -> None:  # after a successful flush
            conn.send(("checkpoint", k, position, sum(sent.values()), complete))

        def on_progress(n_sent: int, ts_ms: int) -> None:
            conn.send(("progress", k, n_sent, ts_ms))

        t0 = time.monotonic()
        s = replay_events(events, replayer, from_ts=opts.from_ts, to_ts=opts.to_ts,
                          limit=task.limit, position=task.start, on_checkpoint=on_checkpoint,
                          checkpoint_every=task.checkpoint_every, progress=False,
                          skip=lambda i, ev: part(ev.user_id) % n != k,
                          on_progress=on_progress, stop_flag=_LANE_STOP)
        conn.send(("done", k, LaneResult(k, task.start, s.sent, s.filtered, s.position,
                                         s.interrupted, s.complete, t0, time.monotonic(),
                                         errors.count, errors.messages)))
    except BadRow as exc:  # --on-error stop: replay_events checkpointed up to the bad row
        report("badrow", k, str(exc))
    except ReplayError as exc:
        report("error", k, str(exc))
    except OSError as exc:
        if not isinstance(exc, BrokenPipeError):  # a broken pipe: the parent is gone
            report("error", k, f"producer lane {k}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug: still one line for the operator
        log.debug("lane %d failed", k, exc_info=True)
        report("error", k, f"producer lane {k}: {type(exc).__name__}: {exc}")
    finally:
        if replayer is not None:
            replayer.close()
        conn.close()


# --------------------------------------------------------------------------- the parent


class _ParentInterrupt:
    """The parent's SIGINT handler: the first asks every running lane to stop, a second aborts."""

    def __init__(self, procs: list[Any], exited: set[int]) -> None:
        self.procs = procs
        self.exited = exited  # lanes already reaped: their pids may be reused
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        for k, p in enumerate(self.procs):
            if k not in self.exited and p.pid is not None:
                try:
                    os.kill(p.pid, STOP_SIGNAL)
                except ProcessLookupError:
                    pass


@dataclass
class _Lanes:
    """The parent's view of the lanes: positions, settled sends, outcome; writes checkpoints."""

    opts: ReplayOptions
    cp_path: Path
    source: str
    sent_before: int
    positions: list[int]
    partitions: int | None
    sent: list[int] = field(default_factory=list)  # settled sends per lane, this run
    complete: list[bool] = field(default_factory=list)
    results: dict[int, LaneResult] = field(default_factory=dict)
    bad_rows: dict[int, str] = field(default_factory=dict)
    failure: str | None = None
    lane_ts: dict[int, int] = field(default_factory=dict)
    bar: Any = None

    def __post_init__(self) -> None:
        self.sent = [0] * len(self.positions)
        self.complete = [False] * len(self.positions)

    def ended(self, k: int) -> bool:
        return k in self.results or k in self.bad_rows

    def handle(self, msg: tuple) -> None:
        kind, k = msg[0], msg[1]
        if kind == "progress":
            self.bar.update(msg[2])
            self.lane_ts[k] = msg[3]
            self.bar.set_postfix_str(iso(min(self.lane_ts.values())), refresh=False)
        elif kind == "checkpoint":
            self.positions[k], self.sent[k], self.complete[k] = msg[2], msg[3], msg[4]
            self.write_checkpoint()
        elif kind == "ready":
            if self.partitions is None:
                self.partitions = msg[2]
                if msg[2] < len(self.positions):
                    log.warning("%d producers for %d partitions: %d of them have nothing to send",
                                len(self.positions), msg[2], len(self.positions) - msg[2])
            elif msg[2] != self.partitions:  # topics re-created while starting: no safe lanes
                self.fail(f"producer lanes see {self.partitions} and {msg[2]} partitions")
        elif kind == "done":
            self.results[k] = msg[2]
        elif kind == "badrow":
            self.bad_rows[k] = msg[2]
        elif kind == "error":
            self.fail(msg[2])

    def fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message

    def write_checkpoint(self) -> None:
        write_checkpoint(self.cp_path, ReplayCheckpoint(
            self.source, self.opts.fmt, min(self.positions), self.sent_before + sum(self.sent),
            all(self.complete), self.opts.prefix, lanes=list(self.positions),
            partitions=self.partitions))

    def drain(self, conn: Connection) -> bool:
        """Handle what `conn` holds; False at EOF (the lane closed its end)."""
        try:
            while conn.poll():
                self.handle(conn.recv())
        except (EOFError, OSError):
            return False
        return True


def _fork_lanes(tasks: list[LaneTask], pipes: list[tuple[Connection, Connection]]) -> list[Any]:
    """Start one process per task. The lanes inherit SIGINT ignored and SIGUSR1 -> stop flag
    (see the module docstring); the parent's own handlers are restored before it returns."""
    ctx = multiprocessing.get_context("fork")
    in_main = threading.current_thread() is threading.main_thread()
    old: dict[int, Any] = {}
    if in_main:  # signal handlers can only be set there; elsewhere lanes keep the defaults
        old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
               STOP_SIGNAL: signal.signal(STOP_SIGNAL, _LANE_STOP.handle)}
    _LANE_STOP.stop = False
    procs: list[Any] = []
    try:
        for task, (_, writer) in zip(tasks, pipes):
            inherited = [c for pair in pipes for c in pair if c is not writer]
            p = ctx.Process(target=_lane_main, args=(task, writer, inherited), daemon=True,
                            name=f"seqstream-replay-lane-{task.lane}")
            p.start()
            procs.append(p)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for _, writer in pipes:  # the lanes hold the write ends now
            writer.close()
    return procs


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def replay_lanes(opts: ReplayOptions, make_replayer: ReplayerFactory, starts: list[int], *,
                 cp_path: Path, source: str, sent_before: int = 0,
                 partitions: int | None = None) -> ReplaySummary:
    """Replay `opts.path` with len(starts) lanes, lane k resuming at starts[k].

    Called by `file.replay_file` (which reads the checkpoint). `partitions`: the resumed
    checkpoint's partition count, which the lanes check; None for a fresh start."""
    from tqdm import tqdm

    from models.datasets.common import ErrorReport

    n = len(starts)
    every = max(1, -(-opts.checkpoint_every // n))
    limits = list(opts.stop_lanes_after or ())
    limits += [None] * (n - len(limits))
    tasks = [LaneTask(k, n, starts[k], opts, make_replayer, every, cp_path, partitions, limits[k])
             for k in range(n)]
    state = _Lanes(opts, cp_path, source, sent_before, list(starts), partitions)
    pipes = [multiprocessing.get_context("fork").Pipe(duplex=False) for _ in range(n)]
    procs = _fork_lanes(tasks, pipes)
    exited: set[int] = set()
    interrupt = _ParentInterrupt(procs, exited)
    in_main = threading.current_thread() is threading.main_thread()
    old_int = signal.signal(signal.SIGINT, interrupt) if in_main else None
    conns = {reader: k for k, (reader, _) in enumerate(pipes)}
    sentinels = {p.sentinel: k for k, p in enumerate(procs)}
    state.bar = tqdm(total=None, unit="ev", unit_scale=True, file=sys.stderr,
                     disable=not opts.progress, dynamic_ncols=True, smoothing=0.1, mininterval=0.5)
    def serve(timeout: float) -> None:
        """Handle the lanes' messages and exits for up to `timeout` seconds."""
        ready = wait([*conns, *sentinels], timeout=timeout)
        for obj in ready:
            if obj in conns and not state.drain(obj):  # type: ignore[arg-type]
                del conns[obj]  # type: ignore[arg-type]
        for obj in ready:
            if obj not in sentinels:
                continue
            k = sentinels.pop(obj)  # type: ignore[arg-type]
            exited.add(k)  # before join reaps it, so a Ctrl-C never signals a reused pid
            procs[k].join()
            reader = pipes[k][0]
            if reader in conns:  # what it wrote before exiting is still in the pipe
                state.drain(reader)
                del conns[reader]
            if not state.ended(k):
                state.fail(f"producer lane {k} died ({_describe_exit(procs[k].exitcode)}); "
                           f"the last checkpoint stands")

    try:
        while sentinels and state.failure is None:
            serve(1.0)
        if state.failure is not None and sentinels:
            # One lane failed: the others stop as on Ctrl-C (flush, final checkpoint), so a
            # resume repeats only the failed lane's unconfirmed sends. Bounded: a lane that
            # cannot flush (broker gone) is terminated below.
            interrupt(signal.SIGINT, None)
            deadline = time.monotonic() + WIND_DOWN_S
            while sentinels and time.monotonic() < deadline:
                serve(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        state.bar.close()
        if in_main:
            signal.signal(signal.SIGINT, old_int)
        alive = [p for k, p in enumerate(procs) if k not in exited]
        for p in alive:  # a failure or a second Ctrl-C: stop the others now, no flush
            p.terminate()
        for p in alive:
            p.join(timeout=10)
            if p.exitcode is None:
                p.kill()
                p.join()
        for reader, _ in pipes:
            reader.close()
    if state.failure is not None:
        raise ReplayError(state.failure)
    if state.bad_rows:
        raise ReplayError(f"bad row, stopping: {state.bad_rows[min(state.bad_rows)]}")

    results = [state.results[k] for k in range(n)]
    # Every lane reads every row, so each counts the same bad rows: report them once, from the
    # lane that read furthest.
    seen = max(results, key=lambda r: (r.bad_rows, -r.lane))
    if seen.bad_rows:
        errors = ErrorReport(count=seen.bad_rows, messages=seen.bad_messages)
        log.warning("%s: skipped %s", opts.path, errors.summary())
    return ReplaySummary(
        sent={a: sum(r.sent[a] for r in results) for a in ACTIONS},
        filtered=sum(r.filtered for r in results),  # a lane filters only its own events
        resumed_from=min(starts),
        position=min(r.position for r in results),
        bad_rows=seen.bad_rows,
        elapsed_s=max(r.t1 for r in results) - min(r.t0 for r in results),
        interrupted=interrupt.count > 0 or any(r.interrupted for r in results),
        complete=all(r.complete for r in results),
        producers=n,
    )
