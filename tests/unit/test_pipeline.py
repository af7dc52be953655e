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
