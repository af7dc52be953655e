"""Replay without a broker: pure helpers, checkpoints and the send loop against a fake producer."""
from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from models.datasets import write_jsonl
from models.schema import LogEvent
from models.synthetic import GeneratorConfig, generate
from stream.events import decode_event, user_key
from stream.replay import (
    Checkpoint, Pacer, ReplayError, ReplayOptions, Replayer, checkpoint_path, in_window,
    pacing_delay, parse_speed, parse_ts, read_checkpoint, replay_events, replay_file,
    skip_events, write_checkpoint,
)

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- pure helpers


def test_parse_speed() -> None:
    assert parse_speed("max") is None and parse_speed("MAX") is None
    assert parse_speed("60") == 60.0 and parse_speed("0.5") == 0.5
    for bad in ("0", "-2", "fast", "inf", "nan"):
        with pytest.raises(ValueError):
            parse_speed(bad)


def test_parse_ts() -> None:
    assert parse_ts("1704067200000") == 1_704_067_200_000
    assert parse_ts("2024-01-01") == 1_704_067_200_000
    assert parse_ts("2024-01-01T01:00:00Z") == 1_704_070_800_000
    assert parse_ts("2024-01-01T02:00:00+01:00") == 1_704_070_800_000
    with pytest.raises(ValueError, match="seconds by mistake"):
        parse_ts("1704067200")
    with pytest.raises(ValueError):
        parse_ts("yesterday")


def test_window_is_half_open() -> None:
    assert in_window(5, None, None)
    assert in_window(5, 5, 6) and not in_window(6, 5, 6) and not in_window(4, 5, None)


def test_pacing_delay() -> None:
    # 60 s of event time at 60x is due 1 s after the first event.
    assert pacing_delay(60_000, 0, 60.0, 0.0) == pytest.approx(1.0)
    assert pacing_delay(60_000, 0, 60.0, 0.25) == pytest.approx(0.75)
    assert pacing_delay(60_000, 0, 60.0, 2.0) == 0.0  # behind schedule: no wait
    assert pacing_delay(-5_000, 0, 60.0, 0.0) == 0.0  # unsorted log: never stall


def test_pacer_sleeps_by_event_time() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    for ts in (1_000, 2_000, 2_001, 12_000):
        pacer.wait(ts)
    # 1 s of event time = 0.1 s wall; 1 ms more = 0.1 ms (below min_sleep: skipped); 12 s is
    # due at 1.1 s, and 0.1 s have passed.
    assert slept == pytest.approx([0.1, 1.0])
    assert Pacer(None).wait(123) == 0.0


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "log.jsonl")
    assert path.name == "log.jsonl.replay-checkpoint.json"
    assert checkpoint_path("x", tmp_path / "cp.json") == tmp_path / "cp.json"
    assert read_checkpoint(path) is None
    write_checkpoint(path, Checkpoint("/a/log.jsonl", "jsonl", 1234, 1200, False, "p-"))
    cp = read_checkpoint(path)
    assert cp is not None and (cp.position, cp.sent, cp.prefix, cp.complete) == (1234, 1200, "p-", False)
    assert cp.updated_at
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text("{not json")
    with pytest.raises(ReplayError, match="unreadable"):
        read_checkpoint(path)
    path.write_text(json.dumps({"source": "a", "fmt": "jsonl", "position": -1}))
    with pytest.raises(ReplayError):
        read_checkpoint(path)


def test_skip_events() -> None:
    assert list(skip_events(range(5), 2)) == [2, 3, 4]  # type: ignore[arg-type]
    assert list(skip_events(range(5), 0)) == [0, 1, 2, 3, 4]  # type: ignore[arg-type]
    assert list(skip_events(range(5), 9)) == []  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fake producer


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, fn) -> "FakeFuture":
        if self.error is not None:
            fn(self.error)
        return self


class FakeProducer:
    def __init__(self, partitions: int = 4, fail_after: int | None = None) -> None:
        self.partitions = partitions
        self.fail_after = fail_after
        self.records: list[tuple[str, int, bytes, bytes, int]] = []
        self.flushed = 0  # records acknowledged at the last flush
        self.closed = False

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None) -> FakeFuture:
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            return FakeFuture(RuntimeError("broker said no"))
        self.records.append((topic, partition, key, value, timestamp_ms))
        return FakeFuture(None)

    def flush(self) -> None:
        self.flushed = len(self.records)

    def close(self, timeout=None) -> None:
        self.closed = True


def _replayer(producer: FakeProducer | None = None, prefix: str = "t-") -> Replayer:
    return Replayer("fake:9092", prefix=prefix, producer=producer or FakeProducer())


@pytest.fixture(scope="module")
def small_log():
    return generate(GeneratorConfig(users=40, events=3_000, items=500, categories=20, seed=3))


def test_replayer_routes_keys_and_partitions(small_log) -> None:
    from kafka.partitioner.default import murmur2

    r = _replayer()
    events = list(small_log.events())
    summary = replay_events(events, r, progress=False)
    assert summary.total == len(events) and summary.complete
    recs = r.producer.records
    assert [t for t, *_ in recs] == [f"t-{e.action}" for e in events]
    for (topic, part, key, value, ts), ev in zip(recs, events):
        assert key == user_key(ev.user_id)
        assert part == (murmur2(key) & 0x7FFFFFFF) % 4  # what the default partitioner picks
        decoded = decode_event(key, value, topic=topic, prefix="t-")
        assert (decoded.user_id, decoded.item_id, decoded.ts, decoded.action) == (
            ev.user_id, ev.item_id, ev.ts_ms, ev.action)
        assert ts == ev.ts_ms
    assert summary.sent == {a: sum(e.action == a for e in events) for a in ("click", "cart", "purchase")}


def test_window_and_limit(small_log) -> None:
    events = list(small_log.events())
    lo, hi = events[1000].ts_ms, events[2000].ts_ms
    r = _replayer()
    s = replay_events(events, r, from_ts=lo, to_ts=hi, progress=False)
    want = [e for e in events if lo <= e.ts_ms < hi]
    assert s.total == len(want) and s.filtered == len(events) - len(want)
    r2 = _replayer()
    s2 = replay_events(events, r2, limit=10, progress=False)
    assert s2.total == 10 and s2.position == 10 and not s2.complete


def test_checkpoints_only_after_flush(small_log) -> None:
    producer = FakeProducer()
    r = _replayer(producer)
    seen: list[tuple[int, bool, int]] = []
    replay_events(small_log.events(), r, progress=False, checkpoint_every=1000,
                  on_checkpoint=lambda pos, done: seen.append((pos, done, producer.flushed)))
    assert [(p, d) for p, d, _ in seen] == [(1000, False), (2000, False), (3000, False), (3000, True)]
    assert all(flushed >= pos for pos, _, flushed in seen)


def test_failed_send_stops_without_checkpoint(small_log) -> None:
    r = _replayer(FakeProducer(fail_after=1500))
    seen: list[int] = []
    with pytest.raises(ReplayError, match="not delivered"):
        replay_events(small_log.events(), r, progress=False, checkpoint_every=1000,
                      on_checkpoint=lambda pos, done: seen.append(pos))
    assert seen == [1000]  # the last good checkpoint stands


def test_missing_or_uneven_topics() -> None:
    class NoTopics(FakeProducer):
        def partitions_for(self, topic):
            return None

    class Uneven(FakeProducer):
        def partitions_for(self, topic):
            return set(range(3 if topic.endswith("cart") else 4))

    with pytest.raises(ReplayError, match="does not exist"):
        _replayer(NoTopics())
    with pytest.raises(ReplayError, match="co-partitioned"):
        _replayer(Uneven())


def test_replay_file_resume_has_no_gaps_or_duplicates(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    # A bad line in the middle: skipped and counted, and it does not shift the positions.
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(700, "{broken\n")
    path.write_text("".join(lines))
    sent: list[bytes] = []
    positions = []
    for limit in (500, 1200, None):
        r = _replayer()
        s = replay_file(ReplayOptions(path, "jsonl", prefix="t-", resume=True, limit=limit,
                                      progress=False, checkpoint_every=300), r)
        sent += [v for *_, v, _ts in r.producer.records]
        positions.append(s.position)
    assert positions == [500, 1700, 3000]
    assert len(sent) == len(small_log)
    assert sent == [rec[3] for rec in _all_records(small_log)]
    cp = read_checkpoint(checkpoint_path(path))
    assert cp is not None and cp.complete and cp.sent == len(small_log)
    # Resuming a complete replay sends nothing.
    r = _replayer()
    s = replay_file(ReplayOptions(path, "jsonl", prefix="t-", resume=True, progress=False), r)
    assert s.total == 0 and s.complete


def _all_records(log):
    r = _replayer()
    replay_events(log.events(), r, progress=False)
    return r.producer.records


def test_resume_checks_the_checkpoint_matches(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(0, 100), path)
    replay_file(ReplayOptions(path, "jsonl", prefix="t-", limit=10, progress=False), _replayer())
    with pytest.raises(ReplayError, match="prefix"):
        replay_file(ReplayOptions(path, "jsonl", prefix="other-", resume=True, progress=False),
                    _replayer(prefix="other-"))
    # Without --resume it starts over (and overwrites the checkpoint).
    s = replay_file(ReplayOptions(path, "jsonl", prefix="t-", progress=False), _replayer())
    assert s.total == 100 and s.resumed_from == 0


def test_on_error_stop_checkpoints_before_the_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ev = LogEvent(1, 2, "click", 1_704_067_200_000)
    good = json.dumps({"user_id": 1, "item_id": 2, "action": "click", "ts": ev.ts_ms}) + "\n"
    path.write_text(good * 3 + "{bad\n" + good)
    r = _replayer()
    with pytest.raises(ReplayError, match="bad row"):
        replay_file(ReplayOptions(path, "jsonl", prefix="t-", on_error="stop", progress=False), r)
    cp = read_checkpoint(checkpoint_path(path))
    assert cp is not None and cp.position == 3 and len(r.producer.records) == 3


def test_msgpack_file(small_log, tmp_path: Path) -> None:
    from models.datasets import write_msgpack

    path = tmp_path / "log.msgpack"
    write_msgpack(small_log.events(), path)
    r = _replayer()
    s = replay_file(ReplayOptions(path, "msgpack", prefix="t-", progress=False), r)
    assert s.total == len(small_log)
    body = msgpack.unpackb(r.producer.records[0][3])
    assert set(body) >= {"user_id", "item_id", "ts", "category_id", "session_id"}


# --------------------------------------------------------------------------- CLI


def build_parser():
    """Only our subcommands, so the tests do not depend on the rest of the CLI."""
    from stream import generate_cli, replay
    from stream.cli import OneLineParser

    parser = OneLineParser(prog="seqstream")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    replay.add_cli(sub)
    generate_cli.add_cli(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_bad_args_are_one_line(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["replay", "x.jsonl", "--format", "jsonl", "--speed", "fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "speed" in err
    assert _run(["replay", str(tmp_path / "nope.jsonl"), "--format", "jsonl",
                 "--bootstrap", "127.0.0.1:1"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_generate_cli_writes_log_and_truth(tmp_path: Path, capsys) -> None:
    from models.datasets import read_events

    out = tmp_path / "g.jsonl"
    assert _run(["generate", "--users", "20", "--events", "500", "--seed", "4", "--items", "100",
                 "--out", str(out), "--no-progress"]) == 0
    events = list(read_events(out, "jsonl", on_error="stop"))
    assert len(events) == 500
    truth = json.loads((tmp_path / "g.jsonl.truth.json").read_text())
    assert len(truth["churners"]) == 4
    mp = tmp_path / "g.msgpack"
    assert _run(["generate", "--users", "20", "--events", "500", "--seed", "4", "--items", "100",
                 "--out", str(mp), "--no-progress"]) == 0
    assert [e.item_id for e in read_events(mp, "msgpack")] == [e.item_id for e in events]
    assert _run(["generate", "--users", "20", "--events", "5", "--out", str(out)]) == 2
    assert _run(["generate", "--users", "20", "--events", "50", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "must be at least users" in err and ".jsonl or .msgpack" in err
