"""The worker's fetch checks that need no broker (stream/worker/fetch_watch.py)."""
import pytest
from faust.types import TP

from stream.config import Settings
from stream.worker.fetch_watch import FetchWatch
from stream.worker.metrics import WorkerMetrics

pytestmark = pytest.mark.unit


def test_paused_inputs_are_resumed_only_when_nothing_arrives():
    settings = Settings(prefix="t.")
    watch = FetchWatch(settings.input_topics, wiring=None, metrics=WorkerMetrics())
    click0 = TP(settings.input_topics[0], 0)
    other = TP("t.training-samples", 0)
    paused = {click0, other}
    assert watch.stalled_inputs(paused, now=0.0) == set()  # events may still be in flight
    watch.metrics.events_in = 10
    assert watch.stalled_inputs(paused, now=4.0) == set()  # events keep arriving: real backpressure
    assert watch.stalled_inputs(paused, now=8.0) == set()
    assert watch.stalled_inputs(paused, now=9.5) == {click0}  # 5.5 s with nothing: stuck
    assert watch.stalled_inputs({other}, now=20.0) == set()  # not ours to resume


def test_records_the_fetcher_passed_but_never_delivered_are_read_again_once():
    settings = Settings(prefix="t.")
    watch = FetchWatch(settings.input_topics, wiring=None, metrics=WorkerMetrics())
    cart1, click0 = TP(settings.input_topics[1], 1), TP(settings.input_topics[0], 0)
    samples = TP("t.training-samples", 0)
    committed = {cart1: 58, click0: 40, samples: 3}
    # the restart stall: committed 58, position 59, nothing delivered
    positions = {cart1: 59, click0: 40, samples: 9}
    watch.metrics.events_in = 1  # the quiet time counts from the checks' first look
    assert watch.skipped_fetches(positions, committed, now=0.0, in_flight=False) == {}
    assert watch.skipped_fetches(positions, committed, now=5.0, in_flight=False) == {}  # not quiet yet
    assert watch.skipped_fetches(positions, committed, now=11.0, in_flight=True) == {}  # may still arrive
    assert watch.skipped_fetches(positions, committed, now=11.0, in_flight=False) == {cart1: 58}
    # the same position again (say, a transaction marker at 58): not re-read twice
    assert watch.skipped_fetches(positions, committed, now=30.0, in_flight=False) == {}

    # once records were delivered, the last delivered offset counts, not the committed one
    watch.delivered[(click0.topic, 0)] = 44
    watch.metrics.events_in = 5
    assert watch.skipped_fetches({click0: 45}, committed, now=31.0, in_flight=False) == {}  # caught up
    assert watch.skipped_fetches({click0: 47}, committed, now=40.0, in_flight=False) == {}  # events moved at 31
    assert watch.skipped_fetches({click0: 47}, committed, now=41.5, in_flight=False) == {click0: 45}
    # a partition with no committed offset and nothing delivered is left alone
    assert watch.skipped_fetches({TP(settings.input_topics[2], 0): 7}, {}, now=60.0, in_flight=False) == {}


def test_a_revoked_partition_forgets_its_re_read():
    settings = Settings(prefix="t.")
    watch = FetchWatch(settings.input_topics, wiring=None, metrics=WorkerMetrics())
    cart1 = TP(settings.input_topics[1], 1)
    watch.metrics.events_in = 1
    assert watch.skipped_fetches({cart1: 59}, {cart1: 58}, now=0.0, in_flight=False) == {}
    assert watch.skipped_fetches({cart1: 59}, {cart1: 58}, now=20.0, in_flight=False) == {cart1: 58}
    watch.forget({cart1})  # assigned again later, the same gap may be a new loss
    assert watch.skipped_fetches({cart1: 59}, {cart1: 58}, now=40.0, in_flight=False) == {cart1: 58}


def test_a_first_delivery_past_the_committed_offset_is_read_again_from_it():
    settings = Settings(prefix="t.")
    watch = FetchWatch(settings.input_topics, wiring=None, metrics=WorkerMetrics())
    cart1, click0 = TP(settings.input_topics[1], 1), TP(settings.input_topics[0], 0)
    # after the assignment faust delivered 61.. on cart[1] but the commit stays at 58: 58-60 were lost
    watch.first_delivered[(cart1.topic, 1)] = 61
    watch.delivered[(cart1.topic, 1)] = 70
    watch.first_delivered[(click0.topic, 0)] = 40  # delivered from the committed offset: fine
    watch.delivered[(click0.topic, 0)] = 45
    committed = {cart1: 58, click0: 40}
    positions = {cart1: 71, click0: 46}
    # busy (events in flight, not quiet): the start check does not wait for quiet
    assert watch.skipped_fetches(positions, committed, now=0.0, in_flight=True) == {cart1: 58}
    assert watch.skipped_fetches(positions, committed, now=1.0, in_flight=True) == {}  # once
    # commits move past the first delivered offset as soon as its records are acked: no loss
    watch.forget({cart1})
    watch.first_delivered[(cart1.topic, 1)] = 61
    assert watch.skipped_fetches(positions, {cart1: 65}, now=2.0, in_flight=True) == {}
