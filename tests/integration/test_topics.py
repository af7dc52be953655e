"""`seqstream topics create` on the real broker: what the topics keep, and a bad replication
factor as one line."""
from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.config import Settings
from stream.topics import TopicError, create_topics, delete_topics

pytestmark = pytest.mark.integration

LONG_AGO_MS = 1_500_000_000_000  # 2017: a replayed historical log's event time


def test_inputs_keep_arrival_time_so_retention_cannot_delete_a_replayed_log(kafka_bootstrap):
    settings = Settings(prefix=f"t{uuid.uuid4().hex[:8]}.", app_id=f"t{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, settings, 1)
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        before_ms = int(time.time() * 1000)
        meta = producer.send(settings.input_topics[0], b"x", timestamp_ms=LONG_AGO_MS).get(timeout=30)
        producer.send(settings.predictions_topic, b"y", timestamp_ms=LONG_AGO_MS).get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                 consumer_timeout_ms=10_000)
        consumer.assign([TopicPartition(settings.input_topics[0], 0),
                         TopicPartition(settings.predictions_topic, 0)])
        stamps = {r.topic: (r.timestamp, r.timestamp_type) for r in consumer}
        consumer.close()
        # the input record carries the time it arrived (type 1 = LogAppendTime) ...
        assert stamps[settings.input_topics[0]][1] == 1 and stamps[settings.input_topics[0]][0] >= before_ms
        assert meta.timestamp >= before_ms
        # ... while other topics keep the producer's timestamp (type 0 = CreateTime)
        assert stamps[settings.predictions_topic] == (LONG_AGO_MS, 0)
    finally:
        delete_topics(kafka_bootstrap, settings)


def test_a_replication_factor_the_cluster_cannot_hold_is_one_line(kafka_bootstrap):
    settings = Settings(prefix=f"t{uuid.uuid4().hex[:8]}.", app_id=f"t{uuid.uuid4().hex[:8]}")
    with pytest.raises(TopicError, match="replication factor 3 is more than the cluster's brokers"):
        create_topics(kafka_bootstrap, settings, 1, replication_factor=3)
    delete_topics(kafka_bootstrap, settings)


def test_input_topics_that_keep_the_producers_time_are_named(kafka_bootstrap, capsys):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from stream.cli.main import main
    from stream.topics import historical_time_topics

    settings = Settings(prefix=f"t{uuid.uuid4().hex[:8]}.", app_id=f"t{uuid.uuid4().hex[:8]}")
    create_topics(kafka_bootstrap, settings, 1)
    try:
        assert historical_time_topics(kafka_bootstrap, settings) == []
        # a topic made by hand (or by an older release) keeps CreateTime, the broker's default
        click = settings.input_topics[0]
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.delete_topics([click])
        deadline = time.monotonic() + 30
        while click in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.2)
        admin.create_topics([NewTopic(click, 1, 1)])
        admin.close()
        assert historical_time_topics(kafka_bootstrap, settings) == [click]
        capsys.readouterr()
        assert main(["topics", "check", "--broker", kafka_bootstrap, "--prefix", settings.prefix,
                     "--app-id", settings.app_id]) == 0
        err = capsys.readouterr().err
        assert f"warning: {click} keep the producer's timestamp" in err
    finally:
        delete_topics(kafka_bootstrap, settings)
