"""A record that faust takes from the fetcher and loses is read again, on the real broker.

The worker restarts with a faust whose consumer drops the first input record it is handed
(tests/integration/lossy_faust), as faust did in about 1 restart in 50. Every event must still be
predicted exactly once: the worker finds the loss (stream/worker/fetch_watch.py, skipped_fetches)
and seeks back to it; scoring skips the records it had already applied."""
from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from stream.events import user_key
from tests.integration.test_worker import make_events
from tests.integration.workers import WorkerProcess, consume_until, send_events, untrained_checkpoint

pytestmark = pytest.mark.integration
LOSSY_FAUST = Path(__file__).resolve().parent / "lossy_faust"


def test_a_record_faust_loses_after_a_restart_is_read_again(kafka_bootstrap, deployment, tmp_path):
    settings = deployment
    model = untrained_checkpoint(tmp_path / "model.pt", 200, 10, version=3)
    events = make_events(200, seed=1)
    first, later = events[:100], events[100:]
    worker = WorkerProcess(settings, model, tmp_path / "state-a", tmp_path / "worker.log")
    try:
        send_events(kafka_bootstrap, settings, first)
        assert len(consume_until(kafka_bootstrap, settings.predictions_topic, 100, 120, [worker])) == 100
    finally:
        worker.stop()

    lossy = WorkerProcess(settings, model, tmp_path / "state-b", tmp_path / "worker2.log",
                          env={"PYTHONPATH": str(LOSSY_FAUST),
                               "SEQSTREAM_TEST_DROP_TOPICS": ",".join(settings.input_topics)})
    try:
        send_events(kafka_bootstrap, settings, later)
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, 200, 120, [lossy], settle_s=3.0)
        log = lossy.log.read_text(errors="replace")
        assert "lossy_faust: dropped" in log, log[-3000:]  # the fault was injected...
        assert "re-reading" in log, log[-3000:]  # ...found...
        msgs = [msgpack.unpackb(r.value, raw=False) for r in preds]
        sources = [(m["event"]["topic"], m["event"]["partition"], m["event"]["offset"]) for m in msgs]
        assert len(sources) == len(set(sources)) == 200, log[-3000:]  # ...and repaired, once each
        assert all(r.key == user_key(m["user_id"]) for r, m in zip(preds, msgs))
    finally:
        lossy.stop()
