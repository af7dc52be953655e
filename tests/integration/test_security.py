"""A secured cluster for real: the embedded broker with a SASL_PLAINTEXT listener (PLAIN, user
alice) on its own port. With the right credentials `seqstream topics create`, a replay of a
generated log, `seqstream model list` and a worker work, and an independent kafka-python
consumer, itself logged in over SASL, counts one prediction per event. With a wrong password
the same commands fail within 30 s with one line and a non-zero exit. The password appears in
no output, even at debug level."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from stream.broker.embedded import EmbeddedBroker
from stream.broker.install import BrokerError
from stream.broker.process import free_port
from stream.config import Settings
from stream.topics import topic_specs
from tests.integration.workers import REPO, WorkerProcess, untrained_checkpoint

pytestmark = pytest.mark.integration

USER = "alice"
PASSWORD = "s3cret-" + uuid.uuid4().hex[:12]  # unique: a hit in any output is a leak
WRONG = "wrong-" + uuid.uuid4().hex[:12]
FAIL_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory) -> EmbeddedBroker:
    broker = EmbeddedBroker(port=free_port(), data_dir=tmp_path_factory.mktemp("kafka-sasl"),
                            sasl_users={USER: PASSWORD, "bob": "other-" + uuid.uuid4().hex[:8]})
    try:
        broker.start(timeout_s=180)
    except BrokerError as e:
        pytest.fail(f"embedded SASL broker did not start: {e}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop(timeout_s=30)


def _env(password: str | None, password_file: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSTREAM_")}
    env.update(SEQSTREAM_SECURITY_PROTOCOL="SASL_PLAINTEXT", SEQSTREAM_SASL_MECHANISM="PLAIN",
               SEQSTREAM_SASL_USERNAME=USER, PYTHONUNBUFFERED="1",
               SEQSTREAM_CACHE=os.environ.get("SEQSTREAM_CACHE", str(Path.home() / ".cache" / "seqstream")))
    if password is not None:
        env["SEQSTREAM_SASL_PASSWORD"] = password
    if password_file is not None:
        env["SEQSTREAM_SASL_PASSWORD_FILE"] = str(password_file)
    return env


def _seqstream(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def _sasl_consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """The judge: plain kafka-python, logged in by hand (not through stream.kafka)."""
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="PLAIN", sasl_plain_username=USER, sasl_plain_password=PASSWORD)


def _count(bootstrap: str, topic: str, want: int, timeout_s: float, worker: WorkerProcess) -> int:
    consumer = _sasl_consumer(bootstrap, topic)
    n, deadline = 0, time.monotonic() + timeout_s
    try:
        while n < want and time.monotonic() < deadline:
            n += sum(len(r) for r in consumer.poll(timeout_ms=500).values())
            if not worker.alive():
                pytest.fail(f"worker exited early:\n{worker.tail()}")
        end = time.monotonic() + 2.0  # duplicates after the expected count are caught too
        while time.monotonic() < end:
            n += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
    finally:
        consumer.close()
    return n


def _assert_one_line_failure(res: subprocess.CompletedProcess, command: str, bootstrap: str,
                             elapsed: float) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert elapsed < FAIL_WITHIN_S, f"{command} took {elapsed:.1f}s to fail"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [f"seqstream {command}: authentication failed for user {USER} (SASL PLAIN) at "
                     f"{bootstrap}: check SEQSTREAM_SASL_USERNAME and the password "
                     "(SEQSTREAM_SASL_PASSWORD or --sasl-password-file)"], out
    assert "Traceback" not in out
    assert WRONG not in out and PASSWORD not in out


def test_sasl_end_to_end_and_wrong_password(sasl_broker: EmbeddedBroker, tmp_path: Path) -> None:
    bootstrap = sasl_broker.sasl_bootstrap
    tag = uuid.uuid4().hex[:8]
    prefix, app_id = f"sec{tag}.", f"it-sec-{tag}"
    common = ["--broker", bootstrap, "--prefix", prefix]
    password_file = tmp_path / "sasl-password"
    password_file.write_text(PASSWORD + "\n")  # a trailing newline, as editors and secrets leave it
    password_file.chmod(0o600)
    good_env = _env(PASSWORD)
    file_env = _env(None, password_file)
    bad_env = _env(WRONG)

    # -- wrong password first: every command fails fast, in one line, with a non-zero exit
    log_file = tmp_path / "events.jsonl"
    res = _seqstream("generate", "--users", "20", "--events", "240", "--seed", "3", "--items", "300", "--days", "1",
                     "--out", str(log_file), "--no-progress", env=good_env)
    assert res.returncode == 0, res.stderr
    # Replayed records carry their event time, and the topics keep 7 days: move the log to the
    # last few hours, or the broker's first retention pass deletes it under the worker.
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    shift = int(time.time() * 1000) - max(r["ts"] for r in rows) - 60_000
    log_file.write_text("".join(json.dumps({**r, "ts": r["ts"] + shift}) + "\n" for r in rows))
    n_events = len(rows)
    assert n_events == 240
    for command, args in (("topics", ["topics", "create", "--partitions", "2", "--app-id", app_id]),
                          ("replay", ["replay", str(log_file), "--format", "jsonl", "--speed", "max", "--no-progress"]),
                          ("worker", ["worker", "--app-id", app_id, "--data-dir", str(tmp_path / "bad"),
                                      "--no-online", "--log-level", "debug"])):
        t0 = time.monotonic()
        res = _seqstream(*args, *common, env=bad_env, timeout_s=FAIL_WITHIN_S + 30)
        _assert_one_line_failure(res, command, bootstrap, time.monotonic() - t0)

    # -- the right password: from the environment, and from a file
    res = _seqstream("topics", "create", "--partitions", "2", "--app-id", app_id, *common, env=file_env)
    assert res.returncode == 0, res.stdout + res.stderr
    every_topic = len(topic_specs(Settings(prefix=prefix, app_id=app_id), 2))
    assert f"created {every_topic} topics" in res.stdout and PASSWORD not in res.stdout + res.stderr
    res = _seqstream("replay", str(log_file), "--format", "jsonl", "--speed", "max", "--no-progress",
                     *common, env=good_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"sent {n_events} events" in res.stdout, res.stdout
    assert PASSWORD not in res.stdout + res.stderr
    res = _seqstream("model", "list", *common, env=file_env)
    assert res.returncode == 0, res.stdout + res.stderr

    worker_log = tmp_path / "worker.log"
    settings = Settings(prefix=prefix, app_id=app_id, broker=bootstrap)
    model = untrained_checkpoint(tmp_path / "model.pt", 300, 20)
    # faust (consumer, producer, admin) and the model-updates follower all log in over SASL.
    # At debug level, so that its log is the most talkative one the password could leak into.
    # (A debug worker once seemed to consume nothing: its replayed, historical records had been
    # deleted by the broker's first retention pass; see test_debug_log.py.)
    worker = WorkerProcess(settings, model, tmp_path / "state", worker_log, "--no-online",
                           "--log-level", "debug",
                           "--sasl-password-file", str(password_file), env=_env(None))
    try:
        got = _count(bootstrap, settings.predictions_topic, n_events, timeout_s=180, worker=worker)
    finally:
        worker.stop()
    assert got == n_events, worker.tail()
    text = worker_log.read_text(errors="replace")
    assert PASSWORD not in text

    # the judge saw them over SASL; the PLAINTEXT listener agrees (same topic, same broker)
    plain = KafkaConsumer(settings.predictions_topic, bootstrap_servers=sasl_broker.bootstrap,
                          auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    try:
        seen, deadline = 0, time.monotonic() + 20
        while seen < n_events and time.monotonic() < deadline:
            seen += sum(len(r) for r in plain.poll(timeout_ms=500).values())
    finally:
        plain.close()
    assert seen == n_events

    res = _seqstream("topics", "check", "--app-id", app_id, *common, env=good_env)
    assert res.returncode == 0, res.stderr


def test_logs_of_a_refused_login_hold_no_password(sasl_broker: EmbeddedBroker, caplog) -> None:
    """In process, every logger at DEBUG: our check and a raw kafka-python client both refused;
    neither password shows in any record."""
    from kafka import KafkaAdminClient

    from stream.kafka import KafkaAuthError, check_login, kafka_client_options

    settings = Settings(security_protocol="SASL_PLAINTEXT", sasl_username=USER, sasl_password=WRONG)
    options = kafka_client_options(settings)
    with caplog.at_level(logging.DEBUG):
        for name in ("kafka", "aiokafka", "stream", "seqstream"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        t0 = time.monotonic()
        with pytest.raises(KafkaAuthError, match=f"authentication failed for user {USER}"):
            check_login(sasl_broker.sasl_bootstrap, options)
        assert time.monotonic() - t0 < 10
        with pytest.raises(Exception):
            KafkaAdminClient(bootstrap_servers=sasl_broker.sasl_bootstrap, bootstrap_timeout_ms=3000,
                             request_timeout_ms=3000, **options)
        logging.getLogger("kafka").setLevel(logging.WARNING)
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "SaslAuthenticationFailed" in text  # the client did log the refusal...
    assert WRONG not in text and PASSWORD not in text  # ...and never the password
