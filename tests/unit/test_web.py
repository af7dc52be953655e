"""The worker's web pieces without Kafka: the feed's auth and exposure check, the health logic
(with a fake FetchWatch), the batch histograms, the feed, and the Prometheus exposition."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from faust.types import TP
from prometheus_client.parser import text_string_to_metric_families

from stream.config import ConfigError, Settings
from stream.events import Event, Prediction
from stream.worker.exporter import make_registry, render
from stream.worker.feed import Feed
from stream.worker.health import Health
from stream.worker.metrics import BatchHistogram, WorkerMetrics
from stream.worker.web import authorized, check_exposure, is_loopback

pytestmark = pytest.mark.unit


# -- auth and exposure ---------------------------------------------------------------------

def test_authorized_needs_the_exact_bearer_token():
    assert authorized("", None) and authorized("", "Bearer anything")  # no token set: open
    assert authorized("tok", "Bearer tok") and authorized("tok", "bearer  tok ")
    for header in (None, "", "tok", "Basic tok", "Bearer", "Bearer tok2", "Bearer to", "Bearer TOK"):
        assert not authorized("tok", header), header


def test_loopback_hosts():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "worker-0.example.com"):
        assert not is_loopback(host), host


def test_non_loopback_bind_without_a_token_is_refused():
    with pytest.raises(ConfigError) as err:
        check_exposure(Settings(web_port=6066, web_host="0.0.0.0"))
    assert str(err.value) == "--web-host 0.0.0.0 exposes user ids on /feed: set SEQSTREAM_WEB_TOKEN"
    check_exposure(Settings(web_port=6066, web_host="0.0.0.0", web_token="t"))
    check_exposure(Settings(web_port=6066, web_host="127.0.0.1"))
    check_exposure(Settings(web_port=0, web_host="0.0.0.0"))  # no server, nothing exposed


# -- health --------------------------------------------------------------------------------

class FakeWatch:
    """Stands in for FetchWatch: what faust's consumer and tables would say."""

    def __init__(self) -> None:
        self.recovery: str | None = "waiting for partition assignment"
        self.inputs = [TP("click", 0), TP("cart", 0)]
        self.idle: list = []
        self.pending = 0
        self.paused: set = set()

    def recovery_reason(self):
        return self.recovery

    def assigned_inputs(self):
        return self.inputs

    def unpositioned(self, inputs):
        return [tp for tp in inputs if tp in self.idle]

    def waiting(self):
        return self.pending

    def backpressured(self):
        return self.paused


def make_health(stall_s: float = 60.0):
    watch, now, events = FakeWatch(), [1000.0], [0]
    in_flight = [False]
    health = Health(watch, lambda: events[0], lambda paused: in_flight[0], stall_s=stall_s,
                    clock=lambda: now[0])
    return health, watch, now, events, in_flight


def test_readiness_reasons_in_order():
    health, watch, *_ = make_health()
    assert health.readiness() == "waiting for partition assignment"
    watch.recovery = "recovering table user-state (120 changelog records to go)"
    assert health.readiness() == watch.recovery
    watch.recovery = None
    watch.inputs = []
    assert health.readiness() == "no partitions assigned"
    watch.inputs = [TP("click", 0), TP("cart", 1)]
    watch.idle = [TP("cart", 1)]
    assert health.readiness() == "not fetching cart[1]"
    watch.idle = []
    assert health.readiness() is None


def test_stalled_only_while_records_wait_without_progress():
    health, watch, now, events, in_flight = make_health(stall_s=60)
    watch.recovery = None
    # quiet topics: nothing waiting, nothing arriving -> live however long
    now[0] += 600
    assert health.liveness() is None
    # records wait, events keep arriving -> live
    watch.pending = 500
    for _ in range(10):
        now[0] += 30
        events[0] += 100
        health.tick()
    assert health.liveness() is None
    # records wait, nothing arrives for 61 s -> stalled, and so not ready either
    for _ in range(61):
        now[0] += 1
        health.tick()
    reason = health.liveness()
    assert reason is not None and reason.startswith("consumer stalled") and "\n" not in reason
    assert health.readiness() == reason
    # progress again -> live at once
    events[0] += 1
    assert health.liveness() is None and health.readiness() is None
    # in flight (e.g. a batch stuck in the scorer) counts as waiting too
    watch.pending = 0
    in_flight[0] = True
    now[0] += 61
    health.tick()
    assert health.liveness() is not None


def test_recovery_is_not_a_stall():
    health, watch, now, _, _ = make_health(stall_s=60)
    watch.recovery = "recovering table user-state"
    watch.pending = 10_000
    for _ in range(300):
        now[0] += 1
        health.tick()
    assert health.liveness() is None
    assert health.readiness() == "recovering table user-state"


# -- histograms, feed, exposition -----------------------------------------------------------

def test_batch_histogram_buckets_are_le():
    h = BatchHistogram([0.01, 0.1, 1.0])
    h.observe_many([0.005, 0.01, 0.05, 1.0, 5.0])
    h.observe(0.1)
    assert h.cumulative() == [("0.01", 2), ("0.1", 4), ("1.0", 5), ("+Inf", 6)]
    assert h.count == 6 and h.sum == pytest.approx(6.165)
    h.observe_many([])
    assert h.count == 6


def prediction(i: int) -> Prediction:
    ev = Event(user_id=i, item_id=100 + i, action="cart", ts=1_700_000_000_000 + i, topic="p.cart",
               partition=i % 2, offset=i)
    return Prediction(i, ev, 7, {"click": 0.2, "cart": 0.3, "purchase": 0.5},
                      [(5, 0.9), (6, 0.1)], 0.25, False, 1)


def test_feed_keeps_the_last_50_and_builds_items_on_request():
    feed = Feed()
    for start in range(0, 120, 40):
        feed.add_predictions([prediction(i) for i in range(start, start + 40)])
    feed.add_churn(9, {"type": "churn", "risk": 0.75, "alert_ts": 123})
    feed.add_churn(9, {"type": "returned", "returned_ts": 456}, risk=0.1)
    out = feed.to_json(model_version=7, app_id="app")
    assert [p["offset"] for p in out["predictions"]] == list(range(70, 120))
    assert out["predictions"][-1] == {
        "user": "119", "topic": "p.cart", "partition": 1, "offset": 119, "action": "cart",
        "item": "219", "top_items": ["5", "6"],
        "next_action": {"click": 0.2, "cart": 0.3, "purchase": 0.5}, "churn_risk": 0.25,
        "ts_ms": 1_700_000_000_119}
    assert out["alerts"] == [{"user": "9", "kind": "alert", "risk": 0.75, "ts_ms": 123},
                             {"user": "9", "kind": "returned", "risk": 0.1, "ts_ms": 456}]
    assert out["model"] == {"version": 7} and out["worker"]["app_id"] == "app"
    for i in range(60):
        feed.add_churn(i, {"type": "churn", "risk": 0.5, "alert_ts": i})
    assert len(feed.to_json(model_version=7, app_id="app")["alerts"]) == 50


def fake_pipeline(ready: str | None = None):
    settings = Settings(prefix="p.")
    m = WorkerMetrics()
    m.events_by_topic = Counter({"p.click": 5, "p.cart": 2})
    m.predictions = 6
    m.dead_letter = Counter({"not-msgpack": 1})
    m.churn_alerts, m.churn_returns = 2, 1
    m.latency.observe_many([0.004, 0.02, 0.02, 0.3, 0.3, 2.0])
    trainer = SimpleNamespace(metrics=SimpleNamespace(promoted=3, rejected=4))
    return SimpleNamespace(
        settings=settings, metrics=m,
        fetch_watch=SimpleNamespace(consumer_lag=lambda: {("p.click", 0): 4, ("p.cart", 1): 0}),
        scorer=SimpleNamespace(scoring=SimpleNamespace(version=12)),
        wiring=SimpleNamespace(app=SimpleNamespace(rebalancing_count=2)),
        health=SimpleNamespace(readiness=lambda: ready),
        extensions={"online": SimpleNamespace(trainer=trainer)})


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_reads_the_pipeline():
    pipeline = fake_pipeline()
    s = samples(render(make_registry(pipeline)).decode())
    assert s[("seqstream_events_total", (("topic", "p.click"),))] == 5
    assert s[("seqstream_events_total", (("topic", "p.purchase"),))] == 0
    assert s[("seqstream_predictions_total", ())] == 6
    assert s[("seqstream_dead_letter_total", (("reason", "not-msgpack"),))] == 1
    assert s[("seqstream_dead_letter_total", (("reason", "oversized"),))] == 0
    assert s[("seqstream_event_latency_seconds_count", ())] == 6
    assert s[("seqstream_event_latency_seconds_bucket", (("le", "0.025"),))] == 3
    assert s[("seqstream_event_latency_seconds_bucket", (("le", "+Inf"),))] == 6
    assert s[("seqstream_consumer_lag", (("partition", "0"), ("topic", "p.click")))] == 4
    assert s[("seqstream_model_version", ())] == 12
    assert s[("seqstream_churn_alerts_total", (("kind", "alert"),))] == 2
    assert s[("seqstream_churn_alerts_total", (("kind", "returned"),))] == 1
    assert s[("seqstream_online_promotions_total", (("result", "promoted"),))] == 3
    assert s[("seqstream_online_promotions_total", (("result", "rejected"),))] == 4
    assert s[("seqstream_rebalances_total", ())] == 2
    assert s[("seqstream_ready", ())] == 1
    # a second pipeline in the same process has its own registry: no clash, its own figures
    other = fake_pipeline(ready="no partitions assigned")
    other.metrics.predictions = 1
    s2 = samples(render(make_registry(other)).decode())
    assert s2[("seqstream_predictions_total", ())] == 1 and s2[("seqstream_ready", ())] == 0
    # every family the contract names is there
    names = {name for name, _ in s}
    for want in ("seqstream_late_events_total", "seqstream_event_time_lag_seconds_count",
                 "seqstream_batch_seconds_count", "seqstream_batch_events_count",
                 "seqstream_state_bytes_count"):
        assert want in names, want
