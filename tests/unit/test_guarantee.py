"""The exactly-once output path (stream/guarantee.py) against faust's own routing.

Minimal reproduction of the faust behaviour behind the duplicates that reached read_committed
consumers: TransactionManager.send picks the transactional producer from the *output* record's
partition as the consumer's metadata knows it; for a topic the worker does not consume the
consumer knows no partitions, and the record goes to the plain, non-transactional producer."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.transport.consumer import TransactionManager

from stream.guarantee import record_sender, transactional_id

pytestmark = pytest.mark.unit


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, topic, key, value, partition, timestamp, headers, *, transactional_id=None):
        self.sent.append({"topic": topic, "partition": partition, "tid": transactional_id})
        return None


def fake_app(producer: RecordingProducer) -> SimpleNamespace:
    groups = {"in.click": 1, "predictions": 7}
    return SimpleNamespace(conf=SimpleNamespace(id="app"), producer=producer,
                           assignor=SimpleNamespace(group_for_topic=groups.__getitem__))


def test_faust_sends_outputs_to_unconsumed_topics_outside_any_transaction():
    producer = RecordingProducer()
    tm = TransactionManager.__new__(TransactionManager)  # only send(): no service start needed
    tm.app = fake_app(producer)
    tm.producer = producer
    # the consumer's metadata covers consumed topics only: no partitions for "predictions"
    tm.consumer = SimpleNamespace(key_partition=lambda topic, key, partition: None)
    asyncio.run(tm.send("predictions", b"7", b"v", None, None, None))
    assert producer.sent == [{"topic": "predictions", "partition": None, "tid": None}]


def test_exactly_once_outputs_join_the_source_partitions_transaction():
    producer = RecordingProducer()
    app = fake_app(producer)
    topic = SimpleNamespace(get_topic_name=lambda: "predictions")
    send = record_sender(app, topic, "exactly_once")
    asyncio.run(send(key=b"7", value=b"v", source=("in.click", 3)))
    asyncio.run(send(key=b"7", value=b"v", source=("in.click", 0), partition=0))
    # the ids faust's TransactionManager.commit uses for the input offsets of in.click[3], [0]
    assert [s["tid"] for s in producer.sent] == ["app-1-3", "app-1-0"]
    assert transactional_id(app, "in.click", 3) == "app-1-3"
    assert [s["partition"] for s in producer.sent] == [None, 0]


def test_at_least_once_plain_records_skip_transactions():
    producer = RecordingProducer()
    topic = SimpleNamespace(get_topic_name=lambda: "predictions")
    send = record_sender(fake_app(producer), topic, "at_least_once")
    asyncio.run(send(key=b"7", value=b"v", source=("in.click", 3)))
    assert producer.sent == [{"topic": "predictions", "partition": None, "tid": None}]
