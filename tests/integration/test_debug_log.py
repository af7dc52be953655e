"""A worker at `--log-level debug` serves like one at info: events sent before it starts and
while it runs each get their prediction, read by an independent kafka-python consumer.

Regression test for "a worker at debug level consumes nothing" (test_security.py used to avoid
the debug level for it). The level was never the cause: the events were historical (a replay
stamps records with their event time), the input topics then kept the producer's timestamp, and
the broker's first retention pass (30 s after it starts, then every 5 minutes) deleted them
before the slower debug worker had read them; an info worker just won the race. Input topics
keep the arrival time since `topics create` sets LogAppendTime (test_topics.py). Here the
records carry historical producer timestamps, as a replay's do, and on a freshly started
embedded broker the worker starts only after that first retention pass: with input topics that
keep the producer's timestamp, this test fails (predictions for none of the backlog)."""
from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaProducer

from stream.events import encode_value, input_topic, user_key
from tests.integration.test_worker import make_events
from tests.integration.workers import WorkerProcess, consume_until, untrained_checkpoint

pytestmark = pytest.mark.integration

FIRST_RETENTION_PASS_S = 30.0  # the broker's log.initial.task.delay.ms (Kafka's default)


def _send(bootstrap: str, settings, events) -> None:  # noqa: ANN001
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sent = [producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev), timestamp_ms=ev.ts_ms)  # 2023: long past retention
            for ev in events]
    producer.flush(30)
    for future in sent:
        future.get(timeout=30)
    producer.close()


def _after_first_retention_pass(embedded_broker) -> None:  # noqa: ANN001
    """Wait until the broker's first retention pass is over (a broker up for longer, or an
    external one, passes at a time we cannot know: no wait)."""
    if embedded_broker is None:
        return
    up_s = time.time() - embedded_broker.pid_file.stat().st_mtime  # written at launch
    if up_s < FIRST_RETENTION_PASS_S + 10:
        time.sleep(FIRST_RETENTION_PASS_S + 10 - up_s)


def test_debug_level_worker_predicts_every_event(kafka_bootstrap, embedded_broker, deployment,
                                                 tmp_path: Path) -> None:
    settings = deployment
    model = untrained_checkpoint(tmp_path / "model.pt", 200, 10)
    events = make_events(80, seed=7)
    before, after = events[:40], events[40:]
    _send(kafka_bootstrap, settings, before)  # a backlog the worker finds when it starts
    _after_first_retention_pass(embedded_broker)
    worker = WorkerProcess(settings, model, tmp_path / "state", tmp_path / "worker.log",
                           "--no-online", "--log-level", "debug")
    try:
        worker.wait_ready(90)
        _send(kafka_bootstrap, settings, after)  # and events sent while it runs
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(events), 90, [worker])
    finally:
        worker.stop()
    text = worker.log.read_text(errors="replace")
    assert "[DEBUG]" in text, "the worker did not log at debug level"
    got = sorted((p["event"]["topic"], p["event"]["partition"], p["event"]["offset"])
                 for p in (msgpack.unpackb(r.value, raw=False) for r in preds))
    assert len(got) == len(events), f"{len(got)} predictions for {len(events)} events\n{worker.tail()}"
    assert len(set(got)) == len(events)  # one per event, none twice
    assert {p["user_id"] for p in (msgpack.unpackb(r.value, raw=False) for r in preds)} == \
        {ev.user_id for ev in events}
