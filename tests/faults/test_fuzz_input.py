"""Fuzzed bad input through the real broker and one real `seqstream worker` (issue 20, item 3).

Hypothesis generates malformed records in ten categories (tests/faults/fuzz_records.py: random
bytes, truncated msgpack, wrong types, NaN/inf/huge/negative numbers, nested structures, unicode
and empty ids, values over 64 KiB, missing keys, key mismatches, timestamps in seconds) and
valid events, shuffled together on the three input topics. Each produced record is known by its
(topic, partition, offset) from the producer's send future; an independent kafka-python consumer
then checks per source: a valid event has exactly one prediction (keyed like its input) and no
dead letter; a malformed record has exactly one dead letter, with a reason the contract allows
for its defect, a detail, and its original key and value; nothing else comes out. The worker
keeps its PID, stays up, and its log shows no crash, no restart, no lost batch.

Reproducible: a fixed hypothesis seed (SEQSTREAM_FUZZ_SEED, default 20), no example database,
generation only (no shrinking: every example is produced to a live broker). SEQSTREAM_FUZZ_EXAMPLES
scales the run (default 520 examples x (20 malformed + 5 valid) = 10,400 malformed, 2,600
valid).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from stream.config import Settings
from stream.topics import create_topics, delete_topics
from tests.faults.fuzz_records import (CATEGORIES, N_CATS, N_ITEMS, SCHEDULE, Rec, malformed_batch,
                                       valid_records)
from tests.integration.workers import WorkerProcess, untrained_checkpoint

SEED = int(os.environ.get("SEQSTREAM_FUZZ_SEED", "20"))
EXAMPLES = int(os.environ.get("SEQSTREAM_FUZZ_EXAMPLES", "520"))
GOOD_PER_EXAMPLE = 5  # and len(SCHEDULE) = 20 malformed
MIN_MALFORMED = 10_000 if "SEQSTREAM_FUZZ_EXAMPLES" not in os.environ else 1
# what a crash, a restart or a lost batch writes to the worker's log (faust's and ours)
LOG_ALARMS = ("Traceback", "Crashed", "crashed", "Restarting", "failed after scoring",
              "scoring failed", "MessageSizeTooLarge")


@pytest.fixture(scope="module")
def fuzz_worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """One deployment and one worker for the module (started once)."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(prefix=f"fz{tag}.", app_id=f"fuzz-{tag}", broker=kafka_bootstrap)
    create_topics(kafka_bootstrap, settings, partitions=2)
    tmp = tmp_path_factory.mktemp("fuzz")
    model = untrained_checkpoint(tmp / "model.pt", N_ITEMS, N_CATS)
    worker = WorkerProcess(settings, model, tmp / "state", tmp / "worker.log")
    try:
        worker.wait_ready(120)
        yield settings, worker
    finally:
        worker.stop()
        delete_topics(kafka_bootstrap, settings)


def generate_records() -> tuple[list[Rec], str]:
    """The records, in send order, and a digest of them (same seed, same digest)."""
    records: list[Rec] = []

    @seed(SEED)
    @hsettings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck))
    @given(bad=malformed_batch,
           good=st.lists(valid_records(), min_size=GOOD_PER_EXAMPLE, max_size=GOOD_PER_EXAMPLE),
           rnd=st.randoms(use_true_random=False))
    def generate(bad: list[Rec], good: list[Rec], rnd) -> None:  # noqa: ANN001
        batch = bad + good
        rnd.shuffle(batch)  # valid and malformed interleaved
        records.extend(batch)

    generate()
    digest = hashlib.sha256()
    for rec in records:
        for part in (rec.action.encode(), rec.key or b"-", rec.value or b"-"):
            digest.update(len(part).to_bytes(4, "big") + part)
    return records, digest.hexdigest()[:16]


def produce(bootstrap: str, settings: Settings,
            records: list[Rec]) -> tuple[list[tuple[Rec, tuple]], list[Rec]]:
    """Send the records; returns (record, source) pairs and the records the broker refused (too
    large for a Kafka message: they never reached the worker)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                             max_request_size=2 * 1024 * 1024, batch_size=256 * 1024)
    futures = [(rec, producer.send(settings.topic(rec.action), key=rec.key, value=rec.value))
               for rec in records]
    producer.flush(120)
    sent, refused = [], []
    for rec, future in futures:
        try:
            md = future.get(timeout=60)
        except MessageSizeTooLargeError:
            refused.append(rec)
            continue
        sent.append((rec, (md.topic, md.partition, md.offset)))
    producer.close()
    return sent, refused


def read_outputs(bootstrap: str, topics: list[str], want: set[tuple], worker: WorkerProcess,
                 timeout_s: float, settle_s: float = 3.0) -> dict[str, list[tuple[tuple, object, dict]]]:
    """(source, record, message) per output topic, read until every source in `want` was seen
    (or timeout), then `settle_s` more so that duplicates are caught too."""
    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    out: dict[str, list] = {t: [] for t in topics}
    seen: set[tuple] = set()
    deadline = time.monotonic() + timeout_s
    settle_until = None
    try:
        while time.monotonic() < (settle_until or deadline):
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    m = msgpack.unpackb(r.value, raw=False, strict_map_key=False)
                    src = m["event"] if "event" in m else m
                    source = (src.get("topic"), src.get("partition"), src.get("offset"))
                    out[tp.topic].append((source, r, m))
                    seen.add(source)
            if not worker.alive():
                pytest.fail(f"worker exited:\n{worker.tail()}")
            if settle_until is None and want <= seen:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return out


def carries(dead_letter: dict, name: str, original: bytes | None) -> bool:
    """The dead letter holds the original key/value: whole, or (past its bound, with the
    original size) its head of at least 64 KiB."""
    got = dead_letter.get(name)
    if f"{name}_bytes" not in dead_letter:
        return got == original
    return (original is not None and dead_letter[f"{name}_bytes"] == len(original)
            and len(got) >= 64 * 1024 and original.startswith(got))


def test_fuzzed_records_are_dead_lettered_and_valid_events_predicted(kafka_bootstrap, fuzz_worker):
    settings, worker = fuzz_worker
    pid = worker.proc.pid
    started = time.monotonic()
    records, digest = generate_records()
    generated_s = time.monotonic() - started
    sent, refused = produce(kafka_bootstrap, settings, records)
    by_source = {source: rec for rec, source in sent}
    assert len(by_source) == len(sent)  # offsets are unique per partition
    outputs = read_outputs(kafka_bootstrap, [settings.predictions_topic, settings.dead_letter_topic],
                           set(by_source), worker, timeout_s=150)
    preds, dead = outputs[settings.predictions_topic], outputs[settings.dead_letter_topic]

    sent_by_cat = Counter(rec.category for rec, _ in sent)
    cut = sum("value_bytes" in m or "key_bytes" in m for *_, m in dead)
    summary = (f"seed={SEED} examples={EXAMPLES} digest={digest} sent={dict(sent_by_cat)} "
               f"refused_by_broker={Counter(r.category for r in refused)} predictions={len(preds)} "
               f"dead_letters={len(dead)} cut_to_head={cut} "
               f"largest_sent={max(len(r.value or b'') + len(r.key or b'') for r, _ in sent)} "
               f"generate_s={generated_s:.0f} "
               f"total_s={time.monotonic() - started:.0f}")
    print(summary)

    pred_by = defaultdict(list)
    dead_by = defaultdict(list)
    for source, rec, m in preds:
        pred_by[source].append((rec, m))
    for source, rec, m in dead:
        dead_by[source].append((rec, m))

    problems: list[str] = []

    def problem(rec: Rec, source: tuple, what: str) -> None:
        problems.append(f"{rec.category} {source} key={rec.key!r:.60} value={rec.value!r:.120}: {what}")

    for source, rec in by_source.items():
        got_p, got_d = pred_by.get(source, []), dead_by.get(source, [])
        if rec.category == "valid":
            if len(got_p) != 1 or got_d:
                reasons = [m.get("reason") for _, m in got_d]
                problem(rec, source, f"{len(got_p)} predictions, dead letters {reasons}")
            elif got_p[0][0].key != rec.key:
                problem(rec, source, f"prediction keyed {got_p[0][0].key!r}")
            continue
        if len(got_d) != 1 or got_p:
            problem(rec, source, f"{len(got_d)} dead letters, {len(got_p)} predictions")
            continue
        record, m = got_d[0]
        if not m.get("reason") or m["reason"] not in rec.reasons:
            problem(rec, source, f"reason {m.get('reason')!r}, allowed {sorted(rec.reasons)}")
        elif not m.get("detail"):
            problem(rec, source, "dead letter without a detail")
        elif not carries(m, "key", rec.key) or record.key not in (rec.key, None):
            problem(rec, source, f"dead letter key {m.get('key')!r:.60}, record key {record.key!r:.60}")
        elif not carries(m, "value", rec.value):
            problem(rec, source, "dead letter does not carry the original value")
        elif dict(record.headers).get("seqstream-reason") != m["reason"].encode():
            problem(rec, source, f"reason header {record.headers}")
    strays = [s for s in set(pred_by) | set(dead_by) if s not in by_source]
    if strays:
        problems.append(f"{len(strays)} outputs for records never produced, e.g. {strays[:3]}")
    assert not problems, f"{summary}\n{len(problems)} problems, first 20:\n" + "\n".join(problems[:20])

    malformed = sum(n for c, n in sent_by_cat.items() if c != "valid")
    assert malformed >= MIN_MALFORMED, summary
    assert set(sent_by_cat) == {"valid", *CATEGORIES}, summary

    # the same worker process all along: alive, never restarted inside, nothing crashed
    assert worker.alive() and worker.proc.pid == pid, worker.tail()
    log = Path(worker.log).read_text(errors="replace")
    assert log.count("Ready") == 1, worker.tail()
    alarms = [a for a in LOG_ALARMS if a in log]
    assert not alarms, f"{alarms} in the worker log:\n{worker.tail()}"
