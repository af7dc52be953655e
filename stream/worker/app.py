"""The faust.App for one seqstream deployment: topics and the user-state table (Wiring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from stream.config import Settings
from stream.kafka import faust_credentials

MB = 1024 * 1024


@dataclass
class Wiring:
    """Everything the agents need from faust, built once from Settings."""

    app: faust.App
    source: Any  # one channel over the three input topics
    predictions: Any
    dead_letter: Any
    churn_alerts: Any
    anomalies: Any
    churn_commands: Any  # sweep -> the agent that owns the table (timers cannot write tables)
    profiles: Any  # compacted: a user's interests when they changed materially
    states: Any  # faust Table: user key bytes -> encoded UserState bytes
    partitions: int


def create_app(settings: Settings, bootstrap: str, partitions: int) -> Wiring:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(settings),  # SASL / TLS (None: PLAINTEXT)
        store="rocksdb://",
        datadir=str(settings.data_dir),
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        # we create and check topics ourselves (`seqstream topics create`)
        topic_allow_declare=True,
        topic_partitions=partitions,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # faust listens on web_bind (default 0.0.0.0); web_host is only advertised
        web_in_thread=False,
        web_tables_enabled=False, web_router_enabled=False,  # /table/* would serve user state
        producer_max_request_size=MB,
        # Every event produces a prediction and a changelog record. Without a linger each loop
        # turn sends a small produce request: a syscall and a broker round trip per few records;
        # at low load the linger is pure latency, under load it saves CPU (bench_pipeline)
        producer_linger=settings.producer_linger_ms / 1000.0,
        producer_max_batch_size=256 * 1024,
        stream_buffer_maxsize=max(4096, settings.batch_max * 4),
        broker_commit_every=10_000,
        broker_commit_interval=2.0,
        # heartbeats run in the consumer's thread, not behind batches; a third of Kafka's advice
        # (<= 1/3 of the session) leaves two missed heartbeats of slack on a loaded host
        broker_heartbeat_interval=settings.session_timeout_s / 10.0,
        broker_session_timeout=settings.session_timeout_s,
        table_standby_replicas=0,
    )
    # Table writes queue their changelog records in faust's producer buffer, which a background
    # task drains one record per loop turn. Past `max_messages` (100) the stream stops and
    # drains synchronously: with one state write per event that stalled every batch for
    # 40-70 ms. A bound of a few batches lets the buffer drain while the scorer thread works.
    app.producer.buffer.max_messages = 4 * settings.batch_max
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(*settings.input_topics, **raw)
    states = app.Table(
        settings.state_table,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        # rocksdict per partition; faust's defaults (2 GiB block cache) are far too big here
        options={
            "driver": "rocksdict",
            "block_cache_size": settings.rocksdb_block_cache_mb * MB,
            "block_cache_compressed_size": 0,
            "write_buffer_size": 16 * MB,
            "max_write_buffer_number": 2,
            "max_open_files": 256,
        },
    )
    return Wiring(
        app=app,
        source=source,
        predictions=app.topic(settings.predictions_topic, **raw),
        dead_letter=app.topic(settings.dead_letter_topic, **raw),
        churn_alerts=app.topic(settings.churn_alerts_topic, **raw),
        anomalies=app.topic(settings.anomalies_topic, **raw),
        churn_commands=app.topic(settings.churn_commands_topic, **raw),
        profiles=app.topic(settings.profiles_topic, **raw),
        states=states,
        partitions=partitions,
    )
