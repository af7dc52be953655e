"""take_ready's batching policy (stream/worker/batching.py) on a stand-in for faust's Stream that
has just the surface take_ready uses; the real faust stream is covered by the worker's
integration tests (tests/integration/test_worker.py, test_replay_determinism.py)."""
from __future__ import annotations

import asyncio
import time

import pytest

from stream.config import ConfigError, Settings

from stream.worker.batching import take_ready

pytestmark = pytest.mark.unit


class FakeStream:
    """Events put with `feed` pass through the processors one at a time, as faust's passive
    drainer does; `acked` records acks in order."""

    def __init__(self) -> None:
        self.enable_acks = True
        self._processors: list = []
        self.current_event = None
        self.acked: list = []
        self.should_stop = False
        self.channel = self
        self.queue: asyncio.Queue = asyncio.Queue()
        self.drainer: asyncio.Task | None = None

    def __aiter__(self):  # noqa: ANN204 - aiter(stream.channel)
        return self

    async def __anext__(self):  # noqa: ANN204 - never iterated: the drainer reads the queue
        raise StopAsyncIteration

    def add_processor(self, fun) -> None:  # noqa: ANN001
        self._processors.append(fun)

    def _enable_passive(self, channel) -> None:  # noqa: ANN001
        self.drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            value = await self.queue.get()
            self.current_event = value
            for fun in list(self._processors):
                await fun(value)

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.should_stop

    async def ack(self, event) -> None:  # noqa: ANN001
        self.acked.append(event)

    def feed(self, *values: int) -> None:
        for v in values:
            self.queue.put_nowait(v)


async def _collect(stream: FakeStream, n_batches: int, **kw) -> list[tuple[float, list[int]]]:
    out: list[tuple[float, list[int]]] = []
    async for batch in take_ready(stream, **kw):
        out.append((time.monotonic(), list(batch)))
        if len(out) == n_batches:
            break
    return out


def test_a_lone_event_is_not_held_for_the_whole_wait():
    async def run():
        stream = FakeStream()
        task = asyncio.ensure_future(_collect(stream, 1, max_events=512, within_s=5.0, idle_s=0.002))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        stream.feed(7)
        (t, batch), = await asyncio.wait_for(task, 2)
        return t - t0, batch
    waited, batch = asyncio.run(run())
    assert batch == [7]
    assert waited < 1.0  # closed by the idle rule, not the 5 s wait


def test_back_to_back_events_fill_a_batch_up_to_the_maximum():
    async def run():
        stream = FakeStream()
        stream.feed(*range(10))  # all there at once: one drain, no idle gap
        return await asyncio.wait_for(
            _collect(stream, 3, max_events=4, within_s=5.0, idle_s=0.05), 5)
    batches = [b for _, b in asyncio.run(run())]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_steady_trickle_is_cut_at_the_wait():
    async def run():
        stream = FakeStream()

        async def trickle():
            for i in range(100):
                stream.feed(i)
                await asyncio.sleep(0.002)  # far faster than the idle bound: never idle
        feeder = asyncio.ensure_future(trickle())
        out = await asyncio.wait_for(_collect(stream, 1, max_events=512, within_s=0.05, idle_s=0.5), 5)
        feeder.cancel()
        return out[0][1]
    batch = asyncio.run(run())
    assert 1 < len(batch) < 100  # several events joined, but the wait closed the batch


def test_a_batch_is_acked_only_when_the_next_one_is_asked_for():
    async def run():
        stream = FakeStream()
        stream.feed(1, 2)
        gen = take_ready(stream, max_events=2, within_s=1.0, idle_s=0.01)
        first = await asyncio.wait_for(gen.__anext__(), 2)
        acked_while_out = list(stream.acked)
        stream.feed(3)
        second = await asyncio.wait_for(gen.__anext__(), 2)
        acked_after = list(stream.acked)
        await gen.aclose()
        return first, acked_while_out, second, acked_after, stream
    first, acked_while_out, second, acked_after, stream = asyncio.run(run())
    assert first == [1, 2] and second == [3]
    assert acked_while_out == [] and acked_after == [1, 2]
    assert stream.enable_acks is True and stream._processors == []  # restored on close


def test_batch_idle_and_linger_are_checked():
    Settings(batch_wait_ms=20, batch_idle_ms=20, producer_linger_ms=0).validate()
    with pytest.raises(ConfigError, match="batch idle must be between 1 ms and the batch wait"):
        Settings(batch_wait_ms=20, batch_idle_ms=21).validate()
    with pytest.raises(ConfigError, match="batch idle"):
        Settings(batch_idle_ms=0).validate()
    with pytest.raises(ConfigError, match="producer linger must be 0-1000 ms"):
        Settings(producer_linger_ms=-1).validate()
