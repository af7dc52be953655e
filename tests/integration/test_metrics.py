"""The worker's web endpoints against the real broker, judged by an independent consumer.

One `seqstream worker` process (online learning on, its trainer in the worker) with --web-port
and SEQSTREAM_WEB_TOKEN: /readyz goes 503 -> 200; after N valid and M malformed events, /metrics
agrees with what a kafka-python consumer read from predictions and dead-letter; /feed needs the
token; SIGTERM under load exits 0 within 10 s and a restarted worker loses nothing and predicts
nothing twice."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import msgpack
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from models.schema import ACTIONS, LogEvent
from stream.broker.process import free_port
from stream.events import encode_value, input_topic, user_key
from tests.integration.test_worker import (T0, checkpoint, make_events,  # noqa: F401 - fixture
                                           malformed_corpus)
from tests.integration.workers import WorkerProcess, consume_until

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-the-feed"


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other than 127.x (found without sending anything)."""
    found = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.123", 9))  # UDP connect picks the outgoing address, sends nothing
            found.add(probe.getsockname()[0])
    except OSError:
        pass
    try:
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}"""
    status, body, headers = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def wait_ready(worker: WorkerProcess, port: int, timeout_s: float = 90) -> list[tuple[int, str]]:
    """Poll /readyz until 200; every distinct (status, body) seen on the way, in order."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            pytest.fail(f"worker exited early:\n{worker.tail()}")
        try:
            status, body, _ = get(port, "/readyz")
        except OSError:  # not listening yet
            time.sleep(0.05)
            continue
        if not seen or seen[-1] != (status, body.decode()):
            seen.append((status, body.decode()))
        if status == 200:
            return seen
        time.sleep(0.05)
    pytest.fail(f"/readyz not 200 in {timeout_s}s: {seen}\n{worker.tail()}")


def test_metrics_health_feed_and_sigterm(kafka_bootstrap, deployment, checkpoint, tmp_path):
    settings = deployment
    port = free_port()
    env = {"SEQSTREAM_WEB_TOKEN": TOKEN}
    args = ("--web-port", str(port))
    worker = WorkerProcess(settings, checkpoint, tmp_path / "state", tmp_path / "worker.log",
                           *args, env=env)
    sent: list[LogEvent] = []
    try:
        seen = wait_ready(worker, port)
        # the server answers before the group has assigned partitions and recovered the table
        assert seen[0][0] == 503 and seen[-1] == (200, "ready\n"), seen
        for status, body in seen[:-1]:
            assert status == 503 and body.endswith("\n") and body.count("\n") == 1, seen
        # bound to 127.0.0.1 (the default --web-host): not reachable on this host's other addresses
        for address in non_loopback_addresses():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()

        events = make_events(300, seed=1)
        corpus = malformed_corpus()
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        for ev in events:
            producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev))
        for topic, key, value, _ in corpus:
            producer.send(settings.topic(topic), key=key, value=value)
        producer.flush(30)
        producer.close()
        sent += events
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(events), 120, [worker])
        dead = consume_until(kafka_bootstrap, settings.dead_letter_topic, len(corpus), 30, [worker])
        assert len(preds) == len(events) and len(dead) == len(corpus), worker.tail()
        reasons = Counter(dict(r.headers)["seqstream-reason"].decode() for r in dead)

        # consumer lag reaches 0 once the worker has committed (every 2 s)
        deadline = time.monotonic() + 30
        while True:
            m = scrape(port)
            lag = m["seqstream_consumer_lag"]
            if lag and not any(lag.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert lag and set(lag.values()) == {0.0}, lag
        assert {dict(k)["topic"] for k in lag} >= set(settings.input_topics)

        n, bad = len(events), len(corpus)
        assert m["seqstream_predictions_total"][()] == n
        by_topic = {dict(k)["topic"]: v for k, v in m["seqstream_events_total"].items()}
        assert set(by_topic) == set(settings.input_topics)
        assert sum(by_topic.values()) == n + bad
        sent_by_topic = Counter(input_topic(e.action, settings.prefix) for e in events)
        sent_by_topic.update(settings.topic(c[0]) for c in corpus)
        assert by_topic == dict(sent_by_topic)
        dead_by_reason = {dict(k)["reason"]: v for k, v in m["seqstream_dead_letter_total"].items() if v}
        assert dead_by_reason == dict(reasons)
        assert m["seqstream_event_latency_seconds_count"][()] == n
        assert m["seqstream_event_time_lag_seconds_count"][()] == n
        assert m["seqstream_batch_events_sum"][()] == n
        assert m["seqstream_batch_seconds_count"][()] == m["seqstream_batch_events_count"][()]
        inf = (("le", "+Inf"),)
        assert m["seqstream_event_latency_seconds_bucket"][inf] == n
        assert 0 < m["seqstream_event_latency_seconds_sum"][()] < 60 * n
        assert m["seqstream_model_version"][()] == 3
        assert m["seqstream_ready"][()] == 1
        assert m["seqstream_rebalances_total"][()] >= 1
        assert m["seqstream_state_bytes_count"][()] >= 1
        assert set(m["seqstream_online_promotions_total"]) == {(("result", "promoted"),),
                                                               (("result", "rejected"),)}
        assert set(m["seqstream_churn_alerts_total"]) == {(("kind", "alert"),), (("kind", "returned"),)}
        # no user ids: the only labels are topics, partitions, reasons, kinds, results, buckets
        labels = {name for series in m.values() for key in series for name, _ in key}
        assert labels <= {"topic", "partition", "reason", "kind", "result", "le"}, labels

        assert get(port, "/healthz")[:2] == (200, b"ok\n")
        assert get(port, "/")[0] == 200
        # the feed holds user ids: the token is required
        status, body, headers = get(port, "/feed")
        assert status == 401 and body.count(b"\n") == 1 and "Bearer" in headers["WWW-Authenticate"]
        assert get(port, "/feed", token="wrong")[0] == 401
        status, body, _ = get(port, "/feed", token=TOKEN)
        assert status == 200
        feed = json.loads(body)
        assert len(feed["predictions"]) == 50 and feed["model"] == {"version": 3}
        assert feed["worker"]["app_id"] == settings.app_id
        keys = {(m_["user"], m_["offset"], m_["topic"]) for m_ in feed["predictions"]}
        published = {(str(x["user_id"]), x["event"]["offset"], x["event"]["topic"])
                     for x in (msgpack.unpackb(r.value, raw=False) for r in preds)}
        assert keys <= published
        item = feed["predictions"][-1]
        assert set(item) == {"user", "topic", "partition", "offset", "action", "item", "top_items",
                             "next_action", "churn_risk", "ts_ms"}
        assert set(item["next_action"]) == set(ACTIONS) and len(item["top_items"]) == 20

        # SIGTERM under load: exit 0 within 10 s
        stop = threading.Event()
        loaded: list[LogEvent] = []
        feeder = threading.Thread(target=feed_load, args=(kafka_bootstrap, settings, stop, loaded))
        feeder.start()
        try:
            time.sleep(4)
            t0 = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            code = worker.proc.wait(30)
            took = time.monotonic() - t0
        finally:
            stop.set()
            feeder.join()
        sent += loaded
        assert code == 0, worker.tail()
        assert took <= 10.0, f"SIGTERM -> exit took {took:.1f}s\n{worker.tail()}"
    finally:
        worker.stop()

    # the restarted worker predicts every event once: nothing lost, nothing predicted twice
    worker = WorkerProcess(settings, checkpoint, tmp_path / "state", tmp_path / "worker2.log",
                           *args, env=env)
    try:
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(sent), 180, [worker],
                              settle_s=3.0)
        sources = Counter()
        for r in preds:
            ev = msgpack.unpackb(r.value, raw=False)["event"]
            sources[(ev["topic"], ev["partition"], ev["offset"])] += 1
        assert len(sources) == len(sent), worker.tail()
        twice = sum(c - 1 for c in sources.values())
        assert twice == 0, f"{twice} events predicted twice"
    finally:
        worker.stop()


def feed_load(bootstrap: str, settings, stop: threading.Event, out: list[LogEvent],
              rate: float = 800.0) -> None:
    """Valid events at about `rate`/s until `stop`."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    i = 0
    t0 = time.monotonic()
    while not stop.is_set():
        for _ in range(int(rate / 20)):
            u = i % 97
            ev = LogEvent(1000 + u, i % 200, ACTIONS[i % 3], T0 + 10**9 + i * 1000, category_id=1)
            producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev))
            out.append(ev)
            i += 1
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    producer.flush(30)
    producer.close()
