"""Reading model-updates: to its end (`read_store`), and a worker's follower thread.

**Followers**: each worker reads model-updates with its own group-less consumer (kafka-python,
assign + seek to the beginning) in a thread. At startup it reads to the end *before* the agents
start and serves the newest complete version if it is newer than its --model checkpoint; later
versions are loaded in the thread and handed to `pipeline.request_swap`, which swaps between two
micro-batches. Version numbers only grow (a rollback republishes old weights under a new
number), so "newest" is "highest number". Hidden states of another version are re-folded from
the ring lazily by the Scorer. Vocabulary: online versions keep the vocabulary of the checkpoint
they descend from; items outside it stay unknown until an offline retrain (`seqstream model
publish NEW.pt`).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from models.checkpoint import checkpoint_from_bytes
from stream.online.versions import VersionStore

log = logging.getLogger("seqstream.online")


def _consumer(bootstrap: str, topic: str, options: dict[str, Any] | None = None):
    from kafka import KafkaConsumer, TopicPartition

    from stream.kafka import kafka_client

    consumer = kafka_client(KafkaConsumer, bootstrap, options, group_id=None, enable_auto_commit=False,
                            client_id="seqstream-model-follower", fetch_max_bytes=8 * 1024 * 1024,
                            max_partition_fetch_bytes=4 * 1024 * 1024)
    tp = TopicPartition(topic, 0)
    if not consumer.partitions_for_topic(topic):
        consumer.close()
        raise RuntimeError(f"topic {topic} does not exist (run: seqstream topics create)")
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    return consumer, tp


def read_store(bootstrap: str, topic: str, timeout_s: float = 30.0,
               options: dict[str, Any] | None = None) -> VersionStore:
    """model-updates read to its end (what `seqstream model list` shows); `options`: the
    cluster's security options (stream.kafka.kafka_client_options)."""
    consumer, tp = _consumer(bootstrap, topic, options)
    store = VersionStore()
    try:
        _read_to_end(consumer, tp, store, timeout_s)
    finally:
        consumer.close()
    return store


def _read_to_end(consumer: Any, tp: Any, store: VersionStore, timeout_s: float) -> None:
    end = consumer.end_offsets([tp])[tp]
    deadline = time.monotonic() + timeout_s
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"model-updates: not at the end ({end}) after {timeout_s}s")
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                store.apply(r.key, r.value)


class Follower:
    """A worker's view of model-updates: catch up at startup, then follow in a thread."""

    def __init__(self, bootstrap: str, topic: str, *, device: Any = None,
                 options: dict[str, Any] | None = None) -> None:
        self.bootstrap, self.topic, self.device = bootstrap, topic, device
        self.options = options  # the cluster's security options (stream.kafka.kafka_client_options)
        self.store = VersionStore()
        self.current: int | None = None  # the version this process serves
        self.listeners: list[Callable[[int, Any, dict], None]] = []  # (version, ckpt, manifest)
        self._consumer: Any = None
        self._tp: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self, current: int, timeout_s: float = 60.0) -> Any | None:
        """Read to the end; the newest complete version above `current` as a Checkpoint, or None."""
        self.current = current
        self._consumer, self._tp = _consumer(self.bootstrap, self.topic, self.options)
        _read_to_end(self._consumer, self._tp, self.store, timeout_s)
        return self._load_newest()

    def _load_newest(self) -> Any | None:
        v = self.store.latest_complete(above=self.current)
        if v is None:
            return None
        try:
            ckpt = checkpoint_from_bytes(self.store.assemble(v), device=self.device)  # type: ignore[arg-type]
        except Exception:
            log.exception("model-updates: version %d does not load; skipped", v)
            self.store.manifests.pop(v, None)
            return None
        ckpt.version = v  # the manifest's number wins (a rollback republishes old weights)
        self.current = v
        self.store.forget_below(v + 1)
        return ckpt

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="seqstream-model-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._consumer.poll(timeout_ms=500)
                touched = False
                for records in batch.values():
                    for r in records:
                        if self.store.apply(r.key, r.value) is not None:
                            touched = True
                if touched:
                    ckpt = self._load_newest()
                    if ckpt is not None:
                        manifest = self.store.manifests.get(ckpt.version, {})
                        log.info("model-updates: version %d complete (parent %s, %s)", ckpt.version,
                                 manifest.get("parent"), manifest.get("source"))
                        for fn in list(self.listeners):
                            fn(ckpt.version, ckpt, manifest)
            except Exception:  # keep following; a broker hiccup must not end model updates
                log.exception("model-updates follower error; retrying")
                time.sleep(1.0)
        try:
            self._consumer.close()
        except Exception:
            pass

