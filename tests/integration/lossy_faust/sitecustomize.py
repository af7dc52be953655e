"""Loaded only by the worker that tests/integration/test_lost_fetch.py starts (this folder on its
PYTHONPATH): faust's consumer drops the first record of SEQSTREAM_TEST_DROP_TOPICS that the
fetcher hands it, the way faust lost a record after a restart (stream/worker/fetch_watch.py,
FetchWatch.skipped_fetches). Nothing outside that test imports it."""
import os

import faust.transport.consumer as _consumer

_topics = set(filter(None, os.environ.get("SEQSTREAM_TEST_DROP_TOPICS", "").split(",")))
_getmany = _consumer.Consumer.getmany
_dropped: list = []


async def _lossy_getmany(self, timeout):  # noqa: ANN001
    async for tp, message in _getmany(self, timeout):
        if not _dropped and tp.topic in _topics:
            _dropped.append((tp, message.offset))
            print(f"lossy_faust: dropped {tp.topic}[{tp.partition}] offset {message.offset}", flush=True)
            continue
        yield tp, message


_consumer.Consumer.getmany = _lossy_getmany
