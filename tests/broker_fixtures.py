"""Fixtures for tests against a real Kafka broker (integration and fault tests share them:
tests/conftest.py imports them, so one session broker serves both).

`kafka_bootstrap` (session): "127.0.0.1:PORT" of a broker for the whole test session.
  - SEQSTREAM_BROKER=host:port set: that broker is used, nothing is started or stopped.
  - else: an embedded KRaft broker (stream/broker/) on a free port with its data in a pytest
    temp dir, started once (jars fetched by Maven on first use) and stopped at the end.
`embedded_broker` (session): the EmbeddedBroker behind kafka_bootstrap, or None when external.
`make_topic` (function): make_topic(partitions=1, **configs) -> a new, uniquely named topic.
"""
from __future__ import annotations

import uuid
from typing import Callable, Iterator

import pytest

from stream.broker.embedded import EmbeddedBroker
from stream.broker.install import BrokerError
from stream.broker.process import free_port
from stream.kafka import explicit_bootstrap, resolve_bootstrap


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker | None]:
    if explicit_bootstrap():  # SEQSTREAM_BROKER names one
        yield None
        return
    broker = EmbeddedBroker(port=free_port(), data_dir=tmp_path_factory.mktemp("kafka"))
    try:
        # Generous bound: the first run on a machine also fetches the jars (Maven).
        broker.start(timeout_s=180)
    except BrokerError as e:
        pytest.fail(f"embedded Kafka broker did not start: {e}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop(timeout_s=30)


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded_broker: EmbeddedBroker | None) -> str:
    return embedded_broker.bootstrap if embedded_broker is not None else resolve_bootstrap()


@pytest.fixture()
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Creates topics with unique names (safe on a shared external broker); deletes them after."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="seqstream-tests")
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "it", **configs: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            try:
                admin.delete_topics(created)
            except Exception:  # noqa: BLE001 - cleanup only; never mask the test's own result
                pass
        admin.close()


@pytest.fixture()
def deployment(kafka_bootstrap: str):
    """A fresh seqstream deployment: unique prefix and app id, topics created, then deleted."""
    from stream.config import Settings
    from stream.topics import create_topics, delete_topics

    tag = uuid.uuid4().hex[:8]
    settings = Settings(prefix=f"t{tag}.", app_id=f"it-{tag}", broker=kafka_bootstrap)
    create_topics(kafka_bootstrap, settings, partitions=2)
    yield settings
    delete_topics(kafka_bootstrap, settings)
