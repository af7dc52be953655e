"""The worker's pipeline logic that needs no broker."""
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
