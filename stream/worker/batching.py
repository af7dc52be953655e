"""Micro-batches that close when the input goes quiet, not after a fixed wait.

faust's `Stream.take_events(max_, within)` closes a batch when it is full or when `within` has
passed since it began waiting, so at low load every event waits up to the whole `within`
(20 ms by default: half of the worker's latency at 100 ev/s). Here a batch closes when

- it holds `max_events`, or
- nothing was added for `idle_s`: everything the consumer had already fetched is in, and waiting
  longer only adds latency (at high load events arrive back to back, so batches still fill), or
- `within_s` has passed since its first event (a bound under a slow trickle).

Acks work as in take_events: the stream's own acks are off while batching, and a batch's events
are acked once the caller asks for the next batch (so an offset is never committed before its
event was processed). This is the one module that touches faust's Stream internals for batching
(`_enable_passive`, `current_event`, `enable_acks`); the pipeline only sees lists of events.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator


async def take_ready(stream: Any, max_events: int, within_s: float,
                     idle_s: float = 0.001) -> AsyncIterator[list[Any]]:
    """Yield lists of faust events from `stream` (see the module docstring)."""
    events: list[Any] = []
    added = asyncio.Event()  # set by the first event of a batch
    room = asyncio.Event()  # cleared while a batch is full or out with the caller
    room.set()

    async def collect(value: Any) -> Any:
        # runs in the stream's passive drainer, one event at a time; holding it here holds the
        # stream (and faust's backpressure) while the batch is full or being processed
        while not room.is_set():
            await room.wait()
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready: the stream has no current event")
        events.append(event)
        added.set()
        if len(events) >= max_events:
            room.clear()
        return value

    loop = asyncio.get_running_loop()
    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(collect)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not events:
                # returns on the first event, on stop, or (looking like a stop) on the timeout
                await stream.wait_for_stopped(added, timeout=1.0)
                continue
            first = loop.time()
            seen = 0
            # poll rather than wake on every add: one wakeup per idle period at high load
            while len(events) < max_events and len(events) != seen:
                seen = len(events)
                left = first + within_s - loop.time()
                if left <= 0:
                    break
                await asyncio.sleep(min(idle_s, left))
            room.clear()
            batch = events[:]
            events.clear()
            added.clear()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
                room.set()
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(collect)
