"""Which offsets of an input partition hold records, read straight from Kafka with kafka-python,
outside faust: the delivery check (stream/worker/delivery.py) asks when records it read again
through faust are still missing, to tell a lost record (read it again) from an offset that
holds none (a transaction marker or an aborted record: move on); and the group's committed
offsets when partitions are assigned, where the fetcher starts."""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger("seqstream.worker")


class RecordProbe:
    """One lazily opened consumer, assigned partitions by hand: it reads the worker's group's
    committed offsets but never joins the group or commits. Calls are blocking and made one at
    a time (from a thread, by FetchWatch)."""

    def __init__(self, bootstrap: str, group_id: str, options: Mapping[str, Any] | None = None, *,
                 isolation_level: str = "read_uncommitted", timeout_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.options = dict(options or {})
        self.isolation_level = isolation_level  # as the worker's own consumer reads
        self.timeout_s = timeout_s
        self._consumer: KafkaConsumer | None = None

    def first_record(self, topic: str, partition: int, start: int, end: int) -> int | None:
        """The first offset in [start, end) that holds a record, or None when none does.
        Raises TimeoutError when Kafka does not answer within `timeout_s`."""
        consumer = self._open()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)  # below the log start: reset to the earliest (deleted = none)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200, max_records=16).get(tp, []):
                if record.offset >= start:
                    return record.offset if record.offset < end else None
            if consumer.position(tp) >= end:  # passed the range (markers skipped) without a record
                return None
        raise TimeoutError(f"no answer from Kafka for {topic}[{partition}] within {self.timeout_s:g} s")

    def committed(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """The group's committed offset (the next to read) per (topic, partition); None where
        the group has committed none."""
        consumer = self._open()
        return {(t, p): consumer.committed(TopicPartition(t, p)) for t, p in partitions}

    def _open(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", isolation_level=self.isolation_level,
                client_id="seqstream-record-probe", **self.options)
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
