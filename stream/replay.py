"""`seqstream replay`: historical logs -> the input topics (kafka-python producer).

Every event goes to `input_topic(action, prefix)`, keyed by `user_key(user_id)`, with value
`encode_value(ev)`, in file order. Kafka keeps order per partition only; the three input topics
are co-partitioned and keyed by user, so each user's events stay in order *within* each topic.
Order across topics is the worker's job (it orders by event time). The producer is idempotent
(acks=all), which keeps per-partition order even with several requests in flight and retries.

Pacing: `--speed max` sends as fast as the broker takes it; `--speed F` paces by event time so
that (ts - ts0) / F ~= wall time elapsed (F=60: an hour of log per minute).

Resuming: a checkpoint file (default FILE.replay-checkpoint.json) records `position`, the number
of input events (as `read_events` yields them, in file order) that are settled: sent and
acknowledged, or filtered out by --from/--to. It is written only after `producer.flush()` has
returned with no failed send, so everything before `position` is durably in Kafka and nothing
after it has been counted. `--resume` skips exactly `position` events: no duplicates and
nothing missed. Checkpoints are written every `--checkpoint-every` events, at the end, and on
Ctrl-C (the first Ctrl-C stops cleanly after flushing; a second one aborts).

Several producers (`--producers N`, `--speed max` only): N lanes, forked processes, each
sending the events of the partitions p with p % N == k (stream/replay_lanes.py). Lanes advance
at their own pace, so the checkpoint also keeps one position per lane (`lanes`): lane k's events
before lanes[k] are settled, and `position` = min(lanes) stays a safe answer for a reader that
knows nothing of lanes. A lanes checkpoint resumes each lane from its own position, with the
checkpoint's lane count; one producer (a paced speed, --limit) resuming it skips exactly the
settled events (`settled_in_lanes`). The same guarantee holds: no duplicates, nothing missed.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.schema import ACTIONS, LogEvent
from stream.events import MAX_TS_MS, MIN_TS_MS, encode_value, input_topic, user_key

log = logging.getLogger("seqstream.replay")

FORMATS: tuple[str, ...] = ("taobao", "retailrocket", "rees46", "otto", "jsonl", "msgpack")
DEFAULT_CHECKPOINT_EVERY = 100_000
CHECKPOINT_SUFFIX = ".replay-checkpoint.json"


class ReplayError(RuntimeError):
    """A replay cannot go on; the message is one line for the operator."""


# --------------------------------------------------------------------------- pure helpers


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


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def in_window(ts_ms: int, from_ts: int | None, to_ts: int | None) -> bool:
    """--from is inclusive, --to exclusive, so consecutive windows neither overlap nor gap."""
    return (from_ts is None or ts_ms >= from_ts) and (to_ts is None or ts_ms < to_ts)


def pacing_delay(ts_ms: int, ts0_ms: int, factor: float, elapsed_s: float) -> float:
    """Seconds to wait before sending an event at `ts_ms`, given that the first paced event
    (at `ts0_ms`) went out `elapsed_s` ago. Never negative: a late event goes at once, and a
    log that is not time-sorted (events before ts0) does not stall."""
    due_s = (ts_ms - ts0_ms) / 1000.0 / factor
    return max(0.0, due_s - elapsed_s)


@dataclass
class Pacer:
    """Sleeps so that event time advances `factor` times faster than wall time."""

    factor: float | None  # None: no pacing
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    min_sleep_s: float = 0.002  # shorter waits are not worth a syscall
    ts0_ms: int | None = None
    wall0: float = 0.0

    def wait(self, ts_ms: int) -> float:
        if self.factor is None:
            return 0.0
        if self.ts0_ms is None:
            self.ts0_ms, self.wall0 = ts_ms, self.clock()
            return 0.0
        delay = pacing_delay(ts_ms, self.ts0_ms, self.factor, self.clock() - self.wall0)
        if delay >= self.min_sleep_s:
            self.sleep(delay)
            return delay
        return 0.0


@dataclass
class Checkpoint:
    """Where a replay of `source` stands: the first `position` input events are settled.

    With several producers, `lanes[k]` is lane k's position (its events before it are settled;
    see stream/replay_lanes.py), `position` is min(lanes), and `partitions` is the partition
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


def read_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when there is none. A corrupt one is an error: we
    must not guess a position (duplicates or gaps)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        cp = Checkpoint(**{k: data[k] for k in Checkpoint.__dataclass_fields__ if k in data})
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


def write_checkpoint(path: str | Path, cp: Checkpoint) -> None:
    """Atomic and durable: write a temp file, fsync, rename (a crash leaves the old or new one)."""
    path = Path(path)
    cp.updated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cp.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def skip_events(events: Iterable[LogEvent], n: int) -> Iterator[LogEvent]:
    """Drop the first n events (the resumed ones)."""
    it = iter(events)
    if n:
        next(itertools.islice(it, n, n), None)
    return it


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


# --------------------------------------------------------------------------- producer


def default_producer_config() -> dict[str, Any]:
    """Tuned for throughput with order kept (measured with bench/bench_replay.py).

    Idempotence with acks=all keeps per-partition order with several requests in flight and
    survives retries without duplicates; big batches and a short linger amortise kafka-python's
    per-request cost. lz4 when the `lz4` module is installed (it needs it), else none."""
    from kafka.codec import has_lz4

    return {
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        # Missing topics are an operator error (wrong partition count if auto-created).
        "allow_auto_create_topics": False,
        "metrics_enabled": False,  # per-record sensors cost real time in pure Python
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": "lz4" if has_lz4() else None,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_block_ms": 30_000,
        "bootstrap_timeout_ms": 10_000,
        "client_id": "seqstream-replay",
    }


def use_native_crc32c() -> str:
    """Give kafka-python a native CRC-32C; returns which implementation is in use.

    kafka-python checksums every record batch with CRC-32C. Without the optional `crc32c`
    package it falls back to a pure-Python loop (~4.5 MB/s), which alone caps a replay at
    ~20k events/s. aiokafka (a faust dependency, so always installed with seqstream) ships a
    Cython CRC-32C (~2 GB/s): when kafka-python has no native one, point its record-batch
    builder at aiokafka's, after checking both agree. Installing `crc32c` makes this a no-op.
    """
    from kafka.record import default_records, util

    if getattr(util, "crc32c_c", None) is not None:
        return "crc32c"
    if getattr(default_records, "calc_crc32c", None) is not util.calc_crc32c:
        return "patched"  # done already (or someone else's choice): leave it
    try:
        from aiokafka.record._crecords import crc32c_cython  # type: ignore[import-not-found]
    except ImportError:
        return "pure-python"
    sample = bytes(range(256)) * 9 + b"seqstream"
    if crc32c_cython(sample) != util.calc_crc32c(memoryview(sample)):
        log.warning("aiokafka's crc32c disagrees with kafka-python's; keeping the slow one")
        return "pure-python"
    default_records.calc_crc32c = crc32c_cython
    return "patched"


def _murmur2_partition(key: bytes, n: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n


@dataclass
class Replayer:
    """Holds the producer; `send(ev)` routes one LogEvent to its input topic.

    The partition is computed here (the default partitioner's murmur2, cached per user) because
    kafka-python's pure-Python murmur2 on every send would cost more than the send itself;
    the result is identical to what the default partitioner (Java, aiokafka, faust) picks.
    """

    bootstrap: str
    prefix: str = ""
    producer_config: dict[str, Any] = field(default_factory=dict)
    producer: Any = None  # a KafkaProducer (or a test double with send/flush/close/partitions_for)
    sent: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ACTIONS})
    failed: int = 0
    first_error: BaseException | None = None

    def __post_init__(self) -> None:
        self._topics = {a: input_topic(a, self.prefix) for a in ACTIONS}
        if self.producer is None:
            use_native_crc32c()
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            config = {**default_producer_config(), **self.producer_config}
            # A broker that is down makes kafka-python log every retry at ERROR; the operator
            # gets our one line instead.
            kafka_log = logging.getLogger("kafka")
            level = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)
            try:
                self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, **config)
            except KafkaError as exc:  # NoBrokersAvailable in 2.x, KafkaConnectionError in 3.x
                raise ReplayError(f"no Kafka broker answers at {self.bootstrap} "
                                  f"({type(exc).__name__})") from None
            finally:
                kafka_log.setLevel(level)
        self._n_partitions = self._check_topics()
        self._partition_cache: dict[int, int] = {}

    def _check_topics(self) -> int:
        counts = {}
        for topic in self._topics.values():
            try:
                parts = self.producer.partitions_for(topic)
            except Exception as exc:  # KafkaTimeoutError when the topic does not exist
                raise ReplayError(f"input topic {topic!r} is not available on {self.bootstrap} "
                                  f"({type(exc).__name__}); create it: seqstream topics create") from None
            if not parts:
                raise ReplayError(f"input topic {topic!r} does not exist on {self.bootstrap}; "
                                  f"create it: seqstream topics create")
            counts[topic] = len(parts)
        if len(set(counts.values())) != 1:
            raise ReplayError(f"input topics are not co-partitioned: {counts}")
        return next(iter(counts.values()))

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = exc

    @property
    def partitions(self) -> int:
        """Partitions of each input topic (they are co-partitioned)."""
        return self._n_partitions

    def partition_of(self, user_id: int) -> int:
        """The partition of `user_id`'s events (what `send` picks; cached per user)."""
        part = self._partition_cache.get(user_id)
        if part is None:
            if len(self._partition_cache) > 1_000_000:
                self._partition_cache.clear()
            part = self._partition_cache[user_id] = _murmur2_partition(user_key(user_id),
                                                                       self._n_partitions)
        return part

    def send(self, ev: LogEvent) -> None:
        # partition_of inlined: this runs once per event, and a call costs ~5% of a send.
        key = user_key(ev.user_id)
        part = self._partition_cache.get(ev.user_id)
        if part is None:
            if len(self._partition_cache) > 1_000_000:  # bounded memory on huge user counts
                self._partition_cache.clear()
            part = self._partition_cache[ev.user_id] = _murmur2_partition(key, self._n_partitions)
        future = self.producer.send(self._topics[ev.action], value=encode_value(ev), key=key,
                                    partition=part, timestamp_ms=ev.ts_ms)
        future.add_errback(self._on_error)
        self.sent[ev.action] += 1

    def flush(self) -> None:
        """Block until everything sent is acknowledged; raise if any send failed."""
        self.producer.flush()
        if self.failed:
            raise ReplayError(f"{self.failed} event(s) were not delivered: "
                              f"{type(self.first_error).__name__}: {self.first_error}")

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception:  # closing must not mask the real outcome
            log.debug("producer close failed", exc_info=True)


# --------------------------------------------------------------------------- the loop


@dataclass
class ReplaySummary:
    sent: dict[str, int]
    filtered: int = 0  # outside --from/--to
    resumed_from: int = 0  # input events skipped because a checkpoint had them
    position: int = 0  # input events settled after this run (what the checkpoint says)
    bad_rows: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    complete: bool = False  # the input was read to its end
    producers: int = 1

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def events_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        per = ", ".join(f"{a} {n}" for a, n in self.sent.items())
        state = "interrupted" if self.interrupted else ("done" if self.complete else "stopped at limit")
        return (f"{state}: sent {self.total} events ({per}) in {self.elapsed_s:.1f}s, "
                f"{self.events_per_s:,.0f} events/s; filtered {self.filtered}, bad rows "
                f"{self.bad_rows}; position {self.position}"
                + (f" (resumed from {self.resumed_from})" if self.resumed_from else "")
                + (f"; {self.producers} producers" if self.producers > 1 else ""))


class _StopFlag:
    """First Ctrl-C asks the loop to stop cleanly (flush + checkpoint); a second one aborts."""

    def __init__(self) -> None:
        self.stop = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling, Ctrl-C is not ours
            self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class _restore_switch:
    def __init__(self, value: float) -> None:
        self.value = value

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        sys.setswitchinterval(self.value)


def replay_events(
    events: Iterable[LogEvent],
    replayer: Replayer,
    *,
    speed: float | None = None,
    from_ts: int | None = None,
    to_ts: int | None = None,
    limit: int | None = None,
    position: int = 0,
    on_checkpoint: Callable[[int, bool], None] | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    progress: bool = True,
    total: int | None = None,
    pacer: Pacer | None = None,
    skip: Callable[[int, LogEvent], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop_flag: Any = None,
) -> ReplaySummary:
    """Send `events` (already positioned: the first `position` are skipped by the caller).

    `on_checkpoint(position, complete)` is called after a successful flush, every
    `checkpoint_every` sent events, at the end and on Ctrl-C. `limit` caps events sent.
    `skip(index, ev)` true: the event is settled without being sent (another lane's, or one a
    previous run with lanes settled); it counts towards `position`, not as filtered.
    `on_progress(n_sent, ts_ms)` gets the events sent since its last call, every 4096 and at
    the end. `stop_flag`: an object whose `.stop` someone else sets (a lane's signal handler);
    by default Ctrl-C sets it.
    """
    from tqdm import tqdm

    pacer = pacer or Pacer(speed)
    start_pos = position
    filtered = 0
    n_sent = 0
    complete = False
    bar = tqdm(total=total, unit="ev", unit_scale=True, file=sys.stderr, disable=not progress,
               dynamic_ncols=True, smoothing=0.1, mininterval=0.5)
    t0 = time.perf_counter()
    pending = 0  # sent since the bar was last updated
    next_cp = checkpoint_every
    send = replayer.send
    sent_before = dict(replayer.sent)
    # kafka-python's sender thread and this loop share the GIL; each time the producer wakes
    # the sender (a socket write) this thread waits up to the switch interval (5 ms by default)
    # to get the GIL back. 1 ms: measured ~1.5x events/s on 2 cores (bench/bench_replay.py).
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(min(old_switch, 0.001))
    stopper = _StopFlag() if stop_flag is None else contextlib.nullcontext(stop_flag)
    last_ts = 0
    with stopper as flag, _restore_switch(old_switch):
        it = iter(events)
        try:
            while True:
                if flag.stop or (limit is not None and n_sent >= limit):
                    break
                ev = next(it, None)
                if ev is None:
                    complete = True
                    break
                if skip is not None and skip(position, ev):
                    position += 1
                    continue
                if (from_ts is not None or to_ts is not None) and not in_window(ev.ts_ms, from_ts, to_ts):
                    filtered += 1
                    position += 1
                    continue
                if pacer.factor is not None:
                    pacer.wait(ev.ts_ms)
                send(ev)
                n_sent += 1
                position += 1  # only after send returned: the checkpoint never runs ahead
                pending += 1
                if pending >= 4096:
                    bar.update(pending)
                    bar.set_postfix_str(iso(ev.ts_ms), refresh=False)
                    if on_progress is not None:
                        on_progress(pending, ev.ts_ms)
                    last_ts = ev.ts_ms
                    pending = 0
                if n_sent >= next_cp and on_checkpoint is not None:
                    replayer.flush()
                    on_checkpoint(position, False)
                    next_cp += checkpoint_every
        except KeyboardInterrupt:
            # A second Ctrl-C: abort without a checkpoint (a send may have been cut in half);
            # the last good checkpoint stands, so a resume may repeat at most a few events.
            bar.close()
            raise
        except BaseException:
            # E.g. a bad row with --on-error stop: everything before it is settled.
            bar.close()
            replayer.flush()
            if on_checkpoint is not None:
                on_checkpoint(position, False)
            raise
        bar.update(pending)
        bar.close()
        if on_progress is not None and pending:
            on_progress(pending, last_ts)
        # Flush what was sent; checkpoint only if every send succeeded (flush raises otherwise,
        # and the last good checkpoint stands).
        replayer.flush()
        if on_checkpoint is not None:
            on_checkpoint(position, complete)
    elapsed = time.perf_counter() - t0
    sent = {a: replayer.sent[a] - sent_before[a] for a in ACTIONS}
    return ReplaySummary(sent=sent, filtered=filtered, resumed_from=start_pos,
                         position=position, elapsed_s=elapsed, interrupted=flag.stop,
                         complete=complete)


ReplayerFactory = Callable[[], Replayer]


@dataclass
class ReplayOptions:
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
    producers: int = 1  # lanes, for --speed max without --limit (stream/replay_lanes.py)
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


def check_lane_partitions(cp_path: Path, n_lanes: int, expected: int | None, actual: int) -> None:
    """Lane positions are only valid for the partition count that assigned events to lanes."""
    if expected != actual:
        raise ReplayError(f"checkpoint {cp_path} was written by {n_lanes} producers over "
                          f"{expected} partitions, but the topics have {actual}; "
                          f"delete it to start over")


def replay_file(opts: ReplayOptions, replayer: Replayer | ReplayerFactory) -> ReplaySummary:
    """Replay one log file with checkpoints; see the module docstring for the guarantees.

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
        from stream.replay_lanes import replay_lanes

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
    from models.datasets import BadRow, ErrorReport, read_events

    errors = ErrorReport()
    already_sent = dict(replayer.sent)

    def on_checkpoint(pos: int, complete: bool) -> None:
        sent_now = sum(replayer.sent.values()) - sum(already_sent.values())
        # Resumed from lanes: lanes still ahead of `pos` keep their own (larger) positions.
        now_lanes = lanes_after(lanes, pos)
        write_checkpoint(cp_path, Checkpoint(source, opts.fmt, pos, sent_before + sent_now,
                                             complete, opts.prefix, lanes=now_lanes,
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


# --------------------------------------------------------------------------- CLI


def resolve_bootstrap(explicit: str | None) -> str:
    """--bootstrap, else env SEQSTREAM_BROKER, else the running embedded broker."""
    if explicit:
        return explicit
    env = os.environ.get("SEQSTREAM_BROKER")
    if env:
        return env
    try:
        from stream import broker

        return broker.resolve_bootstrap()
    except ImportError as exc:
        raise ReplayError(f"no --bootstrap or SEQSTREAM_BROKER, and no embedded broker ({exc})") from None
    except RuntimeError as exc:  # BrokerError: its first line says why
        raise ReplayError(f"embedded broker: {str(exc).splitlines()[0]}") from None


def add_kafka_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=os.environ.get("SEQSTREAM_PREFIX", ""),
                   help="prepended verbatim to the topic names (env SEQSTREAM_PREFIX)")
    p.add_argument("--bootstrap", "--broker", dest="bootstrap", default=None,
                   help="Kafka bootstrap host:port (env SEQSTREAM_BROKER; default: the embedded broker)")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = fn.__name__
    return parse


def add_cli(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a historical log into the input topics")
    p.add_argument("file", type=Path, help="the log file (.gz is read on the fly)")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS)
    p.add_argument("--speed", type=_type(parse_speed), default=None,
                   help="'max' (default) or an event-time speed-up factor, e.g. 60")
    p.add_argument("--from", dest="from_ts", type=_type(parse_ts), default=None,
                   help="first event time to send (ms since epoch or ISO 8601, inclusive)")
    p.add_argument("--to", dest="to_ts", type=_type(parse_ts), default=None,
                   help="event time to stop at (exclusive)")
    p.add_argument("--resume", action="store_true", help="continue after the checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint file (default FILE{CHECKPOINT_SUFFIX})")
    p.add_argument("--checkpoint-every", type=_positive_int, default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"events between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="bad rows: count and skip them (default), or stop at the first")
    p.add_argument("--limit", type=_positive_int, default=None, help="send at most N events")
    p.add_argument("--producers", type=_positive_int, default=None, metavar="N",
                   help="producer processes at --speed max (default: 2 with --speed max on 2+ "
                        "CPUs, else 1); producer k sends the partitions p with p %% N == k, so "
                        "each user's order is kept. A paced --speed or --limit uses one producer; "
                        "--resume from a checkpoint written by several uses their number")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_kafka_arguments(p)
    p.set_defaults(func=run_replay_command)


def run_replay_command(args: argparse.Namespace) -> int:
    if args.from_ts is not None and args.to_ts is not None and args.from_ts >= args.to_ts:
        print("seqstream replay: --from must be before --to", file=sys.stderr)
        return 2
    producers = args.producers
    if producers is None:
        producers = default_producers(args.speed, args.limit)
    elif producers > 1 and not lanes_apply(args.speed, args.limit):
        print(f"seqstream replay: note: --producers {producers} applies to --speed max without "
              f"--limit; using one producer", file=sys.stderr)
        producers = 1
    opts = ReplayOptions(path=args.file, fmt=args.fmt, speed=args.speed, prefix=args.prefix,
                         from_ts=args.from_ts, to_ts=args.to_ts, resume=args.resume,
                         on_error=args.on_error, limit=args.limit, checkpoint=args.checkpoint,
                         checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                         producers=producers)
    try:
        if not opts.path.is_file():
            raise ReplayError(f"no such file: {opts.path}")
        bootstrap = resolve_bootstrap(args.bootstrap)
        # A factory, not a producer: with several producers each lane makes its own after the
        # fork; with one, replay_file makes it and closes it.
        summary = replay_file(opts, lambda: Replayer(bootstrap, prefix=opts.prefix))
    except ReplayError as exc:
        print(f"seqstream replay: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 130 if summary.interrupted else 0
