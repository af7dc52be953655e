"""The worker's pipeline logic that needs no broker."""
import msgpack
import pytest
from faust.types import TP

from stream.agents import ScoringPipeline
from stream.config import Settings

pytestmark = pytest.mark.unit


def test_paused_inputs_are_resumed_only_when_nothing_arrives():
    settings = Settings(prefix="t.")
    pipeline = ScoringPipeline(settings, wiring=None, scorer=None)  # type: ignore[arg-type]
    click0 = TP(settings.input_topics[0], 0)
    other = TP("t.training-samples", 0)
    paused = {click0, other}
    assert pipeline.stalled_inputs(paused, now=0.0) == set()  # events may still be in flight
    pipeline.metrics.events_in = 10
    assert pipeline.stalled_inputs(paused, now=4.0) == set()  # events keep arriving: real backpressure
    assert pipeline.stalled_inputs(paused, now=8.0) == set()
    assert pipeline.stalled_inputs(paused, now=9.5) == {click0}  # 5.5 s with nothing: stuck
    assert pipeline.stalled_inputs({other}, now=20.0) == set()  # not ours to resume
    pipeline.executor.shutdown()


# -- pipelined batches: a batch is scored while the one before it is still being stored ------

class FakeMessage:
    def __init__(self, ev):
        from stream.events import encode_value, user_key

        self.key, self.value = user_key(ev.user_id), encode_value(ev)
        self.topic, self.partition, self.offset = ev.topic, ev.partition, ev.offset
        self.refs = 1

    def incref(self):
        self.refs += 1


class FakeEvent:
    def __init__(self, msg):
        self.message = msg

    def ack(self):
        self.message.refs -= 1


def test_pipelined_batches_see_the_state_of_the_batch_still_in_flight():
    import asyncio
    import math
    import types

    from models.schema import LogEvent
    from stream.events import decode_event, encode_value, user_key
    from stream.scoring import Scorer
    from stream.state import decode_state
    from tests.unit.test_scoring import T0, make_scoring

    settings = Settings(prefix="t.")
    sent: list[bytes] = []

    async def send(topic, key, value, *rest):
        sent.append(value)

    wiring = types.SimpleNamespace(states={},  # the table: user key -> state bytes
                                   app=types.SimpleNamespace(producer=types.SimpleNamespace(send=send)))
    pipeline = ScoringPipeline(settings, wiring, Scorer(make_scoring(), ring_size=6))  # type: ignore[arg-type]
    pipeline.caught_up = lambda topic, partition: math.inf  # everything delivered

    def batch(user_ts: list[tuple[int, int]], offset0: int) -> list[FakeEvent]:
        out = []
        for k, (user, ts) in enumerate(user_ts):
            log_ev = LogEvent(user, 100 + k, "click", T0 + ts, category_id=1)
            ev = decode_event(user_key(user), encode_value(log_ev), topic="t.click", partition=0,
                              offset=offset0 + k, prefix="t.")
            out.append(FakeEvent(FakeMessage(ev)))
        return out

    async def run():
        first = batch([(1, 1000), (2, 1000)], 0)
        second = batch([(1, 2000), (3, 2000)], 2)
        await pipeline.process(first)
        assert 1 in pipeline._in_flight  # batch 1 is not stored yet when batch 2 reads user 1
        await pipeline.process(second)
        await pipeline.drain()
        return first + second

    handles = asyncio.run(run())
    pipeline.executor.shutdown()
    preds = [msgpack.unpackb(v, raw=False) for v in sent]
    assert [(p["user_id"], p["user_events"]) for p in preds] == [(1, 1), (2, 1), (1, 2), (3, 1)]
    assert decode_state(wiring.states[b"1"]).n_events == 2  # stored once per batch, newest last
    assert not pipeline._in_flight
    assert all(h.message.refs == 1 for h in handles)  # acked: only take_events' own ref is left
    assert pipeline.metrics.predictions == 4
