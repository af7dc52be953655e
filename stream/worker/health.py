"""Liveness and readiness of a worker (GET /healthz, GET /readyz, the seqstream_ready gauge).

- live: the event loop answers (the handler running proves it) and the consumer is not stalled:
  input records wait (Kafka holds records beyond the fetch position, or records sit between the
  fetcher and the scoring agent) while nothing has reached the agent for `stall_s`. A quiet
  topic is not a stall, and neither is table recovery or a rebalance (a long restore must not
  get the pod killed).
- ready: faust has finished recovering the tables and is not rebalancing, at least one input
  partition is assigned, the fetcher holds a position on each and none is paused (other than
  for backpressure), and the worker is live.

The reasons are one line each, e.g. "recovering table user-state (1200 changelog records to
go)", "no partitions assigned", "consumer stalled: ...".
"""
from __future__ import annotations

import time
from typing import Any, Callable

STALL_S = 60.0  # records waiting and nothing delivered for this long: the consumer is stalled


class Health:
    """`watch` is the pipeline's FetchWatch (stream/worker/fetch_watch.py), `progress()` a
    number that grows while events reach the agent, `in_flight(backpressured)` the pipeline's
    own check for records between the fetcher and the agent."""

    def __init__(self, watch: Any, progress: Callable[[], int], in_flight: Callable[[set], bool],
                 *, stall_s: float = STALL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.watch = watch
        self.progress = progress
        self.in_flight = in_flight
        self.stall_s = stall_s
        self.clock = clock
        self._seen = progress()
        self._moved = clock()  # last time progress moved, or nothing was waiting

    def tick(self) -> None:
        """Sample progress (called every second by a timer, and by each probe)."""
        now = self.clock()
        seen = self.progress()
        if seen != self._seen or self.watch.recovery_reason() is not None:
            self._seen, self._moved = seen, now
            return
        if not self.watch.waiting() and not self.in_flight(self.watch.backpressured()):
            self._moved = now  # idle, not stalled

    def stalled_for(self) -> float:
        return self.clock() - self._moved

    def liveness(self) -> str | None:
        """None while live, else the one-line reason."""
        self.tick()
        stalled = self.stalled_for()
        if stalled >= self.stall_s:
            return f"consumer stalled: input records waiting, none reached the agent for {stalled:.0f}s"
        return None

    def readiness(self) -> str | None:
        """None once ready, else the one-line reason."""
        reason = self.watch.recovery_reason()
        if reason is not None:
            return reason
        inputs = self.watch.assigned_inputs()
        if not inputs:
            return "no partitions assigned"
        idle = self.watch.unpositioned(inputs)
        if idle:
            names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in idle[:4])
            more = f" and {len(idle) - 4} more" if len(idle) > 4 else ""
            return f"not fetching {names}{more}"
        return self.liveness()
