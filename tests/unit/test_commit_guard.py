"""The commit guard (FetchWatch.guard_commits) over faust's own `Consumer._new_offset`, with no
broker: faust skips one unacked offset at the head of a partition; the guard does not, unless a
probe found that offset empty (a transaction marker)."""
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from stream.worker.fetch_watch import FetchWatch
from stream.worker.metrics import WorkerMetrics

pytestmark = pytest.mark.unit
CLICK0 = TP("click", 0)


def faust_consumer(committed: int, acked: list[int]) -> SimpleNamespace:
    """The state `_new_offset` reads, with faust's real method bound to it."""
    consumer = SimpleNamespace(_gap=defaultdict(IntervalTree), _acked=defaultdict(list),
                               _acked_index=defaultdict(set),
                               _committed_offset=defaultdict(lambda: None))
    consumer._committed_offset[CLICK0] = committed
    consumer._acked[CLICK0].extend(acked)
    consumer._acked_index[CLICK0].update(acked)
    consumer._new_offset = MethodType(Consumer._new_offset, consumer)
    return consumer


def guarded(consumer: SimpleNamespace) -> FetchWatch:
    watch = FetchWatch(["click"], SimpleNamespace(app=SimpleNamespace(consumer=consumer)),
                       WorkerMetrics())
    watch.guard_commits()
    return watch


def ack(consumer: SimpleNamespace, offset: int) -> None:
    consumer._acked[CLICK0].append(offset)
    consumer._acked_index[CLICK0].add(offset)


def test_faust_alone_commits_past_an_unacked_head_offset():
    # the bug being guarded against: offset 10 (in progress, or handed back) is committed past
    assert faust_consumer(10, [11, 12])._new_offset(CLICK0) == 13


def test_the_guard_waits_for_the_head_offset_then_commits_everything_acked():
    consumer = faust_consumer(10, [11, 12])
    guarded(consumer)
    assert consumer._new_offset(CLICK0) is None
    ack(consumer, 10)
    assert consumer._new_offset(CLICK0) == 13


def test_at_offset_zero_too():
    # faust's own head check is skipped when the committed offset is 0 (falsy)
    consumer = faust_consumer(0, [1, 2])
    guarded(consumer)
    assert consumer._new_offset(CLICK0) is None


def test_a_head_offset_found_empty_by_the_probe_is_passed():
    consumer = faust_consumer(10, [11, 12])
    watch = guarded(consumer)
    watch.tracker.deliver(CLICK0, 11, committed=10, now=0.0)
    watch.tracker.deliver(CLICK0, 12, committed=10, now=0.0)
    reread, _ = watch.tracker.due({CLICK0: 13}, in_transit=False, now=0.0)
    assert reread == {CLICK0: 10}  # read again first, then probed
    _, probes = watch.tracker.due({CLICK0: 13}, in_transit=False, now=5.0)
    watch.tracker.probed(CLICK0, probes[CLICK0], None, now=5.0)  # 10 holds no record
    assert consumer._new_offset(CLICK0) == 13


def test_inner_holes_and_other_topics_are_faust_s_business():
    consumer = faust_consumer(10, [10, 11, 13])
    consumer._committed_offset[TP("changelog", 0)] = 5
    consumer._acked[TP("changelog", 0)].extend([6, 7])
    guarded(consumer)
    assert consumer._new_offset(CLICK0) == 12  # up to the hole at 12, as faust does
    assert consumer._new_offset(TP("changelog", 0)) == 8
