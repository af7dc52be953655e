"""The producer side of a replay: one kafka-python producer, tuned, that routes each LogEvent
to its input topic and partition."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.schema import ACTIONS, LogEvent
from stream.events import encode_value, input_topic, user_key
from stream.replay.options import ReplayError

log = logging.getLogger("seqstream.replay")


def default_producer_config() -> dict[str, Any]:
    """Tuned for throughput with order kept (measured with bench/bench_replay.py).

    Idempotence with acks=all keeps per-partition order with several requests in flight and
    survives retries without duplicates; big batches and a short linger amortise kafka-python's
    per-request cost. lz4 when the `lz4` module is installed (it needs it), else none."""
    from kafka.codec import has_lz4

    return {
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        # Missing topics are an operator error (wrong partition count if auto-created).
        "allow_auto_create_topics": False,
        "metrics_enabled": False,  # per-record sensors cost real time in pure Python
        "max_request_size": 4 * 1024 * 1024,
        "compression_type": "lz4" if has_lz4() else None,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_block_ms": 30_000,
        "bootstrap_timeout_ms": 10_000,
        "client_id": "seqstream-replay",
    }


def use_native_crc32c() -> str:
    """Give kafka-python a native CRC-32C; returns which implementation is in use.

    kafka-python checksums every record batch with CRC-32C. Without the optional `crc32c`
    package it falls back to a pure-Python loop (~4.5 MB/s), which alone caps a replay at
    ~20k events/s. aiokafka (a faust dependency, so always installed with seqstream) ships a
    Cython CRC-32C (~2 GB/s): when kafka-python has no native one, point its record-batch
    builder at aiokafka's, after checking both agree. Installing `crc32c` makes this a no-op.
    """
    from kafka.record import default_records, util

    if getattr(util, "crc32c_c", None) is not None:
        return "crc32c"
    if getattr(default_records, "calc_crc32c", None) is not util.calc_crc32c:
        return "patched"  # done already (or someone else's choice): leave it
    try:
        from aiokafka.record._crecords import crc32c_cython  # type: ignore[import-not-found]
    except ImportError:
        return "pure-python"
    sample = bytes(range(256)) * 9 + b"seqstream"
    if crc32c_cython(sample) != util.calc_crc32c(memoryview(sample)):
        log.warning("aiokafka's crc32c disagrees with kafka-python's; keeping the slow one")
        return "pure-python"
    default_records.calc_crc32c = crc32c_cython
    return "patched"


def _murmur2_partition(key: bytes, n: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n


@dataclass
class Replayer:
    """Holds the producer; `send(ev)` routes one LogEvent to its input topic.

    The partition is computed here (the default partitioner's murmur2, cached per user) because
    kafka-python's pure-Python murmur2 on every send would cost more than the send itself;
    the result is identical to what the default partitioner (Java, aiokafka, faust) picks.
    """

    bootstrap: str
    prefix: str = ""
    producer_config: dict[str, Any] = field(default_factory=dict)
    # the cluster's security options (stream.kafka.kafka_client_options): they hold the password
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    producer: Any = None  # a KafkaProducer (or a test double with send/flush/close/partitions_for)
    sent: dict[str, int] = field(default_factory=lambda: {a: 0 for a in ACTIONS})
    failed: int = 0
    first_error: BaseException | None = None

    def __post_init__(self) -> None:
        self._topics = {a: input_topic(a, self.prefix) for a in ACTIONS}
        if self.producer is None:
            use_native_crc32c()
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            from stream.kafka import check_login

            check_login(self.bootstrap, self.options)  # a refused login: one line, at once
            config = {**default_producer_config(), **self.producer_config}
            # A broker that is down makes kafka-python log every retry at ERROR; the operator
            # gets our one line instead.
            kafka_log = logging.getLogger("kafka")
            level = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)
            try:
                self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, **config, **self.options)
            except KafkaError as exc:  # NoBrokersAvailable in 2.x, KafkaConnectionError in 3.x
                raise ReplayError(f"no Kafka broker answers at {self.bootstrap} "
                                  f"({type(exc).__name__})") from None
            finally:
                kafka_log.setLevel(level)
        self._n_partitions = self._check_topics()
        self._partition_cache: dict[int, int] = {}

    def _check_topics(self) -> int:
        counts = {}
        for topic in self._topics.values():
            try:
                parts = self.producer.partitions_for(topic)
            except Exception as exc:  # KafkaTimeoutError when the topic does not exist
                raise ReplayError(f"input topic {topic!r} is not available on {self.bootstrap} "
                                  f"({type(exc).__name__}); create it: seqstream topics create") from None
            if not parts:
                raise ReplayError(f"input topic {topic!r} does not exist on {self.bootstrap}; "
                                  f"create it: seqstream topics create")
            counts[topic] = len(parts)
        if len(set(counts.values())) != 1:
            raise ReplayError(f"input topics are not co-partitioned: {counts}")
        return next(iter(counts.values()))

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = exc

    @property
    def partitions(self) -> int:
        """Partitions of each input topic (they are co-partitioned)."""
        return self._n_partitions

    def partition_of(self, user_id: int | str) -> int:
        """The partition of `user_id`'s events (what `send` picks; cached per user)."""
        part = self._partition_cache.get(user_id)
        if part is None:
            if len(self._partition_cache) > 1_000_000:
                self._partition_cache.clear()
            part = self._partition_cache[user_id] = _murmur2_partition(user_key(user_id),
                                                                       self._n_partitions)
        return part

    def send(self, ev: LogEvent) -> None:
        # partition_of inlined: this runs once per event, and a call costs ~5% of a send.
        key = user_key(ev.user_id)
        part = self._partition_cache.get(ev.user_id)
        if part is None:
            if len(self._partition_cache) > 1_000_000:  # bounded memory on huge user counts
                self._partition_cache.clear()
            part = self._partition_cache[ev.user_id] = _murmur2_partition(key, self._n_partitions)
        future = self.producer.send(self._topics[ev.action], value=encode_value(ev), key=key,
                                    partition=part, timestamp_ms=ev.ts_ms)
        future.add_errback(self._on_error)
        self.sent[ev.action] += 1

    def flush(self) -> None:
        """Block until everything sent is acknowledged; raise if any send failed."""
        self.producer.flush()
        if self.failed:
            raise ReplayError(f"{self.failed} event(s) were not delivered: "
                              f"{type(self.first_error).__name__}: {self.first_error}")

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception:  # closing must not mask the real outcome
            log.debug("producer close failed", exc_info=True)


ReplayerFactory = Callable[[], Replayer]
