"""GET /metrics: the worker's figures in Prometheus text format (prometheus_client).

Each pipeline has its own CollectorRegistry holding one collector that reads the pipeline's
plain counters (stream/worker/metrics.py) at scrape time, so the hot path never calls into
prometheus_client, and several pipelines in one process (tests) do not clash. No user ids.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from stream.events import Reason

CONTENT_TYPE = CONTENT_TYPE_LATEST


class PipelineCollector:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def describe(self) -> list:
        return []  # families are built per scrape; no checks at registration

    def collect(self) -> Iterator[Any]:  # noqa: C901 - one family after the other
        p = self.pipeline
        m = p.metrics
        events = CounterMetricFamily(
            "seqstream_events", "Input records received by the scoring agent, per input topic: "
            "valid and malformed (valid ones get a prediction, malformed ones a dead letter); "
            "records re-read after a restart or rebalance count again", labels=["topic"])
        for topic in p.settings.input_topics:
            events.add_metric([topic], m.events_by_topic.get(topic, 0))
        yield events
        yield CounterMetricFamily("seqstream_predictions", "Predictions sent to the predictions "
                                  "topic (one per valid input event)", value=m.predictions)
        dead = CounterMetricFamily("seqstream_dead_letter", "Records sent to the dead-letter topic, "
                                   "by reason (the seqstream-reason header)", labels=["reason"])
        for reason in sorted(set(Reason.ALL) | set(m.dead_letter)):
            dead.add_metric([reason], m.dead_letter.get(reason, 0))
        yield dead
        yield CounterMetricFamily("seqstream_late_events", "Events scored after a later event of "
                                  "the same user (out of order)", value=m.late)
        yield _histogram("seqstream_event_latency_seconds", "Arrival of an event at the worker "
                         "(faust hands it to the stream) -> its prediction handed to the producer",
                         m.latency)
        yield _histogram("seqstream_event_time_lag_seconds", "Event time (the event's ts) -> its "
                         "prediction handed to the producer: the backfill lag", m.event_time_lag)
        yield _histogram("seqstream_batch_seconds", "Wall time of one scored micro-batch (decode, "
                         "order, state, model, send)", m.batch_time)
        yield _histogram("seqstream_batch_events", "Events scored per micro-batch", m.batch_events)
        yield _histogram("seqstream_state_bytes", "Size of an encoded user state written to the "
                         "table", m.state_size)
        lag = GaugeMetricFamily("seqstream_consumer_lag", "Records in an assigned partition beyond "
                                "the group's committed offset (last fetched highwater - committed "
                                "offset)", labels=["topic", "partition"])
        for (topic, partition), n in sorted(p.fetch_watch.consumer_lag().items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield GaugeMetricFamily("seqstream_model_version", "Model version serving predictions",
                                value=p.scorer.scoring.version)
        alerts = CounterMetricFamily("seqstream_churn_alerts", "Messages sent to churn-alerts, by "
                                     "kind (alert: a user went quiet; returned: an alerted user "
                                     "came back)", labels=["kind"])
        alerts.add_metric(["alert"], m.churn_alerts)
        alerts.add_metric(["returned"], m.churn_returns)
        yield alerts
        promoted, rejected = _trainer_counts(p)
        promotions = CounterMetricFamily("seqstream_online_promotions", "Online-learning rounds of "
                                         "the trainer in this worker, by result (0 when the "
                                         "trainer runs elsewhere)", labels=["result"])
        promotions.add_metric(["promoted"], promoted)
        promotions.add_metric(["rejected"], rejected)
        yield promotions
        yield CounterMetricFamily("seqstream_rebalances", "Consumer-group rebalances this worker "
                                  "went through (its first assignment included)",
                                  value=getattr(p.wiring.app, "rebalancing_count", 0))
        yield GaugeMetricFamily("seqstream_ready", "1 when /readyz answers 200, else 0",
                                value=0 if p.health.readiness() else 1)
        yield GaugeMetricFamily("seqstream_reorder_buffer_events", "Events parked in the reorder "
                                "buffer, waiting for the other input topics", value=m.buffered)
        yield CounterMetricFamily("seqstream_redelivered_events", "Events skipped because the "
                                  "user state already held them (at-least-once redelivery)",
                                  value=m.redeliveries)


def _histogram(name: str, doc: str, h: Any) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


def _trainer_counts(pipeline: Any) -> tuple[int, int]:
    online = pipeline.extensions.get("online")
    trainer = getattr(online, "trainer", None)
    if trainer is None:
        return 0, 0
    return int(trainer.metrics.promoted), int(trainer.metrics.rejected)


def make_registry(pipeline: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipeline))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
