"""Event time drives everything: the same generated log replayed at max speed through one worker
and paced through two workers gives the same predictions and the same churn alerts; the alerts
find the generator's churners and leave active users alone."""
from __future__ import annotations

import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest

from models.synthetic import GeneratorConfig, generate
from stream.config import Settings
from stream.replay.loop import replay_events
from stream.replay.producer import Replayer
from stream.topics import create_topics, delete_topics
from tests.integration.workers import WorkerProcess, consume_until, untrained_checkpoint

DAY_MS = 24 * 3600 * 1000
INACTIVITY_MS = 3 * DAY_MS
CHURN_FLAGS = ("--churn-inactivity-ms", str(INACTIVITY_MS), "--churn-risk-threshold", "0",
               "--churn-sweep-s", "0.5", "--allowed-lateness-ms", "0")
# A max-speed replay's producer can append a full click batch before a lingering cart batch
# that holds an earlier event; the grace covers such stragglers even on a loaded machine.
ORDER_FLAGS = ("--order-grace-ms", "1000")


@pytest.fixture(scope="module")
def log():
    return generate(GeneratorConfig(users=80, events=1500, items=400, categories=20, days=20,
                                    churn_fraction=0.3, seed=5))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", 400, 20)


def run_deployment(bootstrap: str, log, model: Path, tmp: Path, *, workers: int,
                   speed: float | None) -> tuple[list[dict], list[dict]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(prefix=f"d{tag}.", app_id=f"det-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, partitions=4)
    procs = [WorkerProcess(settings, model, tmp / f"{tag}-{i}", tmp / f"{tag}-{i}.log", *CHURN_FLAGS,
                           *ORDER_FLAGS)
             for i in range(workers)]
    try:
        for p in procs:
            p.wait_ready()
        if workers > 1:  # let the group settle so no partition moves mid-replay
            import time
            time.sleep(6)
        replayer = Replayer(bootstrap, prefix=settings.prefix)
        try:
            replay_events(log.events(), replayer, speed=speed, progress=False)
        finally:
            replayer.close()
        preds = consume_until(bootstrap, settings.predictions_topic, len(log), 120, procs)
        # the sweep runs every 0.5 s of wall time; give it a few rounds after the last event
        alerts = consume_until(bootstrap, settings.churn_alerts_topic, 10**9, 6, procs, settle_s=0)
        return ([msgpack.unpackb(r.value, raw=False) for r in preds],
                [msgpack.unpackb(r.value, raw=False) for r in alerts])
    finally:
        for p in procs:
            p.stop()
        delete_topics(bootstrap, settings)


def prediction_key(m: dict) -> tuple:
    ev = m["event"]
    return (m["user_id"], ev["ts"], ev["topic"].split(".", 1)[1], ev["offset"], ev["item_id"])


def assert_same_predictions(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    by_key = {prediction_key(m): m for m in b}
    assert len(by_key) == len(b), "duplicate predictions"
    for m in a:
        other = by_key[prediction_key(m)]
        # identical apart from wall-clock fields; float scores may differ in the last bits
        # because batches of different sizes take different BLAS paths
        assert m["user_events"] == other["user_events"] and m["late"] == other["late"]
        # the same ranking, except that items whose scores tie within that tolerance may swap
        mine, theirs = dict(m["next_items"]), dict(other["next_items"])
        for (i, si), (j, sj) in zip(m["next_items"][:10], other["next_items"][:10]):
            assert i == j or abs(si - sj) <= 1e-4 and abs(mine[i] - mine.get(j, -1e9)) <= 2e-4, \
                (m["next_items"][:10], other["next_items"][:10])
        np.testing.assert_allclose([s for _, s in m["next_items"]],
                                   [s for _, s in other["next_items"]], atol=1e-4)
        for action, p in m["next_action"].items():
            assert p == pytest.approx(other["next_action"][action], abs=1e-4)


def alert_key(m: dict) -> tuple:
    return (m["type"], m["user_id"], m["last_event_ts"], m.get("alert_ts"), m.get("returned_ts"),
            m.get("reason"))


def test_replays_are_deterministic_and_alerts_find_churners(kafka_bootstrap, log, checkpoint,
                                                           tmp_path):
    fast_preds, fast_alerts = run_deployment(kafka_bootstrap, log, checkpoint, tmp_path,
                                             workers=1, speed=None)
    span_s = (int(log.ts_ms[-1]) - int(log.ts_ms[0])) / 1000
    paced_preds, paced_alerts = run_deployment(kafka_bootstrap, log, checkpoint, tmp_path,
                                               workers=2, speed=span_s / 8)  # ~8 s of wall time

    assert len(fast_preds) == len(log)
    assert_same_predictions(fast_preds, paced_preds)
    # event time, not arrival: every user's predictions count their events in order
    for preds in (fast_preds, paced_preds):
        assert not any(m["late"] for m in preds)
    fast_keys, paced_keys = sorted(map(alert_key, fast_alerts)), sorted(map(alert_key, paced_alerts))
    assert fast_keys == paced_keys, (set(fast_keys) ^ set(paced_keys), len(fast_keys), len(paced_keys))

    # churn: every churner quiet for the inactivity window (by the end of the log) is alerted;
    # a user with an open alert (no `returned` after it) is quiet at the end of the log
    end_ts = int(log.ts_ms[-1])
    last_ts = {}
    for u, ts in zip(log.user_id.tolist(), log.ts_ms.tolist()):
        last_ts[u] = ts
    alerted = {m["user_id"] for m in fast_alerts if m["type"] == "churn"}
    returned = {m["user_id"] for m in fast_alerts if m["type"] == "returned"}
    due_churners = {u for u in log.churners if last_ts[u] + INACTIVITY_MS <= end_ts - DAY_MS}
    assert due_churners, "the generated log should have churners"
    assert due_churners <= alerted
    active = {u for u, ts in last_ts.items() if ts >= end_ts - INACTIVITY_MS}
    assert not (active & (alerted - returned))
    for m in fast_alerts:
        if m["type"] == "churn":
            assert m["alert_ts"] == m["last_event_ts"] + INACTIVITY_MS
