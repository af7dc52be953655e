"""Writing model-updates: versions (chunks, manifest, head), trainer status, and retired weights."""
from __future__ import annotations

from typing import Any

import msgpack

from models.jsonable import to_jsonable
from models.checkpoint import checkpoint_bytes
from stream.online.versions import STATUS_KEY, VersionStore, version_key, version_messages


class Publisher:
    """Writes versions to model-updates (kafka-python; blocking: call it off the event loop)."""

    def __init__(self, bootstrap: str, topic: str, options: dict[str, Any] | None = None) -> None:
        """`options`: the cluster's security options (stream.kafka.kafka_client_options)."""
        from kafka import KafkaProducer

        from stream.kafka import kafka_client

        self.topic = topic
        self.producer = kafka_client(KafkaProducer, bootstrap, options, acks="all", linger_ms=0,
                                     max_request_size=1024 * 1024, client_id="seqstream-model-publisher")
        self.retired: set[int] = set()

    def publish(self, version: int, blob: bytes, manifest: dict[str, Any]) -> None:
        for key, value in version_messages(version, blob, manifest):
            self.producer.send(self.topic, key=key, value=value, partition=0)
        self.producer.flush(60)

    def status(self, status: dict[str, Any]) -> None:
        self.producer.send(self.topic, key=STATUS_KEY, partition=0,
                           value=msgpack.packb(to_jsonable(status, 6), use_bin_type=True))
        self.producer.flush(30)

    def retire(self, manifests: dict[int, dict[str, Any]], keep: int) -> list[int]:
        """Tombstone the chunks of online versions older than the newest `keep`; returns those
        retired. Offline checkpoints (source "checkpoint") keep their weights: the safe fallback."""
        online = sorted(v for v, m in manifests.items() if m.get("source") != "checkpoint")
        old = online[:-keep] if keep > 0 else online
        done = []
        for v in old:
            if v in self.retired:
                continue
            for i in range(int(manifests[v].get("n_chunks", 0))):
                self.producer.send(self.topic, key=version_key(v, f"chunk/{i:06d}"), value=None, partition=0)
            self.retired.add(v)
            done.append(v)
        if done:
            self.producer.flush(30)
        return done

    def close(self) -> None:
        self.producer.close(5)



def blob_of(model: Any, items: Any, categories: Any, version: int, meta: dict[str, Any]) -> bytes:
    return checkpoint_bytes(model, items, categories, version=version, meta=meta)



def publish_checkpoint(bootstrap: str, topic: str, store: VersionStore, ckpt: Any,
                       meta: dict[str, Any], at_least: int = 0,
                       options: dict[str, Any] | None = None) -> int:
    """Publish `ckpt` as the newest version (above everything on the topic, and at least
    `at_least`); returns its number. Every worker switches to it between two micro-batches."""
    new = max(store.max_version or 0, store.head or 0, at_least - 1) + 1
    blob = blob_of(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, new, {"online": meta})
    pub = Publisher(bootstrap, topic, options)
    try:
        pub.publish(new, blob, to_jsonable(meta, 6))
    finally:
        pub.close()
    return new
