"""The send loop: events -> a Replayer, paced by event time, with a progress bar, limits,
--from/--to, checkpoints after each successful flush, and a clean stop on the first Ctrl-C."""
from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from models.schema import ACTIONS, LogEvent
from stream.replay.options import DEFAULT_CHECKPOINT_EVERY, in_window
from stream.replay.producer import Replayer


def iso(ts_ms: int) -> str:
    """An event time for the progress bar: UTC, to the second."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


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


def skip_events(events: Iterable[LogEvent], n: int) -> Iterator[LogEvent]:
    """Drop the first n events (the resumed ones)."""
    it = iter(events)
    if n:
        next(itertools.islice(it, n, n), None)
    return it


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
