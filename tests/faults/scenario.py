"""A fault scenario's parts: a 4-partition deployment, worker processes with a /metrics port, a
paced kafka-python sender that knows the source (topic, partition, offset) of every event, and an
independent kafka-python judge that reads predictions (read_committed under exactly_once) and
counts them per source."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import msgpack
from kafka import KafkaConsumer, KafkaProducer

from models.schema import LogEvent
from stream.broker.process import free_port
from stream.config import Settings
from stream.events import encode_value, input_topic, user_key
from tests.integration.workers import WorkerProcess

Source = tuple[str, int, int]  # (topic, partition, offset) of an input event
PARTITIONS = 4


def deployment4(bootstrap: str) -> Settings:
    from stream.topics import create_topics

    tag = uuid.uuid4().hex[:8]
    settings = Settings(prefix=f"f{tag}.", app_id=f"fault-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, partitions=PARTITIONS)
    return settings


class Worker(WorkerProcess):
    """A worker process with its own web port, so the test can ask which partitions it owns."""

    def __init__(self, settings: Settings, model: Path, data_dir: Path, log: Path, guarantee: str,
                 *extra: str) -> None:
        self.port = free_port()
        super().__init__(settings, model, data_dir, log, "--processing-guarantee", guarantee,
                         "--no-online", "--web-port", str(self.port), *extra)
        self.settings = settings

    def owned(self) -> set[int]:
        """Input partitions this worker consumes now (seqstream_consumer_lag's labels)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return set()
        topic = re.escape(self.settings.input_topics[0])
        return {int(p) for p in re.findall(
            r'seqstream_consumer_lag\{[^}]*partition="(\d+)"[^}]*topic="' + topic + '"', text)} | {
            int(p) for p in re.findall(
                r'seqstream_consumer_lag\{[^}]*topic="' + topic + r'"[^}]*partition="(\d+)"', text)}


@dataclass
class Judge:
    """Reads a topic from the start in a thread; keeps (arrival monotonic, decoded message)."""

    bootstrap: str
    topic: str
    isolation_level: str = "read_uncommitted"
    got: list[tuple[float, dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        consumer = KafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=None,
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 isolation_level=self.isolation_level)
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    now = time.monotonic()
                    msgs = [(now, msgpack.unpackb(r.value, raw=False)) for r in records]
                    with self._lock:
                        self.got.extend(msgs)
        finally:
            consumer.close()

    def messages(self) -> list[tuple[float, dict]]:
        with self._lock:
            return list(self.got)

    def sources(self) -> Counter:
        return Counter(source_of(m) for _, m in self.messages())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def source_of(prediction: dict) -> Source:
    ev = prediction["event"]
    return ev["topic"], ev["partition"], ev["offset"]


def send_paced(bootstrap: str, settings: Settings, events: list[LogEvent], rate: float,
               at: dict[int, Callable[[], None]]) -> list[Source]:
    """Send `events` at `rate` per second; call at[i]() just before event i (the fault). Returns
    every event's source, from the broker's acknowledgements."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    futures = []
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        if i in at:
            at[i]()
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(producer.send(input_topic(ev.action, settings.prefix),
                                     key=user_key(ev.user_id), value=encode_value(ev)))
    producer.flush(30)
    sources = []
    for f in futures:
        md = f.get(timeout=30)
        sources.append((md.topic, md.partition, md.offset))
    producer.close()
    return sources


def wait_owned(workers: list[Worker], timeout_s: float = 60) -> list[set[int]]:
    """Wait until the workers split the input partitions between them (each owns some, none
    twice, all owned): the group is stable."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = [w.owned() for w in workers]
        if all(owned) and sum(map(len, owned)) == PARTITIONS and set().union(*owned) == set(
                range(PARTITIONS)):
            return owned
        time.sleep(0.3)
    raise AssertionError(f"no stable assignment in {timeout_s}s: {[w.owned() for w in workers]}")


def wait_all(judge: Judge, want: set[Source], timeout_s: float, workers: list[WorkerProcess],
             settle_s: float = 5.0) -> None:
    """Until every wanted source has a prediction (or timeout), then `settle_s` more so late
    duplicates are counted too."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not want <= set(judge.sources()):
        for w in workers:
            assert w.alive(), f"worker exited:\n{w.tail()}"
        time.sleep(0.5)
    time.sleep(settle_s)


@dataclass
class Outcome:
    sent: int
    missing: int
    duplicates: int  # predictions beyond the first per source
    recovery_s: float | None  # kill -> first new prediction for a partition the victim owned
    all_moved_s: float | None  # kill -> every partition the victim owned has a new prediction
    gap_s: float  # the longest time the judge saw no prediction at all (after the first)
    wrong_counts: dict = field(default_factory=dict)  # user -> (max user_events seen, true)
    missing_sample: list = field(default_factory=list)  # up to 10 sources without a prediction

    def line(self, name: str) -> str:
        fmt = lambda s: "n/a" if s is None else f"{s:.1f}"  # noqa: E731
        return (f"FAULT {name}: sent={self.sent} missing={self.missing} "
                f"duplicates={self.duplicates} recovery_s={fmt(self.recovery_s)} "
                f"all_moved_s={fmt(self.all_moved_s)} gap_s={self.gap_s:.1f} "
                f"wrong_user_events={len(self.wrong_counts)}")


def judge_outcome(judge: Judge, sources: list[Source], events: list[LogEvent],
                  fault_at: float | None = None, fault_wall_ms: int | None = None,
                  moved: set[int] = frozenset()) -> Outcome:
    msgs = judge.messages()
    counts = Counter(source_of(m) for _, m in msgs)
    sent = set(sources)
    missing = len(sent - set(counts))
    duplicates = sum(n - 1 for n in counts.values())
    recovery = all_moved = None
    if fault_at is not None:
        first: dict[int, float] = {}
        for arrived, m in msgs:
            p = m["event"]["partition"]
            if p in moved and m["produced_at"] >= fault_wall_ms and p not in first:
                first[p] = arrived - fault_at
        if first:
            recovery = min(first.values())
        if moved and set(first) == set(moved):
            all_moved = max(first.values())
    arrivals = sorted(a for a, _ in msgs)
    gap = max((b - a for a, b in zip(arrivals, arrivals[1:])), default=0.0)
    true = Counter(e.user_id for e in events)
    seen: dict[int, int] = {}
    for _, m in msgs:
        seen[m["user_id"]] = max(seen.get(m["user_id"], 0), m["user_events"])
    wrong = {u: (seen.get(u), n) for u, n in true.items() if seen.get(u) != n}
    return Outcome(len(sent), missing, duplicates, recovery, all_moved, gap, wrong,
                   sorted(sent - set(counts))[:10])
