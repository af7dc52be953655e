"""Records that faust takes from the fetcher and loses are read again, on the real broker.

The worker restarts with a faust whose consumer loses chosen input records
(tests/integration/lossy_faust): the first record after the committed offset, a run in the
middle of a partition, or the very last record (nothing follows it, so only the fetch position
shows the loss). Every event must still be predicted exactly once, judged by an independent
consumer per source (topic, partition, offset): the worker finds the loss
(stream/worker/delivery.py) and reads the records again; scoring skips those it had applied."""
from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.events import user_key
from tests.integration.test_worker import make_events
from tests.integration.workers import WorkerProcess, consume_until, send_events, untrained_checkpoint

pytestmark = pytest.mark.integration
LOSSY_FAUST = Path(__file__).resolve().parent / "lossy_faust"


def _new_records(bootstrap: str, group: str, topics: list[str]) -> dict[tuple[str, int], range]:
    """Per input partition, the offsets past the group's committed offset (not yet processed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): range(consumer.committed(tp) or 0, ends[tp]) for tp in tps}
    finally:
        consumer.close()


def _choose_drops(new: dict[tuple[str, int], range], where: str) -> list[tuple[str, int, int]]:
    (topic, part), offsets = max(new.items(), key=lambda kv: (len(kv[1]), kv[0]))
    assert len(offsets) >= 8, new  # enough records on the busiest partition for every placement
    chosen = {"first": [offsets[0]], "middle": list(offsets[3:6]), "last": [offsets[-1]]}[where]
    return [(topic, part, o) for o in chosen]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_records_faust_loses_after_a_restart_are_read_again(kafka_bootstrap, deployment, tmp_path, where):
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

    send_events(kafka_bootstrap, settings, later)  # before the restart: the offsets to lose are known
    drops = _choose_drops(_new_records(kafka_bootstrap, settings.app_id, settings.input_topics), where)
    lossy = WorkerProcess(settings, model, tmp_path / "state-b", tmp_path / "worker2.log",
                          env={"PYTHONPATH": str(LOSSY_FAUST),
                               "SEQSTREAM_TEST_DROP": ",".join(f"{t}:{p}:{o}" for t, p, o in drops)})
    try:
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, 200, 120, [lossy], settle_s=3.0)
        log = lossy.log.read_text(errors="replace")
        assert log.count("lossy_faust: lost") == len(drops), log[-3000:]  # the fault was injected...
        assert "re-reading" in log, log[-3000:]  # ...found...
        msgs = [msgpack.unpackb(r.value, raw=False) for r in preds]
        sources = [(m["event"]["topic"], m["event"]["partition"], m["event"]["offset"]) for m in msgs]
        assert len(sources) == len(set(sources)) == 200, log[-3000:]  # ...and repaired, once each
        assert set(drops) <= set(sources)
        assert all(r.key == user_key(m["user_id"]) for r, m in zip(preds, msgs))
    finally:
        lossy.stop()
