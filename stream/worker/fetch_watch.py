"""Caught-up, lag and stall checks on the consumer's fetcher: the only module touching aiokafka's
fetch state and faust's consumer internals (read offsets, commits, backpressure).

The reorder buffer (stream/ordering.py) asks `caught_up` whether an input partition can still
deliver an earlier event; the worker's timers ask `unstick` to repair faust's losses, and
the report logs `input_lag` and `backpressured`; /metrics reads `consumer_lag` and the health
checks (stream/worker/health.py) `recovery_reason`, `assigned_inputs`, `unpositioned` and `waiting`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Sequence

from faust.types import TP

from stream.worker.delivery import DeliveryTracker, Probe
from stream.worker.metrics import WorkerMetrics
from stream.worker.probe import RecordProbe

log = logging.getLogger("seqstream.worker")


class FetchWatch:
    """What the fetcher has handed to the scoring agent, per assigned input partition."""

    def __init__(self, input_topics: Sequence[str], wiring: Any, metrics: WorkerMetrics,
                 probe: RecordProbe | None = None) -> None:
        self.input_topics = list(input_topics)
        self.probe = probe  # reads Kafka outside faust: see stream/worker/delivery.py
        self.wiring = wiring
        self.metrics = metrics
        self.delivered: dict[tuple[str, int], int] = {}  # last offset handed to us per input tp
        self.tracker = DeliveryTracker()  # which offsets reached us: finds what faust lost
        self._idle_since: dict[TP, float] = {}  # see caught_up
        self._events_seen, self._events_changed = 0, time.monotonic()  # see _quiet_for

    def note_batch(self, batch: Sequence[Any]) -> dict[tuple[str, int], float]:
        """Record what a batch delivered; per (topic, partition) in it, the time of the fetch
        that brought it (no newer than the last poll)."""
        seen_ms: dict[tuple[str, int], float] = {}
        committed = self._committed()
        now = time.monotonic()
        for fev in batch:
            msg = fev.message
            key = (msg.topic, msg.partition)
            self.delivered[key] = max(msg.offset, self.delivered.get(key, -1))
            tp = TP(*key)
            self.tracker.deliver(tp, msg.offset, committed.get(tp), now)
            if key not in seen_ms:  # the fetch that brought it is no newer than this
                seen_ms[key] = self._last_poll_ms(tp) or 0.0
        return seen_ms

    def _committed(self) -> dict[TP, int | None]:
        """faust's committed offsets (the next offset to read; recovery's seek sets them from
        Kafka at every assignment)."""
        consumer = getattr(getattr(self.wiring, "app", None), "consumer", None)
        return getattr(consumer, "_committed_offset", {})

    def _fetch_state(self, tp: TP) -> Any:
        """aiokafka's per-partition fetch state (highwater, position, last poll), or None."""
        try:
            consumer = self.wiring.app.consumer._thread._ensure_consumer()
            return consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not assigned (any more), or not started
            return None

    def _input_fetch_states(self) -> list[tuple[TP, Any]]:
        """(tp, aiokafka fetch state) per assigned input partition, in order."""
        pairs = []
        for tp in sorted(self.wiring.app.consumer.assignment()):
            state = self._fetch_state(tp) if tp.topic in self.input_topics else None
            if state is not None:
                pairs.append((tp, state))
        return pairs

    def input_lag(self) -> dict[str, int | str]:
        """Per assigned input partition: records Kafka has beyond the fetch position (from the
        last fetch's highwater), or "paused" where the fetcher is paused. Lag that stays while
        nothing arrives means a stalled fetch."""
        lag: dict[str, int | str] = {}
        for tp, state in self._input_fetch_states():
            name = f"{tp.topic}[{tp.partition}]"
            if state.paused:
                lag[name] = "paused"
            elif state.highwater is not None and state.has_valid_position:
                lag[name] = state.highwater - state.position
        return lag

    def fetch_positions(self) -> dict[TP, int]:
        """The fetcher's position (the next offset it will hand over) per assigned input partition."""
        return {tp: state.position for tp, state in self._input_fetch_states() if state.has_valid_position}

    def backpressured(self) -> set[TP]:
        """Partitions faust stopped fetching because a stream buffer was full (they come back
        when the buffer drains)."""
        return set(getattr(self.wiring.app.consumer, "_buffered_partitions", ()))

    def _last_poll_ms(self, tp: TP) -> float | None:
        state = self._fetch_state(tp)
        return None if state is None else state.timestamp

    def caught_up(self, topic: str, partition: int) -> float | None:
        """The fetch time as of which everything Kafka had for this input partition has been
        handed to us, or None (stream/ordering.py says why the time matters)."""
        tp = TP(topic, partition)
        state = self._fetch_state(tp)
        if state is None or state.highwater is None or state.timestamp is None:
            return None  # no fetch answered for it yet
        highwater = state.highwater
        last = self.delivered.get((topic, partition))
        if last is not None:
            # offsets that hold no record (a transaction marker at the end) count as done
            # once the delivery tracker has given up on them
            track = self.tracker.partitions.get(tp)
            done = max(last + 1, track.watermark if track is not None else 0)
            return state.timestamp if done >= highwater else None
        # Nothing handed to us since start. After a restart faust seeks to the committed
        # offset and records it as its read offset: the next offset to read.
        next_offset = getattr(self.wiring.app.consumer, "_read_offset", {}).get(tp)
        if next_offset is not None:
            return state.timestamp if next_offset >= highwater else None
        if highwater == 0:
            return state.timestamp
        # A new group on a partition whose records all expired: the fetcher sits at the
        # highwater and will never hand anything over. Records it has just fetched are handed
        # over within milliseconds, so a position that stays at the highwater for a second
        # means there is nothing to wait for.
        if not (state.has_valid_position and state.position >= highwater):
            self._idle_since.pop(tp, None)
            return None
        since = self._idle_since.setdefault(tp, time.monotonic())
        return state.timestamp if time.monotonic() - since >= 1.0 else None

    def stalled_inputs(self, paused: set[TP], now: float, quiet_s: float = 5.0) -> set[TP]:
        """Input partitions that faust stopped fetching for backpressure although nothing has
        reached this agent for `quiet_s`: its buffer is empty, so they should have been resumed.

        faust resumes a partition when the stream's queue drains; in rare runs that callback is
        lost and the worker waits forever with the queue empty and the partitions paused (seen
        once in a max-speed replay: 39,324 of 45,000 events, then nothing for 12 minutes)."""
        inputs = {tp for tp in paused if tp.topic in self.input_topics}
        return inputs if inputs and self._quiet_for(now) >= quiet_s else set()

    def _quiet_for(self, now: float) -> float:
        """Seconds since events_in last moved (as seen by these periodic checks)."""
        if self.metrics.events_in != self._events_seen:
            self._events_seen, self._events_changed = self.metrics.events_in, now
        return now - self._events_changed

    def forget(self, revoked: set) -> None:
        """A revoked partition starts afresh when it is assigned again."""
        for tp in revoked:
            self.delivered.pop((tp.topic, tp.partition), None)
            self._idle_since.pop(tp, None)
            self.tracker.forget(tp)

    async def unstick(self, in_transit: Callable[[set[TP]], bool]) -> None:
        """Repair faust's losses that would leave records unscored for good (see
        `stalled_inputs` and stream/worker/delivery.py); `in_transit(backpressured)` says whether
        input records may be on their way from the fetcher to the agent."""
        consumer = self.wiring.app.consumer
        backpressured = self.backpressured()
        now = time.monotonic()
        for tp in self.stalled_inputs(backpressured, now):
            log.warning("resuming %s[%d]: paused for backpressure with nothing in flight",
                        tp.topic, tp.partition)
            consumer.on_buffer_drop(tp)
        positions = self.fetch_positions()
        if self.recovery_reason() is None:  # streams resumed: the fetcher reads from `committed`
            committed = self._committed()
            for tp in positions:
                self.tracker.begin(tp, committed.get(tp), now)
        reread, probes = self.tracker.due(positions, in_transit(backpressured), now)
        for tp, probe in probes.items():
            offset = self.tracker.probed(tp, probe, await self._first_record(tp, probe), time.monotonic())
            if offset is not None:
                reread[tp] = offset
        for tp, offset in reread.items():
            log.warning("re-reading %s[%d] from offset %d: records from there were fetched but "
                        "never reached the agent", tp.topic, tp.partition, offset)
            try:
                await consumer.seek(tp, offset)
            except Exception:  # revoked meanwhile: its next owner reads from the committed offset
                log.exception("could not seek %s[%d]", tp.topic, tp.partition)

    async def on_assigned(self, assigned: set) -> None:
        """Read the group's committed offsets of the input partitions just assigned (where the
        fetcher starts) from Kafka: faust learns them only during its seek, after records may
        have been taken and lost."""
        inputs = sorted(tp for tp in assigned if tp.topic in self.input_topics)
        if self.probe is None or not inputs:
            return
        try:
            committed = await asyncio.to_thread(self.probe.committed, [(tp.topic, tp.partition) for tp in inputs])
        except Exception as exc:  # faust's own view of the committed offsets stands in
            log.warning("could not read the committed offsets of %d assigned partitions (%s)", len(inputs), exc)
            return
        for tp in inputs:
            self.tracker.expect(tp, committed.get((tp.topic, tp.partition)))

    async def _first_record(self, tp: TP, probe: Probe) -> int | None | bool:
        """The first offset in the probe's range holding a record (None: none does), or False
        when there is no probe or it failed (then the range is simply read again)."""
        if self.probe is None:
            return False
        try:
            return await asyncio.to_thread(self.probe.first_record, tp.topic, tp.partition,
                                           probe.start, probe.end)
        except Exception as exc:
            log.warning("could not probe %s[%d] %d..%d (%s): reading it again", tp.topic,
                        tp.partition, probe.start, probe.end - 1, exc)
            return False

    def forget_unacked(self, messages: Any) -> None:
        """Take messages that will never be acked (handed back at shutdown) off the list that
        faust's stop waits on (`wait_empty`); their offsets stay uncommitted."""
        unacked = getattr(self.wiring.app.consumer, "_unacked_messages", None)
        if unacked is not None:
            for message in messages:
                unacked.discard(message)

    def hand_back_before_waiting(self, hand_back: Callable[[], None]) -> None:
        """Call `hand_back` whenever faust is about to wait for in-progress messages to be acked
        (a revocation, a stop): events parked in our reorder buffer would otherwise hold that
        wait forever, and the worker would be evicted after a long gap."""
        consumer = self.wiring.app.consumer
        wait_empty = consumer.wait_empty

        async def wait_empty_after_hand_back() -> None:
            hand_back()
            await wait_empty()

        consumer.wait_empty = wait_empty_after_hand_back

    def guard_commits(self) -> None:
        """Never commit past an input offset that is neither acked nor known to hold no record.

        faust's `_new_offset` lets a commit skip one unacked offset at the head (it reads its
        committed offset, the next offset to read, as the last one processed): a record in
        progress, handed back by a rebalance, or lost by the fetcher at exactly the committed
        offset is committed past, and lost if the worker dies before it is acked (kill -9
        at-least-once lost 1-2 of 1,500 events in 2 of 4 runs). The head offset may pass only
        when acked, in faust's gap list, or found empty by the delivery tracker's probe (a
        transaction marker right after a seek: then the commit waits about a second)."""
        consumer = self.wiring.app.consumer
        new_offset = consumer._new_offset
        inputs = set(self.input_topics)

        def new_offset_after_head(tp: TP) -> int | None:
            committed = consumer._committed_offset.get(tp)
            if committed is not None and tp.topic in inputs and consumer._acked.get(tp):
                head_done = (committed in consumer._acked_index[tp]
                             or consumer._gap[tp].overlaps(committed)
                             or self.tracker.holds_no_record(tp, committed))
                if not head_done:
                    return None
            return new_offset(tp)

        consumer._new_offset = new_offset_after_head

    def stop_waiting(self) -> None:
        """Shutdown's patience is over: faust's stop waits for no more acks (what is still unacked
        stays uncommitted, so the partition's next owner reads it again)."""
        unacked = getattr(self.wiring.app.consumer, "_unacked_messages", None)
        if unacked:
            log.warning("stopping: not waiting for %d records in progress (read again after the "
                        "restart)", len(unacked))
            unacked.clear()

    # -- for /metrics and the health checks ----------------------------------------------------

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition this worker consumes (table changelogs left out): the last
        fetched highwater minus the committed offset, as kafka_consumergroup_lag counts it. Before
        the group's first commit on a partition, the fetch position stands in for it."""
        try:
            app = self.wiring.app
            consumer = app.consumer
            assignment = sorted(consumer.assignment())
            changelogs = set(app.tables.changelog_topics)
        except Exception:  # not started
            return {}
        committed = getattr(consumer, "_committed_offset", {})
        lag: dict[tuple[str, int], int] = {}
        for tp in assignment:
            if tp.topic in changelogs:
                continue
            state = self._fetch_state(tp)
            if state is None or state.highwater is None:
                continue
            done = committed.get(tp)
            if done is None:
                if not state.has_valid_position:
                    continue
                done = state.position
            lag[(tp.topic, tp.partition)] = max(0, state.highwater - done)
        return lag

    def recovery_reason(self) -> str | None:
        """Why the worker cannot serve yet (starting, first assignment, table recovery, a
        rebalance), or None once faust has recovered its tables and resumed the streams."""
        app = self.wiring.app
        try:
            recovery = app.tables.recovery
            assigned = bool(app.consumer.assignment())
        except Exception:  # the consumer is not started yet
            return "starting"
        tables = ", ".join(sorted(t.name for t in app.tables.values())) or "tables"
        if recovery.in_recovery:
            try:
                remaining = int(recovery.active_remaining_total())
            except Exception:
                return f"recovering table {tables}"
            return f"recovering table {tables} ({remaining} changelog records to go)"
        if not recovery.completed.is_set():
            return f"recovering table {tables}" if assigned else "waiting for partition assignment"
        if app.rebalancing:
            return "rebalancing"
        return None

    def assigned_inputs(self) -> list[TP]:
        try:
            return sorted(tp for tp in self.wiring.app.consumer.assignment()
                          if tp.topic in self.input_topics)
        except Exception:
            return []

    def unpositioned(self, inputs: Sequence[TP]) -> list[TP]:
        """Assigned input partitions the fetcher is not reading: no fetch position yet, or paused
        by something other than backpressure (faust pauses inputs while it recovers)."""
        backpressured = self.backpressured()
        out = []
        for tp in inputs:
            state = self._fetch_state(tp)
            if state is None or not state.has_valid_position or (state.paused and tp not in backpressured):
                out.append(tp)
        return out

    def waiting(self) -> int:
        """Records Kafka holds for the assigned input partitions beyond the fetch position (as of
        the last fetch): work that a consumer which has stopped would leave undone."""
        total = 0
        for _, state in self._input_fetch_states():
            if state.highwater is not None and state.has_valid_position:
                total += max(0, state.highwater - state.position)
        return total
