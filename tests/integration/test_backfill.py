"""The backfill recipe (README): replay history into a fresh deployment, then switch the same
app id to the live topics; users keep their state."""
from __future__ import annotations

import uuid

import msgpack
import numpy as np
import pytest
from kafka import KafkaProducer

from models.schema import LogEvent
from models.synthetic import GeneratorConfig, generate
from stream.config import Settings
from stream.events import encode_value, input_topic, user_key
from stream.replay.loop import replay_events
from stream.replay.producer import Replayer
from stream.topics import create_topics, delete_topics
from tests.integration.workers import WorkerProcess, consume_until, untrained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", 300, 20,
                                hidden=16, emb=8)


def test_backfill_then_switch_to_live_keeps_user_state(kafka_bootstrap, checkpoint, tmp_path):
    tag = uuid.uuid4().hex[:8]
    history = Settings(prefix=f"hist{tag}.", app_id=f"shop-{tag}", broker=kafka_bootstrap)
    live = Settings(prefix=f"live{tag}.", app_id=history.app_id, broker=kafka_bootstrap)
    create_topics(kafka_bootstrap, history, partitions=2)
    create_topics(kafka_bootstrap, live, partitions=2)
    log = generate(GeneratorConfig(users=30, events=400, items=300, categories=20, days=5, seed=2))
    try:
        # 1. backfill: history replayed at max speed into the history topics
        worker = WorkerProcess(history, checkpoint, tmp_path / "state", tmp_path / "hist.log")
        try:
            worker.wait_ready()
            replayer = Replayer(kafka_bootstrap, prefix=history.prefix)
            replay_events(log.events(), replayer, speed=None, progress=False)
            replayer.close()
            preds = consume_until(kafka_bootstrap, history.predictions_topic, len(log), 120, [worker])
            assert len(preds) == len(log)
        finally:
            worker.stop()
        # 2. the same app id (same state changelog) now reads the live topics
        user = int(np.bincount(log.user_id).argmax())
        n_hist = int((log.user_id == user).sum())
        worker = WorkerProcess(live, checkpoint, tmp_path / "state", tmp_path / "live.log")
        try:
            worker.wait_ready()
            ev = LogEvent(user, 7, "cart", int(log.ts_ms[-1]) + 60_000, category_id=3)
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
            producer.send(input_topic("cart", live.prefix), key=user_key(user), value=encode_value(ev))
            producer.flush(10)
            producer.close()
            [rec] = consume_until(kafka_bootstrap, live.predictions_topic, 1, 60, [worker])
            msg = msgpack.unpackb(rec.value, raw=False)
            assert msg["user_id"] == user
            assert msg["user_events"] == n_hist + 1  # history carried over, not a fresh user
        finally:
            worker.stop()
    finally:
        delete_topics(kafka_bootstrap, history)
        delete_topics(kafka_bootstrap, live)
