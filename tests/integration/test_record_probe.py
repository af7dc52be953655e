"""The record probe (stream/worker/probe.py) on the real broker: it tells an offset that holds a
record from one that holds none (a transaction's commit marker, an aborted record), and reads a
group's committed offsets without joining the group."""
from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from stream.worker.probe import RecordProbe

pytestmark = pytest.mark.integration


def test_markers_and_aborted_records_hold_no_record(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"probe-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    producer.begin_transaction()
    committed = [producer.send(topic, b"a", partition=0), producer.send(topic, b"b", partition=0)]
    producer.commit_transaction()  # offsets 0, 1; the commit marker takes 2
    producer.begin_transaction()
    aborted = producer.send(topic, b"aborted", partition=0)
    producer.flush()  # written, then aborted
    producer.abort_transaction()  # offset 3; the abort marker takes 4
    producer.begin_transaction()
    last = producer.send(topic, b"c", partition=0)
    producer.commit_transaction()  # offset 5; marker 6
    producer.close()
    assert [f.get(10).offset for f in committed] == [0, 1]
    assert aborted.get(10).offset == 3 and last.get(10).offset == 5

    probe = RecordProbe(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", isolation_level="read_committed")
    try:
        assert probe.first_record(topic, 0, 0, 7) == 0
        assert probe.first_record(topic, 0, 1, 2) == 1
        assert probe.first_record(topic, 0, 2, 3) is None  # the commit marker
        assert probe.first_record(topic, 0, 2, 5) is None  # marker, aborted record, marker
        assert probe.first_record(topic, 0, 2, 6) == 5
        assert probe.first_record(topic, 0, 6, 7) is None  # the last marker, at the end of the log
    finally:
        probe.close()


def test_committed_offsets_are_read_without_joining_the_group(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    owner = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    owner.assign([TopicPartition(topic, 0)])
    owner.commit({TopicPartition(topic, 0): OffsetAndMetadata(42, "", -1)})
    owner.close()
    probe = RecordProbe(kafka_bootstrap, group)
    try:
        assert probe.committed([(topic, 0), (topic, 1)]) == {(topic, 0): 42, (topic, 1): None}
    finally:
        probe.close()
