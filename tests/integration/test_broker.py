"""The embedded broker (stream/broker/) and the Kafka clients seqstream relies on, against a real broker.

Kafka 4.x dropped old protocol versions (KIP-896), so these double as the compatibility check
for kafka-python, aiokafka (plain, group, transactional, read_committed) and faust-streaming.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from stream.broker.embedded import EmbeddedBroker
from stream.broker.install import BrokerError
from stream.broker.process import free_port
from stream.kafka import resolve_bootstrap

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# `seqstream broker ...` with only the broker command (the full CLI imports torch: seconds per start).
BROKER_CLI = ("import sys; from stream.cli import broker; from stream.cli.common import OneLineParser; "
              "p = OneLineParser(prog='seqstream'); broker.add_parser(p.add_subparsers()); "
              "a = p.parse_args(['broker', *sys.argv[1:]]); sys.exit(a.func(a))")


def _needs_embedded(broker: EmbeddedBroker | None) -> EmbeddedBroker:
    if broker is None:
        pytest.skip("SEQSTREAM_BROKER is set: the launcher itself is not under test")
    return broker


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 15.0, **kw) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000), **kw)
    out: list[bytes] = []
    try:
        for msg in consumer:
            out.append(msg.value)
            if len(out) >= n:
                break
    finally:
        consumer.close()
    return out


# --------------------------------------------------------------------------- the launcher


def test_start_is_idempotent_and_status(embedded_broker: EmbeddedBroker | None) -> None:
    broker = _needs_embedded(embedded_broker)
    before = broker.status()
    assert before.running and before.ready and before.pid
    again = broker.start(timeout_s=10)
    assert again.already_running and again.pid == before.pid
    # A fresh object for the same dir (another process's view) finds it through the pid file.
    other = EmbeddedBroker(port=broker.port, data_dir=broker.data_dir)
    st = other.start(timeout_s=10)
    assert st.already_running and st.pid == before.pid and st.bootstrap == broker.bootstrap
    assert (broker.dir / "server.log").stat().st_size > 0  # log4j2 binding works


def test_cli_status_start_stop_exit_codes(embedded_broker: EmbeddedBroker | None, tmp_path: Path) -> None:
    broker = _needs_embedded(embedded_broker)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", BROKER_CLI, *args], capture_output=True,
                              text=True, cwd=REPO, timeout=60)

    up = cli("status", "--port", str(broker.port), "--data-dir", str(broker.dir))
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == broker.bootstrap
    again = cli("start", "--port", str(broker.port), "--data-dir", str(broker.dir), "--timeout", "10")
    assert again.returncode == 0 and "already running" in again.stderr
    assert again.stdout.strip() == broker.bootstrap
    port = free_port()
    down = cli("status", "--port", str(port), "--data-dir", str(tmp_path / "none"))
    assert down.returncode == 1 and "not running" in down.stderr
    assert down.stdout.strip() == f"127.0.0.1:{port}"
    assert cli("stop", "--port", str(port), "--data-dir", str(tmp_path / "none")).returncode == 0


def test_stale_pid_file_is_ignored(tmp_path: Path) -> None:
    b = EmbeddedBroker(port=free_port(), data_dir=tmp_path)
    b.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a Kafka broker
    assert b.pid() is None and not b.pid_file.exists()
    b.pid_file.write_text("999999999\n")  # no such process
    assert not b.status().running and not b.pid_file.exists()
    assert b.stop() is False


def test_a_cluster_id_starting_with_a_dash_formats_and_starts(embedded_broker: EmbeddedBroker | None,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """1 in 64 random ids starts with "-"; `kafka-storage format` must not read it as an option."""
    _needs_embedded(embedded_broker)
    monkeypatch.setattr("stream.broker.embedded._new_cluster_id", lambda: "-" + uuid.uuid4().hex[:21])
    b = EmbeddedBroker(port=free_port(), data_dir=tmp_path)
    try:
        assert b.start(timeout_s=60).ready
    finally:
        b.stop()


def test_port_taken_by_someone_else_is_a_clear_error(embedded_broker: EmbeddedBroker | None,
                                                     tmp_path: Path) -> None:
    broker = _needs_embedded(embedded_broker)
    squatter = EmbeddedBroker(port=broker.port, data_dir=tmp_path / "other")
    with pytest.raises(BrokerError, match=f"port {broker.port} is in use"):
        squatter.start(timeout_s=5)


def test_resolve_bootstrap_prefers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSTREAM_BROKER", "kafka.example:19092")
    monkeypatch.setenv("SEQSTREAM_BROKER_PORT", str(free_port()))  # would be a new broker
    assert resolve_bootstrap() == "kafka.example:19092"


# --------------------------------------------------------------------------- kafka-python


def test_metadata_and_admin(kafka_bootstrap: str, make_topic) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        cluster = admin.describe_cluster()
        assert cluster["brokers"] and cluster["controller_id"] is not None
        topic = make_topic(partitions=3, **{"cleanup.policy": "compact"})
        assert topic in admin.list_topics()
        (desc,) = admin.describe_topics([topic])
        assert len(desc["partitions"]) == 3
    finally:
        admin.close()


def test_auto_create_is_off(kafka_bootstrap: str) -> None:
    # Typos in topic names must fail, not silently create a 1-partition topic.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=1500)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(f"no-such-topic-{uuid.uuid4().hex[:8]}", b"x").get(timeout=5)
    finally:
        producer.close(timeout=2)


def test_kafka_python_roundtrip_with_group_commit(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic(partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    for i in range(10):
        producer.send(topic, key=str(i % 3).encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=15000)
    got = []
    for msg in consumer:
        got.append(msg.value)
        if len(got) == 10:
            break
    consumer.commit()
    committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in (0, 1))
    consumer.close()
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(10))
    assert committed == 10


def test_kafka_python_transactions(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"committed-1")
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed-2")
    producer.commit_transaction()
    producer.close()
    assert _consume(kafka_bootstrap, topic, 2, isolation_level="read_committed") == [b"committed-1", b"committed-2"]
    assert b"aborted" in _consume(kafka_bootstrap, topic, 3, isolation_level="read_uncommitted")


# --------------------------------------------------------------------------- aiokafka


def test_aiokafka_group_and_transactions(kafka_bootstrap: str, make_topic) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition as ATP

    src, dst = make_topic(partitions=2), make_topic()
    group = f"ag-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[list[bytes], list[bytes], int]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(4):
                await producer.send_and_wait(src, f"a{i}".encode(), key=str(i).encode())
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(src, bootstrap_servers=kafka_bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(20):
                while len(got) < 4:
                    for msgs in (await consumer.getmany(timeout_ms=500)).values():
                        got += [m.value for m in msgs]
            await consumer.commit()
        finally:
            await consumer.stop()

        # Consume-transform-produce: output and input offsets in one transaction (what faust EOS does).
        tx = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"atx-{group}")
        await tx.start()
        try:
            async with tx.transaction():
                await tx.send(dst, b"c1")
                await tx.send_offsets_to_transaction({ATP(src, 0): 1}, f"{group}-eos")
            with pytest.raises(RuntimeError):
                async with tx.transaction():
                    await tx.send_and_wait(dst, b"aborted")
                    raise RuntimeError("abort")
            async with tx.transaction():
                await tx.send(dst, b"c2")
        finally:
            await tx.stop()

        rc = AIOKafkaConsumer(dst, bootstrap_servers=kafka_bootstrap, isolation_level="read_committed",
                              auto_offset_reset="earliest")
        await rc.start()
        seen: list[bytes] = []
        try:
            async with asyncio.timeout(15):
                while len(seen) < 2:
                    for msgs in (await rc.getmany(timeout_ms=500)).values():
                        seen += [m.value for m in msgs]
        finally:
            await rc.stop()

        check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"{group}-eos",
                                 enable_auto_commit=False)
        await check.start()
        try:
            eos_offset = await check.committed(ATP(src, 0))
        finally:
            await check.stop()
        return got, seen, eos_offset

    got, seen, eos_offset = asyncio.run(run())
    assert sorted(got) == [b"a0", b"a1", b"a2", b"a3"]
    assert seen == [b"c1", b"c2"]
    assert eos_offset == 1


# --------------------------------------------------------------------------- faust-streaming

FAUST_APP = '''
import faust

app = faust.App({app_id!r}, broker="kafka://{bootstrap}", store="memory://",
                processing_guarantee={guarantee!r}, topic_partitions=1, topic_replication_factor=1,
                datadir={datadir!r}, web_enabled=False)
source = app.topic({src!r}, value_type=bytes, value_serializer="raw")
sink = app.topic({dst!r}, value_type=bytes, value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1)


@app.agent(source)
async def process(stream):
    async for value in stream:
        counts[value] += 1
        await sink.send(value=value + b"!" + str(counts[value]).encode())


if __name__ == "__main__":
    app.main()
'''


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_worker_joins_group_and_processes(kafka_bootstrap: str, make_topic, tmp_path: Path,
                                                guarantee: str) -> None:
    # Source/sink topics must exist (auto.create.topics.enable=false); faust creates its own
    # internal ones (table changelog, assignor leader topic) through the admin API.
    src, dst = make_topic(), make_topic()
    app_id = f"fx-{uuid.uuid4().hex[:8]}"
    app_file = tmp_path / "faust_app.py"
    app_file.write_text(FAUST_APP.format(app_id=app_id, bootstrap=kafka_bootstrap, guarantee=guarantee,
                                         datadir=str(tmp_path / "data"), src=src, dst=dst))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for v in (b"a", b"b", b"a"):
        producer.send(src, v)
    producer.flush()
    producer.close()

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    worker = subprocess.Popen([sys.executable, str(app_file), "worker", "--without-web", "-l", "info"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.decode(errors="replace") for ln in worker.stdout),
                              daemon=True)
    reader.start()
    try:
        out = _consume(kafka_bootstrap, dst, 3, timeout_s=25, isolation_level="read_committed")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        reader.join(timeout=5)
    log = "".join(lines)
    assert out == [b"a!1", b"b!1", b"a!2"], log[-3000:]
    assert f"Joined group '{app_id}'" in log
