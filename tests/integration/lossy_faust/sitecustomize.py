"""Loaded only by the worker that tests/integration/test_lost_fetch.py starts (this folder on its
PYTHONPATH): faust's consumer loses the records named in SEQSTREAM_TEST_DROP ("topic:partition:
offset" joined by ","), the way faust loses records (stream/worker/delivery.py says how).

A record lost around recovery's seek to the committed offsets may be fetched again by that very
seek, which would make the loss no loss. So each named record is lost every time the fetcher
hands it over until it comes more than SETTLE_S after the last seek, and that time too: after
that, only the worker's own repair can bring it. Nothing outside that test imports it."""
import os
import time

import faust.transport.consumer as _consumer

SETTLE_S = 1.5
_drop = {(t, int(p), int(o)) for t, p, o in
         (spec.rsplit(":", 2) for spec in filter(None, os.environ.get("SEQSTREAM_TEST_DROP", "").split(",")))}
_getmany = _consumer.Consumer.getmany
_perform_seek = _consumer.Consumer.perform_seek
_last_seek = [time.monotonic()]


async def _lossy_getmany(self, timeout):  # noqa: ANN001
    async for tp, message in _getmany(self, timeout):
        key = (tp.topic, tp.partition, message.offset)
        if key in _drop:
            settled = time.monotonic() - _last_seek[0] > SETTLE_S
            if settled:
                _drop.discard(key)  # the real loss: the next hand-over goes through
            print(f"lossy_faust: {'lost' if settled else 'dropped'} {tp.topic}[{tp.partition}] "
                  f"offset {message.offset}", flush=True)
            continue
        yield tp, message


async def _noting_perform_seek(self):  # noqa: ANN001
    _last_seek[0] = time.monotonic()
    await _perform_seek(self)
    _last_seek[0] = time.monotonic()


_consumer.Consumer.getmany = _lossy_getmany
_consumer.Consumer.perform_seek = _noting_perform_seek
