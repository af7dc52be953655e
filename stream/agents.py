"""ingest -> order -> batch -> score -> publish, as one faust agent.

The agent takes micro-batches with `take_events` (bounded size and wait). Per batch:
decode and validate (bad input -> dead-letter), park valid events in the reorder buffer
(stream/ordering.py) until no earlier event can still arrive from the other input topics, read
each released user's state from the table, score in a single-thread executor (torch blocks),
then write states and send predictions back on the event loop.

`take_events` acks a batch when the next one is requested; a parked event holds one more
reference on its message (`incref`) so its offset is not committed before it is scored.

faust only lets a table be read or written while a "current event" is set (it picks the
RocksDB partition from it), and a take() batch has none; we set it per user to one of that
user's events, which is the same partition by co-partitioning.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import msgpack
from faust.streams import _current_event  # the contextvar faust's tables read
from faust.types import TP

from stream.app import Wiring
from stream.churn import DueIndex, PartitionClock, alert_message
from stream.config import Settings
from stream.ordering import ReorderBuffer
from stream.events import Event, Invalid, decode_event, dead_letter_headers, dead_letter_value, user_key
from stream.scoring import Prediction, Scorer, ScoringModel
from stream.state import UserState, decode_state, encode_state

log = logging.getLogger("seqstream.worker")


@dataclass
class WorkerMetrics:
    events_in: int = 0
    predictions: int = 0
    dead_letter: Counter = field(default_factory=Counter)
    late: int = 0  # arrived after a later event of the same user
    churn_alerts: int = 0
    churn_returns: int = 0
    sweeps: int = 0
    buffered: int = 0  # events waiting in the reorder buffer (gauge)
    redeliveries: int = 0  # events the state already held (at-least-once redelivery)
    forced_releases: int = 0
    sweep_seconds: float = 0.0
    batches: int = 0
    batch_seconds: float = 0.0
    state_bytes: int = 0  # sum of encoded state sizes written (for bytes/user)
    state_writes: int = 0
    started: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "events_in": self.events_in,
            "predictions": self.predictions,
            "dead_letter": dict(self.dead_letter),
            "late": self.late,
            "churn_alerts": self.churn_alerts,
            "churn_returns": self.churn_returns,
            "mean_sweep_ms": round(1000 * self.sweep_seconds / max(self.sweeps, 1), 3),
            "buffered": self.buffered,
            "redeliveries_skipped": self.redeliveries,
            "forced_releases": self.forced_releases,
            "batches": self.batches,
            "mean_batch_ms": round(1000 * self.batch_seconds / max(self.batches, 1), 2),
            "mean_state_bytes": round(self.state_bytes / max(self.state_writes, 1), 1),
            "events_per_s": round(self.events_in / elapsed, 1),
        }


def _set_current_event(event: Any) -> None:
    _current_event.set(weakref.ref(event) if event is not None else None)


class ScoringPipeline:
    def __init__(self, settings: Settings, wiring: Wiring, scorer: Scorer) -> None:
        self.settings = settings
        self.wiring = wiring
        self.scorer = scorer
        self.metrics = WorkerMetrics()
        self.clock = PartitionClock(settings.allowed_lateness_ms)
        self.due = DueIndex()
        self.reorder: ReorderBuffer[Any] = ReorderBuffer(settings.input_topics,
                                                         grace_ms=settings.order_grace_ms)
        self.delivered: dict[tuple[str, int], int] = {}  # last offset handed to us per input tp
        self.first_delivered: dict[tuple[str, int], int] = {}  # ...and the first since its assignment
        self._idle_since: dict[TP, float] = {}  # see caught_up
        self._events_seen, self._events_changed = 0, time.monotonic()  # see _quiet_for
        self._reread_at: dict[TP, int] = {}  # see skipped_fetches
        self._reread_start: set[TP] = set()
        # the scoring agent and the churn-command agent both write user state
        self.state_lock = asyncio.Lock()
        # extension points: called after each batch's states are stored (e.g. training-sample
        # capture), and a model version waiting to be swapped in between two batches
        self.after_batch: list[Callable[[dict[int, UserState], list[Prediction]], Awaitable[None]]] = []
        self._pending_model: ScoringModel | None = None
        # torch releases the GIL, but the model must see one batch at a time
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqstream-score")

    def request_swap(self, scoring: ScoringModel) -> None:
        """Serve `scoring` from the next batch on; never in the middle of one."""
        self._pending_model = scoring

    def decode(self, batch: Sequence[Any]) -> tuple[list[tuple[Event, Any]], list[Invalid]]:
        valid: list[tuple[Event, Any]] = []
        invalid: list[Invalid] = []
        for fev in batch:
            msg = fev.message
            result = decode_event(msg.key, msg.value, topic=msg.topic, partition=msg.partition,
                                  offset=msg.offset, prefix=self.settings.prefix,
                                  max_value_bytes=self.settings.max_value_bytes)
            if isinstance(result, Invalid):
                invalid.append(result)
            else:
                valid.append((result, fev))
        return valid, invalid

    async def send_dead_letter(self, bad: Invalid) -> None:
        self.metrics.dead_letter[bad.reason] += 1
        await self.wiring.dead_letter.send(key=bad.key, value=dead_letter_value(bad),
                                           headers=dead_letter_headers(bad))

    def load_states(self, valid: list[tuple[Event, Any]]) -> tuple[dict[int, UserState], dict[int, Any]]:
        states: dict[int, UserState] = {}
        last_event: dict[int, Any] = {}
        table = self.wiring.states
        for ev, fev in valid:
            last_event[ev.user_id] = fev
            if ev.user_id in states:
                continue
            _set_current_event(fev)
            raw = table.get(user_key(ev.user_id))
            if raw is not None:
                try:
                    states[ev.user_id] = decode_state(raw)
                except Exception:  # a state we cannot read must not stop the partition
                    log.exception("unreadable state for user %s; starting fresh", ev.user_id)
        return states, last_event

    def store_states(self, states: dict[int, UserState], last_event: dict[int, Any]) -> None:
        table = self.wiring.states
        for user_id, st in states.items():
            _set_current_event(last_event[user_id])
            data = encode_state(st)
            table[user_key(user_id)] = data
            self.metrics.state_bytes += len(data)
            self.metrics.state_writes += 1
        _set_current_event(None)

    async def process(self, batch: Sequence[Any]) -> None:
        async with self.state_lock:
            await self._process(batch)

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
            state = self._fetch_state(tp) if tp.topic in self.settings.input_topics else None
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

    def in_flight(self, backpressured: set[TP]) -> bool:
        """Whether input records may sit between the fetcher and this agent's batches."""
        inputs = set(self.settings.input_topics)
        queued = any(channel.queue.qsize() for channel in self.wiring.app.topics
                     if inputs & set(getattr(channel, "topics", ())))
        return (queued or any(tp.topic in inputs for tp in backpressured) or bool(self.reorder.size)
                or self.state_lock.locked())

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
            return state.timestamp if last + 1 >= highwater else None
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

    async def release_ready(self) -> None:
        """Score what the reorder buffer can release now (also called from a timer)."""
        async with self.state_lock:
            await self._score_released(time.perf_counter())

    async def _process(self, batch: Sequence[Any]) -> None:
        started = time.perf_counter()
        self.metrics.events_in += len(batch)
        seen_ms: dict[tuple[str, int], float] = {}
        for fev in batch:
            msg = fev.message
            key = (msg.topic, msg.partition)
            self.delivered[key] = max(msg.offset, self.delivered.get(key, -1))
            if key not in seen_ms:  # the fetch that brought it is no newer than this
                seen_ms[key] = self._last_poll_ms(TP(*key)) or 0.0
                self.first_delivered.setdefault(key, msg.offset)  # a batch holds a partition in order
        valid, invalid = self.decode(batch)
        for bad in invalid:
            await self.send_dead_letter(bad)
        for ev, fev in valid:
            fev.message.incref()  # released by our own ack once scored
            self.reorder.add(ev, fev, seen_ms[(ev.topic, ev.partition)])
        await self._score_released(started)

    async def _score_released(self, started: float) -> None:
        if self._pending_model is not None:
            self.scorer.swap(self._pending_model)
            log.info("now serving model version %d", self._pending_model.version)
            self._pending_model = None
        valid = self.reorder.release(self.caught_up)
        self.metrics.buffered = self.reorder.size
        self.metrics.redeliveries = self.scorer.redeliveries
        self.metrics.forced_releases = self.reorder.forced
        if valid:
            states, last_event = self.load_states(valid)
            events = [ev for ev, _ in valid]
            for ev in events:
                self.clock.observe(ev.partition, ev.ts)
            loop = asyncio.get_running_loop()
            try:
                predictions = await loop.run_in_executor(
                    self.executor, self.scorer.score_batch, states, events)
            except Exception as exc:
                # A scoring failure must not lose the batch: every event goes to dead-letter.
                log.exception("scoring failed for a batch of %d events", len(events))
                for ev, fev in valid:
                    await self.send_dead_letter(Invalid(
                        "internal-error", f"{type(exc).__name__}: {exc}"[:200],
                        fev.message.key, fev.message.value, ev.topic, ev.partition, ev.offset))
                    fev.ack()
                return
            self.store_states(states, last_event)
            policy = self.scorer.churn
            for user_id, st in states.items():
                self.due.update(last_event[user_id].message.partition, user_id, policy.due_ts(st))
            now_ms = int(time.time() * 1000)
            pack = msgpack.Packer(use_bin_type=True).pack
            for p in predictions:
                self.metrics.late += p.late
                key = user_key(p.user_id)
                await self.send_prediction(key, pack(p.to_message(now_ms)))
                for msg in p.churn_messages:
                    await self.send_churn(key, msg, p.event.partition)
            self.metrics.predictions += len(predictions)
            for hook in self.after_batch:
                await hook(states, predictions)
            for _, fev in valid:
                fev.ack()
            self.metrics.batches += 1
            self.metrics.batch_seconds += time.perf_counter() - started

    def stalled_inputs(self, paused: set[TP], now: float, quiet_s: float = 5.0) -> set[TP]:
        """Input partitions that faust stopped fetching for backpressure although nothing has
        reached this agent for `quiet_s`: its buffer is empty, so they should have been resumed.

        faust resumes a partition when the stream's queue drains; in rare runs that callback is
        lost and the worker waits forever with the queue empty and the partitions paused (seen
        once in a max-speed replay: 39,324 of 45,000 events, then nothing for 12 minutes)."""
        inputs = {tp for tp in paused if tp.topic in self.settings.input_topics}
        return inputs if inputs and self._quiet_for(now) >= quiet_s else set()

    def skipped_fetches(self, positions: dict[TP, int], committed: dict[TP, int | None], now: float,
                        in_flight: bool, quiet_s: float = 10.0) -> dict[TP, int]:
        """Input partitions where faust took records from the fetcher that never reached this
        agent, each with the offset to read again from.

        Once faust has taken records from the fetcher, Kafka does not send them again before the
        next rebalance. In about 1 restart in 50, faust took a record while recovery's seek to the
        committed offsets was in flight, and it never reached the stream: committed offset 58,
        fetch position 59, nothing delivered, the worker idle for good. Two checks find such a
        loss, each re-reading a partition once (a gap that stays, such as a transaction marker,
        which takes an offset but holds no record, is not a loss):
        - the first offset delivered since the assignment is past the committed offset, which
          then cannot move (faust commits contiguous acks only): re-read from the committed one;
        - the worker is quiet for `quiet_s` with nothing in flight, and the fetch position is past
          one beyond the last delivered offset (or the committed one, if nothing was delivered):
          re-read from there."""
        quiet = self._quiet_for(now) >= quiet_s and not in_flight
        reread: dict[TP, int] = {}
        for tp, position in positions.items():
            if tp.topic not in self.settings.input_topics:
                continue
            first = self.first_delivered.get((tp.topic, tp.partition))
            since = committed.get(tp)
            if first is not None and since is not None and first > since and tp not in self._reread_start:
                self._reread_start.add(tp)
                reread[tp] = since
                continue
            if not quiet:
                continue
            last = self.delivered.get((tp.topic, tp.partition))
            expected = last + 1 if last is not None else since
            if expected is None or position <= expected or self._reread_at.get(tp) == position:
                continue
            self._reread_at[tp] = position
            reread[tp] = expected
        return reread

    def _quiet_for(self, now: float) -> float:
        """Seconds since events_in last moved (as seen by these periodic checks)."""
        if self.metrics.events_in != self._events_seen:
            self._events_seen, self._events_changed = self.metrics.events_in, now
        return now - self._events_changed

    def on_revoked(self, revoked: set) -> None:
        parts = {tp.partition for tp in revoked if tp.topic in self.settings.input_topics}
        dropped = self.reorder.drop_partitions(parts)
        for tp in revoked:
            self.delivered.pop((tp.topic, tp.partition), None)
            self._idle_since.pop(tp, None)
            self.first_delivered.pop((tp.topic, tp.partition), None)
            self._reread_at.pop(tp, None)
            self._reread_start.discard(tp)
        if dropped:  # not scored, not acked: the partition's next owner reads them again
            log.info("rebalance: handed back %d buffered events", len(dropped))


    async def send_prediction(self, key: bytes, value: bytes) -> None:
        """at_least_once: enqueue straight on faust's producer (about half the per-message cost
        of Topic.send; the consumer flushes it before committing offsets). exactly_once:
        Topic.send, so the prediction joins the partition's transaction."""
        if self.settings.processing_guarantee == "exactly_once":
            await self.wiring.predictions.send(key=key, value=value)
        else:
            await self.wiring.app.producer.send(self.settings.predictions_topic, key, value,
                                                None, None, None)

    async def send_churn(self, key: bytes, msg: dict, partition: int) -> None:
        if msg["type"] == "churn":
            self.metrics.churn_alerts += 1
        else:
            self.metrics.churn_returns += 1
        await self.wiring.churn_alerts.send(key=key, value=msgpack.packb(msg, use_bin_type=True),
                                            partition=partition)

    async def sweep(self) -> None:
        """Find due users in event time; ask the table's owner to alert them (no table writes)."""
        started = time.perf_counter()
        for partition in list(self.clock.newest):
            clock_ts = self.clock.now(partition)
            if clock_ts is None:
                continue
            for user_id in self.due.pop_due(partition, clock_ts):
                await self.wiring.churn_commands.send(
                    key=user_key(user_id), partition=partition,
                    value=msgpack.packb({"user_id": user_id, "clock_ts": clock_ts}))
        self.metrics.sweeps += 1
        self.metrics.sweep_seconds += time.perf_counter() - started

    async def apply_churn_command(self, fev: Any) -> None:
        """Runs with faust's current event set: re-check the user is due, mark, publish."""
        try:
            cmd = msgpack.unpackb(fev.message.value, raw=False)
            user_id, clock_ts = int(cmd["user_id"]), int(cmd["clock_ts"])
        except Exception:
            log.warning("ignoring a malformed churn command at offset %s", fev.message.offset)
            return
        async with self.state_lock:
            key = user_key(user_id)
            raw = self.wiring.states.get(key)
            if raw is None:
                return
            st = decode_state(raw)
            due = self.scorer.churn.due_ts(st)
            if due is None or due > clock_ts:
                return  # the user came back (or was alerted) since the sweep looked
            st.churn_alerted = True
            self.wiring.states[key] = encode_state(st)
            await self.send_churn(key, alert_message(st, self.scorer.churn,
                                                     self.scorer.scoring.version),
                                  fev.message.partition)


def register_agents(wiring: Wiring, pipeline: ScoringPipeline, *, report_every_s: float = 10.0) -> None:
    app = wiring.app
    settings = pipeline.settings

    @app.agent(wiring.source, name=f"{settings.app_id}-score")
    async def score(stream):  # noqa: ANN001 - faust's stream type
        within = settings.batch_wait_ms / 1000.0
        async for batch in stream.take_events(settings.batch_max, within=within):
            try:
                await pipeline.process(batch)
            except Exception:
                # take_events acks the batch anyway; make the loss loud rather than silent
                log.exception("batch of %d events failed after scoring", len(batch))

    @app.agent(wiring.churn_commands, name=f"{settings.app_id}-churn-commands")
    async def churn_commands(stream):  # noqa: ANN001
        async for fev in stream.events():
            await pipeline.apply_churn_command(fev)

    @app.timer(interval=max(settings.batch_wait_ms / 1000.0, 0.01))
    async def release_buffered() -> None:
        # a quiet stream delivers no batch, but caught-up partitions can release held events
        if pipeline.reorder.size:
            await pipeline.release_ready()

    @app.on_partitions_revoked.connect
    async def revoked(app_, revoked, **kwargs) -> None:  # noqa: ANN001
        pipeline.on_revoked(revoked)

    @app.timer(interval=settings.churn_sweep_s)
    async def churn_sweep() -> None:
        await pipeline.sweep()

    @app.timer(interval=1.0)
    async def unstick_inputs() -> None:
        # two rare faust losses that would leave the worker idle for good (see the methods)
        consumer = app.consumer
        backpressured = set(getattr(consumer, "_buffered_partitions", ()))
        now = time.monotonic()
        for tp in pipeline.stalled_inputs(backpressured, now):
            log.warning("resuming %s[%d]: paused for backpressure with nothing in flight",
                        tp.topic, tp.partition)
            consumer.on_buffer_drop(tp)
        committed = getattr(consumer, "_committed_offset", {})
        skipped = pipeline.skipped_fetches(pipeline.fetch_positions(), committed, now,
                                           pipeline.in_flight(backpressured))
        for tp, offset in skipped.items():
            log.warning("re-reading %s[%d] from offset %d: the fetcher has moved past it, but "
                        "nothing from there reached the agent", tp.topic, tp.partition, offset)
            try:
                await consumer.seek(tp, offset)
            except Exception:  # revoked meanwhile: its next owner reads from the committed offset
                log.exception("could not seek %s[%d]", tp.topic, tp.partition)

    @app.timer(interval=report_every_s)
    async def report() -> None:
        consumer = app.consumer
        # faust's backpressure: input partitions it stopped fetching because a stream buffer
        # was full (they come back when the buffer drains)
        paused = sorted(f"{tp.topic}[{tp.partition}]" for tp in getattr(consumer, "_buffered_partitions", ()))
        log.info("seqstream metrics %s backpressured=%s lag=%s", pipeline.metrics.snapshot(), paused,
                 pipeline.input_lag())

    if settings.web_port > 0:
        @app.page("/seqstream/metrics")
        async def metrics_page(web, request):  # noqa: ANN001
            return web.json(pipeline.metrics.snapshot())
