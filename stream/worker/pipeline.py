"""The batch flow of the scoring agent: decode -> order -> state -> score -> outputs.

Per micro-batch (from `take_ready`, stream/worker/batching.py: bounded size and wait): decode and validate (bad input ->
dead-letter), park valid events in the reorder buffer (stream/ordering.py) until no earlier event
can still arrive from the other input topics, read each released user's state from the table
(stream/worker/store.py), score in a single-thread executor (torch blocks), then write states and
send predictions back on the event loop.

`take_ready` acks a batch when the next one is requested; a parked event holds one more
reference on its message (`incref`) so its offset is not committed before it is scored.

Extensions (online learning) attach through public hooks: `add_extension`, `add_batch_hook`
(called after each batch's states are stored) and `request_swap` (a model version served from
the next batch on).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Sequence

import msgpack
import numpy as np
from faust.types import TP

from models.ids import normalize_id
from stream.churn import DueIndex, PartitionClock, alert_message
from stream.config import Settings
from stream.events import (Event, Invalid, Prediction, dead_letter_headers, dead_letter_key,
                           dead_letter_value, decode_event, encode_predictions, encode_profile,
                           user_key)
from stream.guarantee import record_sender
from stream.ordering import ReorderBuffer
from stream.scoring import Scorer, ScoringModel
from stream.state import UserState
from stream.worker.app import Wiring
from stream.worker.feed import Feed
from stream.worker.fetch_watch import FetchWatch
from stream.worker.health import Health
from stream.worker.metrics import WorkerMetrics
from stream.worker.probe import RecordProbe
from stream.worker.store import StateStore

log = logging.getLogger("seqstream.worker")

STOP_WAIT_S = 4.0  # SIGTERM: how long faust's stop may wait for batches in progress

BatchHook = Callable[[dict[int, UserState], list[Prediction]], Awaitable[None]]


class ScoringPipeline:
    def __init__(self, settings: Settings, wiring: Wiring, scorer: Scorer,
                 probe: RecordProbe | None = None) -> None:
        self.settings = settings
        self.wiring = wiring
        self.scorer = scorer
        self.metrics = WorkerMetrics()
        self.feed = Feed()  # the last predictions and churn alerts, for GET /feed
        self.clock = PartitionClock(settings.allowed_lateness_ms)
        self.due = DueIndex()
        self.reorder: ReorderBuffer[Any] = ReorderBuffer(settings.input_topics,
                                                         grace_ms=settings.order_grace_ms)
        self.fetch_watch = FetchWatch(settings.input_topics, wiring, self.metrics, probe)
        self.store = StateStore(wiring.states, self.metrics)
        self.health = Health(self.fetch_watch, lambda: self.metrics.events_in, self.in_flight)
        self.registry: Any = None  # the Prometheus registry, once the web pages are registered
        # under exactly_once each output joins its source partition's transaction (guarantee.py)
        guarantee = settings.processing_guarantee
        self.send_prediction = record_sender(wiring.app, wiring.predictions, guarantee)
        self.send_profile = record_sender(wiring.app, wiring.profiles, guarantee)
        self._send_anomaly = record_sender(wiring.app, wiring.anomalies, guarantee)
        self._send_dead_letter = record_sender(wiring.app, wiring.dead_letter, guarantee)
        self._send_churn = record_sender(wiring.app, wiring.churn_alerts, guarantee)
        # the scoring agent and the churn-command agent both write user state
        self.state_lock = asyncio.Lock()
        # extension points: called after each batch's states are stored (e.g. training-sample
        # capture), and a model version waiting to be swapped in between two batches
        self.after_batch: list[BatchHook] = []
        self.extensions: dict[str, Any] = {}
        self._pending_model: ScoringModel | None = None
        self.stopping = False  # SIGTERM: see begin_shutdown
        # torch releases the GIL, but the model must see one batch at a time
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqstream-score")

    # -- extension hooks -------------------------------------------------------------------

    def add_extension(self, name: str, extension: Any) -> bool:
        """Attach `extension` under `name` once; False (and nothing attached) if one is there."""
        if name in self.extensions:
            return False
        self.extensions[name] = extension
        return True

    def add_batch_hook(self, hook: BatchHook) -> None:
        """`await hook(states, predictions)` after each batch's states are stored."""
        self.after_batch.append(hook)

    def request_swap(self, scoring: ScoringModel) -> None:
        """Serve `scoring` from the next batch on; never in the middle of one (event loop only)."""
        self._pending_model = scoring

    # -- the batch -------------------------------------------------------------------------

    def decode(self, batch: Sequence[Any]) -> tuple[list[tuple[Event, Any]], list[Invalid]]:
        valid: list[tuple[Event, Any]] = []
        invalid: list[Invalid] = []
        by_topic = self.metrics.events_by_topic
        for fev in batch:
            msg = fev.message
            by_topic[msg.topic] += 1
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
        await self._send_dead_letter(key=dead_letter_key(bad), value=dead_letter_value(bad),
                                     headers=dead_letter_headers(bad), source=(bad.topic, bad.partition))

    async def process(self, batch: Sequence[Any]) -> None:
        async with self.state_lock:
            await self._process(batch)

    def in_transit(self, backpressured: set[TP]) -> bool:
        """Whether input records may be on their way from the fetcher to this agent's batches.
        (Events in the reorder buffer have arrived: the delivery check must not wait for them,
        they may be waiting for the very records it would read again.)"""
        inputs = set(self.settings.input_topics)
        queued = any(channel.queue.qsize() for channel in self.wiring.app.topics
                     if inputs & set(getattr(channel, "topics", ())))
        return queued or any(tp.topic in inputs for tp in backpressured) or self.state_lock.locked()

    def in_flight(self, backpressured: set[TP]) -> bool:
        """Whether input events are on their way or waiting in this worker, unscored."""
        return self.in_transit(backpressured) or bool(self.reorder.size)

    async def release_ready(self) -> None:
        """Score what the reorder buffer can release now (also called from a timer)."""
        async with self.state_lock:
            await self._score_released(time.perf_counter())

    async def _process(self, batch: Sequence[Any]) -> None:
        started = time.perf_counter()
        self.metrics.events_in += len(batch)
        # read again (stream/worker/delivery.py): a dead letter sent once is not sent twice
        again = self.fetch_watch.tracker.delivered_before(
            ((fev.message.topic, fev.message.partition), fev.message.offset) for fev in batch)
        seen_ms = self.fetch_watch.note_batch(batch)
        valid, invalid = self.decode(batch)
        for bad in invalid:
            if ((bad.topic, bad.partition), bad.offset) not in again:
                await self.send_dead_letter(bad)
        for ev, fev in valid:
            fev.message.incref()  # released by our own ack once scored
            self.reorder.add(ev, fev, seen_ms[(ev.topic, ev.partition)])
        await self._score_released(started)

    def begin_shutdown(self) -> None:
        """Called on SIGTERM before faust stops the consumer. faust's stop waits until every
        message handed to a stream is acked, and parked events are never scored from here on: hand
        them back unscored and unacked (and off faust's list of messages to wait for), so their
        offsets stay uncommitted and the next owner reads them again. The batch in flight finishes
        and is committed; events arriving later are handed back the same way."""
        self.stopping = True
        self._hand_back()
        # the online trainer's batch is acked only after its round (seconds): stop waiting for
        # whatever is still unacked after STOP_WAIT_S; it stays uncommitted and is read again
        asyncio.get_running_loop().call_later(STOP_WAIT_S, self.fetch_watch.stop_waiting)

    def hand_back(self) -> None:
        """A rebalance is about to wait for every message in progress to be acked: hand back the
        events parked in the reorder buffer (unscored, unacked, off faust's list), or the wait
        would never end with the flow stopped. Partitions this worker keeps are read again from
        their committed offsets after the rebalance (recovery seeks there)."""
        self._hand_back()

    def _hand_back(self) -> None:
        dropped = self.reorder.drop_partitions(set(range(self.wiring.partitions)))
        self.metrics.buffered = self.reorder.size
        self.fetch_watch.forget_unacked(fev.message for _, fev in dropped)
        if dropped:
            log.info("stopping: handed back %d buffered events (read again after the restart)",
                     len(dropped))

    async def _score_released(self, started: float) -> None:
        if self.stopping:
            self._hand_back()
            return
        if self._pending_model is not None:
            self.scorer.swap(self._pending_model)
            log.info("now serving model version %d", self._pending_model.version)
            self._pending_model = None
        valid = self.reorder.release(self.fetch_watch.caught_up)
        self.metrics.buffered = self.reorder.size
        self.metrics.redeliveries = self.scorer.redeliveries
        self.metrics.forced_releases = self.reorder.forced
        if valid:
            states, last_event = self.store.load_states(valid)
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
            self.store.store_states(states, last_event)
            policy = self.scorer.churn
            for user_id, st in states.items():
                self.due.update(last_event[user_id].message.partition, user_id, policy.due_ts(st))
            now_ms = int(time.time() * 1000)
            values = encode_predictions(predictions, now_ms)
            send_prediction = self.send_prediction
            for p, value in zip(predictions, values):
                self.metrics.late += p.late
                key = user_key(p.user_id)
                source = (p.event.topic, p.event.partition)
                await send_prediction(key=key, value=value, source=source)
                if p.profile is not None:
                    self.metrics.profiles += 1
                    await self.send_profile(key=key, value=encode_profile(p.profile), source=source)
                for msg in p.churn_messages:
                    await self.send_churn(key, msg, source, p.user_id, p.churn_risk)
                for msg in p.anomaly_messages:
                    self.metrics.anomaly_alerts += 1
                    await self._send_anomaly(key=key, value=msgpack.packb(msg, use_bin_type=True),
                                             partition=p.event.partition, source=source)
            self.metrics.predictions += len(predictions)
            self._observe_sent(valid, events, now_ms)
            self.feed.add_predictions(predictions)
            for hook in self.after_batch:
                await hook(states, predictions)
            for _, fev in valid:
                fev.ack()
            m = self.metrics
            m.batches += 1
            took = time.perf_counter() - started
            m.batch_seconds += took
            m.batch_time.observe(took)
            m.batch_events.observe(len(events))

    def _observe_sent(self, valid: list[tuple[Event, Any]], events: list[Event], now_ms: int) -> None:
        """Latency histograms of a sent batch: arrival at the worker (faust's `time_in`, monotonic)
        -> sent, and event time -> sent."""
        now = time.monotonic()
        arrived = [fev.message.time_in for _, fev in valid]
        if None not in arrived:
            self.metrics.latency.observe_many(now - np.asarray(arrived, dtype=np.float64))
        else:  # faust's monitor stamps every message; should one lack it, leave it out
            self.metrics.latency.observe_many([max(now - t, 0.0) for t in arrived if t is not None])
        ts = np.fromiter((ev.ts for ev in events), dtype=np.float64, count=len(events))
        self.metrics.event_time_lag.observe_many(np.maximum(now_ms - ts, 0.0) / 1000.0)

    async def on_assigned(self, assigned: set) -> None:
        await self.fetch_watch.on_assigned(assigned)

    def on_revoked(self, revoked: set) -> None:
        parts = {tp.partition for tp in revoked if tp.topic in self.settings.input_topics}
        dropped = self.reorder.drop_partitions(parts)
        self.fetch_watch.forget(revoked)
        if dropped:  # not scored, not acked: the partition's next owner reads them again
            log.info("rebalance: handed back %d buffered events", len(dropped))

    # -- churn -----------------------------------------------------------------------------

    async def send_churn(self, key: bytes, msg: dict, source: tuple[str, int], user_id: int,
                         risk: float | None = None) -> None:
        """To churn-alerts' partition of the user (= the source partition: co-partitioned)."""
        if msg["type"] == "churn":
            self.metrics.churn_alerts += 1
        else:
            self.metrics.churn_returns += 1
        self.feed.add_churn(user_id, msg, risk)
        await self._send_churn(key=key, value=msgpack.packb(msg, use_bin_type=True),
                               partition=source[1], source=source)

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
            user_id, clock_ts = normalize_id(cmd["user_id"], "user_id"), int(cmd["clock_ts"])
        except Exception:
            log.warning("ignoring a malformed churn command at offset %s", fev.message.offset)
            return
        async with self.state_lock:
            key = user_key(user_id)
            st = self.store.get(key)
            if st is None:
                return
            due = self.scorer.churn.due_ts(st)
            if due is None or due > clock_ts:
                return  # the user came back (or was alerted) since the sweep looked
            st.churn_alerted = True
            self.store.put(key, st)
            # the command's own partition: its offset commits in that transaction (exactly_once)
            await self.send_churn(key, alert_message(st, self.scorer.churn,
                                                     self.scorer.scoring.version),
                                  (fev.message.topic, fev.message.partition), user_id)
