"""Replay against the real broker: counts per topic, keys, per-user order within each topic,
and resume after an interruption with no duplicates and nothing missing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from models.datasets.dump import write_jsonl
from models.schema import ACTIONS
from models.synthetic import GeneratorConfig, SyntheticLog, generate
from stream.events import user_key
from stream.replay.checkpoint import checkpoint_path, read_checkpoint
from stream.replay.file import replay_file
from stream.replay.loop import replay_events
from stream.replay.options import ReplayError, ReplayOptions
from stream.replay.producer import Replayer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 3


@pytest.fixture()
def prefix(kafka_bootstrap: str):
    """Fresh, co-partitioned input topics under a unique prefix; deleted afterwards."""
    prefix = f"rp-{uuid.uuid4().hex[:8]}-"
    names = [f"{prefix}{a}" for a in ACTIONS]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="seqstream-tests")
    admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    try:
        yield prefix
    finally:
        try:
            admin.delete_topics(names)
        finally:
            admin.close()


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(GeneratorConfig(users=60, events=6_000, items=800, categories=30, seed=11))


def consume_all(bootstrap: str, prefix: str, expected: int) -> dict[str, list]:
    """Every record of the three input topics, per topic, in partition order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(f"{prefix}{a}", p) for a in ACTIONS for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        assert sum(ends.values()) == expected, f"broker holds {sum(ends.values())}, want {expected}"
        out: dict[str, list] = defaultdict(list)
        # poll with a deadline rather than an idle timeout: shared CI machines stall for seconds
        deadline = time.monotonic() + 60
        while sum(len(v) for v in out.values()) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    out[rec.topic[len(prefix):]].append(rec)
        return out
    finally:
        consumer.close()


def check_against(log: SyntheticLog, got: dict[str, list]) -> None:
    events = list(log.events())
    for action in ACTIONS:
        want = [e for e in events if e.action == action]
        recs = got[action]
        assert len(recs) == len(want), action
        by_user_got: dict[int, list] = defaultdict(list)
        parts: dict[bytes, set[int]] = defaultdict(set)
        for rec in sorted(recs, key=lambda r: (r.partition, r.offset)):
            body = msgpack.unpackb(rec.value)
            assert rec.key == user_key(body["user_id"])
            parts[rec.key].add(rec.partition)
            by_user_got[body["user_id"]].append((body["ts"], body["item_id"]))
        assert all(len(p) == 1 for p in parts.values())  # a user lives on one partition
        by_user_want: dict[int, list] = defaultdict(list)
        for e in want:
            by_user_want[e.user_id].append((e.ts_ms, e.item_id))
        assert by_user_got == by_user_want  # each user's events, in file order, no dups


def test_replay_file_lands_in_order(kafka_bootstrap: str, prefix: str, log: SyntheticLog,
                                    tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(log.events(), path)
    replayer = Replayer(kafka_bootstrap, prefix=prefix)
    try:
        summary = replay_file(ReplayOptions(path, "jsonl", prefix=prefix, progress=False), replayer)
    finally:
        replayer.close()
    assert summary.complete and summary.total == len(log) and summary.bad_rows == 0
    got = consume_all(kafka_bootstrap, prefix, len(log))
    assert {a: len(got[a]) for a in ACTIONS} == summary.sent
    check_against(log, got)


def test_resume_after_interruption(kafka_bootstrap: str, prefix: str, log: SyntheticLog,
                                   tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(log.events(), path)
    positions = []
    for limit in (1_234, 2_000, None):  # two "interrupted" runs, then the rest
        replayer = Replayer(kafka_bootstrap, prefix=prefix)
        try:
            s = replay_file(ReplayOptions(path, "jsonl", prefix=prefix, resume=True, limit=limit,
                                          progress=False, checkpoint_every=500), replayer)
        finally:
            replayer.close()
        positions.append(s.position)
    assert positions == [1_234, 3_234, len(log)]
    cp = read_checkpoint(checkpoint_path(path))
    assert cp is not None and cp.complete and cp.sent == len(log)
    check_against(log, consume_all(kafka_bootstrap, prefix, len(log)))


def _lanes_replay(bootstrap: str, prefix: str, path: Path, **opts) -> object:
    """replay_file with 2 producers: each lane makes its own Replayer after the fork."""
    return replay_file(ReplayOptions(path, "jsonl", prefix=prefix, progress=False, producers=2,
                                     **opts),
                       lambda: Replayer(bootstrap, prefix=prefix))


def test_two_lanes_land_every_event_once_in_order(kafka_bootstrap: str, prefix: str,
                                                  log: SyntheticLog, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(log.events(), path)
    summary = _lanes_replay(kafka_bootstrap, prefix, path, checkpoint_every=1_000)
    assert summary.producers == 2 and summary.complete and summary.total == len(log)
    got = consume_all(kafka_bootstrap, prefix, len(log))
    assert {a: len(got[a]) for a in ACTIONS} == summary.sent
    check_against(log, got)  # exactly once, each user's events in file order per topic
    cp = read_checkpoint(checkpoint_path(path))
    assert cp is not None and cp.complete and cp.lanes == [len(log)] * 2
    assert cp.partitions == PARTITIONS and cp.sent == len(log)


def test_two_lanes_resume_after_a_stop(kafka_bootstrap: str, prefix: str, log: SyntheticLog,
                                       tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(log.events(), path)
    # Deterministic "interruption": lane 0 stops after 700 sends, lane 1 after 1,500.
    first = _lanes_replay(kafka_bootstrap, prefix, path, checkpoint_every=400,
                          stop_lanes_after=(700, 1_500))
    cp = read_checkpoint(checkpoint_path(path))
    assert not first.complete and first.total == 2_200
    assert cp is not None and not cp.complete and cp.sent == 2_200
    assert cp.position == min(cp.lanes) and cp.lanes[0] != cp.lanes[1]
    # One producer goes on from the lanes checkpoint for a while (--limit), then 2 lanes finish.
    replayer = Replayer(kafka_bootstrap, prefix=prefix)
    try:
        mid = replay_file(ReplayOptions(path, "jsonl", prefix=prefix, resume=True, limit=500,
                                        progress=False, checkpoint_every=200), replayer)
    finally:
        replayer.close()
    assert mid.total == 500
    last = _lanes_replay(kafka_bootstrap, prefix, path, resume=True, checkpoint_every=400)
    assert last.complete and first.total + mid.total + last.total == len(log)
    check_against(log, consume_all(kafka_bootstrap, prefix, len(log)))


def test_ctrl_c_stops_the_lanes_cleanly(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """`seqstream replay` gets SIGINT on its process group, as Ctrl-C sends it: exit 130, and
    --resume completes the replay with every event exactly once. (Should the replay win the
    race and end first, the exactly-once check still holds.)"""
    big = generate(GeneratorConfig(users=2_000, events=60_000, items=3_000, categories=50, seed=5))
    path = tmp_path / "big.jsonl"
    write_jsonl(big.events(), path)
    cp_path = checkpoint_path(path)
    # Only the replay command (the full CLI imports torch: seconds per start).
    driver = ("import sys; from stream.cli import replay; from stream.cli.common import OneLineParser; "
              "p = OneLineParser(prog='seqstream'); replay.add_parser(p.add_subparsers()); "
              "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    proc = subprocess.Popen([sys.executable, "-c", driver, "replay", str(path), "--format", "jsonl",
                             "--prefix", prefix, "--broker", kafka_bootstrap, "--producers", "2",
                             "--checkpoint-every", "2000", "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not cp_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the first checkpoint: the lanes are sending
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, 0), err
    cp = read_checkpoint(cp_path)
    assert cp is not None and cp.lanes is not None
    if proc.returncode == 130:
        assert out.startswith("interrupted: sent") and not cp.complete
    rest = _lanes_replay(kafka_bootstrap, prefix, path, resume=True)
    assert rest.complete and cp.sent + rest.total == len(big)
    check_against(big, consume_all(kafka_bootstrap, prefix, len(big)))


def test_window_filter(kafka_bootstrap: str, prefix: str, log: SyntheticLog) -> None:
    events = list(log.events())
    lo, hi = events[1_000].ts_ms, events[3_000].ts_ms
    replayer = Replayer(kafka_bootstrap, prefix=prefix)
    try:
        s = replay_events(events, replayer, from_ts=lo, to_ts=hi, progress=False)
    finally:
        replayer.close()
    n = sum(lo <= e.ts_ms < hi for e in events)
    assert s.total == n and s.filtered == len(events) - n
    got = consume_all(kafka_bootstrap, prefix, n)
    assert all(lo <= msgpack.unpackb(r.value)["ts"] < hi for recs in got.values() for r in recs)


def test_cli_generate_to_kafka_and_replay(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """The commands end to end in a subprocess, as an operator runs them."""
    env_cmd = [sys.executable, "-c", "import sys; from stream.cli.main import main; sys.exit(main())"]
    out = tmp_path / "g.msgpack"
    gen = subprocess.run(env_cmd + ["generate", "--users", "30", "--events", "1000", "--seed", "2",
                                    "--out", str(out), "--to-kafka", "--prefix", prefix,
                                    "--broker", kafka_bootstrap, "--no-progress"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "g.msgpack.truth.json").is_file()
    rep = subprocess.run(env_cmd + ["replay", str(out), "--format", "msgpack", "--prefix", prefix,
                                    "--broker", kafka_bootstrap, "--speed", "max", "--limit", "400",
                                    "--no-progress"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "sent 400 events" in rep.stdout
    got = consume_all(kafka_bootstrap, prefix, 1_400)
    assert sum(len(v) for v in got.values()) == 1_400


def test_missing_topics_are_one_clear_error(kafka_bootstrap: str) -> None:
    with pytest.raises(ReplayError, match="seqstream topics create"):
        Replayer(kafka_bootstrap, prefix=f"nope-{uuid.uuid4().hex[:6]}-",
                 producer_config={"max_block_ms": 3_000})
