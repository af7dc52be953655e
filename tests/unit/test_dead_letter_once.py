"""A malformed record read again (stream/worker/delivery.py) goes to dead-letter once, through the
pipeline's own batch code (stream/worker/pipeline.py), with fakes for faust."""
import asyncio
from types import SimpleNamespace

import msgpack
import pytest

from stream.config import Settings
from stream.worker.pipeline import ScoringPipeline

pytestmark = pytest.mark.unit


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def get_topic_name(self) -> str:
        return "predictions"

    async def send(self, **record) -> None:
        self.sent.append(record)


def fev(topic: str, partition: int, offset: int, value: bytes):
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset, key=b"1",
                              value=value, time_in=None)
    return SimpleNamespace(message=message)


def test_a_malformed_record_read_again_is_dead_lettered_once():
    settings = Settings(prefix="t.")
    dead = FakeTopic()
    wiring = SimpleNamespace(app=SimpleNamespace(topics=[], producer=None, consumer=None),
                             source=None, predictions=FakeTopic(), dead_letter=dead,
                             churn_alerts=FakeTopic(), churn_commands=None, states={}, partitions=1,
                             profiles=FakeTopic(), anomalies=FakeTopic())
    pipeline = ScoringPipeline(settings, wiring, scorer=SimpleNamespace(redeliveries=0))
    click = settings.input_topics[0]
    garbage = [fev(click, 0, o, b"\xc1garbage %d" % o) for o in range(4)]

    async def run() -> None:
        await pipeline._process(garbage[:3])
        await pipeline._process(garbage[1:])  # read again from offset 1, and one new record

    asyncio.run(run())
    offsets = [msgpack.unpackb(r["value"], raw=False)["offset"] for r in dead.sent]
    assert offsets == [0, 1, 2, 3]
    pipeline.executor.shutdown()
