"""Replay without a broker: pure helpers, checkpoints and the send loop against a fake producer."""
from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from models.datasets.dump import write_jsonl
from models.schema import LogEvent
from models.synthetic import GeneratorConfig, generate
from stream.events import decode_event, user_key
from stream.replay.checkpoint import (
    ReplayCheckpoint, checkpoint_path, lanes_after, read_checkpoint, settled_in_lanes,
    write_checkpoint,
)
from stream.replay.file import replay_file
from stream.replay.loop import Pacer, pacing_delay, replay_events, skip_events
from stream.replay.options import (
    ReplayError, ReplayOptions, default_producers, in_window, parse_speed, parse_ts,
)
from stream.replay.producer import Replayer

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
    write_checkpoint(path, ReplayCheckpoint("/a/log.jsonl", "jsonl", 1234, 1200, False, "p-"))
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


def test_checkpoint_with_lanes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    write_checkpoint(path, ReplayCheckpoint("/a/log", "jsonl", 70, 150, False, "p-",
                                            lanes=[90, 70, 120], partitions=6))
    cp = read_checkpoint(path)
    assert cp is not None and (cp.position, cp.lanes, cp.partitions) == (70, [90, 70, 120], 6)
    # Written before lanes existed: read as a checkpoint without lanes.
    path.write_text(json.dumps({"source": "a", "fmt": "jsonl", "position": 5}))
    cp = read_checkpoint(path)
    assert cp is not None and cp.lanes is None and cp.partitions is None
    for bad in ({"lanes": [5, -1], "partitions": 4}, {"lanes": [], "partitions": 4},
                {"lanes": [5, 9]}, {"lanes": [6, 9], "partitions": 4},  # position != min(lanes)
                {"lanes": "5", "partitions": 4}):
        path.write_text(json.dumps({"source": "a", "fmt": "jsonl", "position": 5, **bad}))
        with pytest.raises(ReplayError, match="unreadable"):
            read_checkpoint(path)


def test_settled_in_lanes() -> None:
    # Lane of an event = its user id % 3 here; event i of lane k is settled iff i < lanes[k].
    events = [LogEvent(i % 3, 1, "click", 1_704_067_200_000 + i) for i in range(12)]
    lanes = [6, 2, 9]
    settled = settled_in_lanes(lanes, lambda ev: ev.user_id)
    got = [i for i, ev in enumerate(events) if not settled(i, ev)]
    assert got == [i for i in range(12) if i >= lanes[i % 3]] == [4, 6, 7, 9, 10, 11]
    assert lanes == [6, 2, 9]  # not mutated


def test_lanes_after() -> None:
    assert lanes_after(None, 10) is None
    assert lanes_after([6, 2, 9], 4) == [6, 4, 9]
    assert lanes_after([6, 2, 9], 9) is None  # nobody ahead: `position` says it all


def test_default_producers() -> None:
    assert default_producers(None, None, cpus=2) == 2
    assert default_producers(None, None, cpus=1) == 1
    assert default_producers(60.0, None, cpus=8) == 1  # paced: one producer
    assert default_producers(None, 100, cpus=8) == 1  # --limit: one producer


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
    from models.datasets.dump import write_msgpack

    path = tmp_path / "log.msgpack"
    write_msgpack(small_log.events(), path)
    r = _replayer()
    s = replay_file(ReplayOptions(path, "msgpack", prefix="t-", progress=False), r)
    assert s.total == len(small_log)
    body = msgpack.unpackb(r.producer.records[0][3])
    assert set(body) >= {"user_id", "item_id", "ts", "category_id", "session_id"}


def _lane(r: Replayer, n: int):
    return lambda ev: r.partition_of(ev.user_id) % n


def test_single_producer_resumes_a_lanes_checkpoint(small_log, tmp_path: Path) -> None:
    """A lanes checkpoint resumed with one producer (--limit): exactly the unsettled events go."""
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    events = list(small_log.events())
    cp_path = checkpoint_path(path)
    lanes = [1_900, 700]  # two lanes over the FakeProducer's 4 partitions
    write_checkpoint(cp_path, ReplayCheckpoint(str(path.resolve()), "jsonl", 700, 1234, False,
                                               "t-", lanes=lanes, partitions=4))
    lane_of = _lane(_replayer(), 2)
    settled = {i for i, ev in enumerate(events) if i < lanes[lane_of(ev)]}
    sent: list[bytes] = []
    cps, resumed = [], []
    for limit in (300, 200, None):
        r = _replayer()
        s = replay_file(ReplayOptions(path, "jsonl", prefix="t-", resume=True, limit=limit,
                                      progress=False, checkpoint_every=100), r)
        sent += [v for *_, v, _ts in r.producer.records]
        cps.append(read_checkpoint(cp_path))
        resumed.append(s.resumed_from)
    assert resumed[0] == 700 and resumed[1] == cps[0].position and resumed[2] == cps[1].position
    want = [rec[3] for i, rec in enumerate(_all_records(small_log)) if i not in settled]
    assert sent == want  # no duplicates, nothing missed, in file order
    # While lane 0 is ahead its position is kept; once caught up the lanes are dropped.
    assert cps[0].lanes is not None and cps[0].lanes[0] == 1_900 and cps[0].partitions == 4
    assert cps[0].position == cps[0].lanes[1] == min(cps[0].lanes)
    assert cps[-1].complete and cps[-1].lanes is None and cps[-1].position == len(events)
    assert cps[-1].sent == 1234 + len(want)
    # The partition count decides the lanes: another one cannot resume these positions.
    write_checkpoint(cp_path, ReplayCheckpoint(str(path.resolve()), "jsonl", 700, 0, False, "t-",
                                               lanes=lanes, partitions=4))
    with pytest.raises(ReplayError, match="partitions"):
        replay_file(ReplayOptions(path, "jsonl", prefix="t-", resume=True, progress=False),
                    _replayer(FakeProducer(partitions=6)))


# --------------------------------------------------------------------------- lanes (forked)


class RecordingProducer(FakeProducer):
    """Appends what each flush acknowledged to a file per lane, for the parent to read."""

    def __init__(self, out: Path, die_after: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.out = out
        self.die_after = die_after  # lane 1 exits abruptly after that many sends

    def send(self, topic, value=None, key=None, partition=None, timestamp_ms=None) -> FakeFuture:
        import multiprocessing
        import os

        name = multiprocessing.current_process().name
        if self.die_after is not None and name.endswith("-1") and len(self.records) >= self.die_after:
            os._exit(7)
        return super().send(topic, value, key, partition, timestamp_ms)

    def flush(self) -> None:
        import multiprocessing

        name = multiprocessing.current_process().name
        with open(self.out / f"{name}.jsonl", "a") as f:
            for topic, part, _key, value, _ts in self.records[self.flushed:]:
                f.write(json.dumps([topic, part, value.hex()]) + "\n")
        super().flush()


def _lanes_run(path: Path, out: Path, **kw) -> tuple:
    opts_kw = {k: kw.pop(k) for k in list(kw) if k in ReplayOptions.__dataclass_fields__}
    opts = ReplayOptions(path, opts_kw.pop("fmt", "jsonl"), prefix="t-", progress=False,
                         producers=2, **opts_kw)
    summary = replay_file(opts, lambda: Replayer("fake:9092", prefix="t-",
                                                 producer=RecordingProducer(out, **kw)))
    return summary, read_checkpoint(checkpoint_path(path))


def _acknowledged(out: Path) -> dict[str, list]:
    return {f.stem: [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(out.glob("*.jsonl"))}


def test_lanes_send_each_event_once_in_partition_order(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    out = tmp_path / "out"
    out.mkdir()
    summary, cp = _lanes_run(path, out, checkpoint_every=400)
    assert summary.complete and summary.producers == 2 and summary.total == len(small_log)
    want = [(t, p, v.hex()) for t, p, _k, v, _ts in _all_records(small_log)]
    got = _acknowledged(out)
    assert set(got) == {"seqstream-replay-lane-0", "seqstream-replay-lane-1"}
    for lane, recs in enumerate(got.values()):
        assert recs and {p % 2 for _t, p, _v in recs} == {lane}  # a lane owns its partitions
        assert [tuple(r) for r in recs] == [r for r in want if r[1] % 2 == lane]  # file order
    assert {a: n for a, n in summary.sent.items()} == {
        a: sum(e.action == a for e in small_log.events()) for a in ("click", "cart", "purchase")}
    assert cp is not None and cp.complete and cp.lanes == [len(small_log)] * 2
    assert cp.position == len(small_log) and cp.sent == len(small_log) and cp.partitions == 4


def test_lanes_resume_after_a_stop_has_no_gaps_or_duplicates(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(900, "{broken\n")  # counted once, not once per lane
    path.write_text("".join(lines))
    out = tmp_path / "out"
    out.mkdir()
    # Lane 0 stops after 300 sends, lane 1 after 1000: their positions differ.
    s1, cp1 = _lanes_run(path, out, checkpoint_every=200, resume=True, stop_lanes_after=(300, 1000))
    assert not s1.complete and cp1 is not None and not cp1.complete
    assert cp1.lanes[0] < cp1.lanes[1] and cp1.position == cp1.lanes[0] == s1.position
    assert cp1.sent == s1.total == 1300
    s2, cp2 = _lanes_run(path, out, checkpoint_every=200, resume=True)
    assert s2.complete and s2.resumed_from == cp1.position and s2.bad_rows == 1
    assert cp2 is not None and cp2.complete and cp2.sent == len(small_log)
    want = [(t, p, v.hex()) for t, p, _k, v, _ts in _all_records(small_log)]
    for lane, recs in enumerate(_acknowledged(out).values()):
        assert [tuple(r) for r in recs] == [r for r in want if r[1] % 2 == lane]


def test_lanes_resume_with_the_checkpoints_lane_count(small_log, tmp_path: Path, caplog) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    out = tmp_path / "out"
    out.mkdir()
    _lanes_run(path, out, checkpoint_every=100, stop_lanes_after=(150, 150))
    opts = ReplayOptions(path, "jsonl", prefix="t-", progress=False, producers=3, resume=True)
    with caplog.at_level("INFO", logger="seqstream.replay"):
        s = replay_file(opts, lambda: Replayer("fake:9092", prefix="t-",
                                               producer=RecordingProducer(out)))
    assert s.producers == 2 and s.complete and "has 2 lanes" in caplog.text
    assert sum(len(r) for r in _acknowledged(out).values()) == len(small_log)


def test_lanes_check_the_partition_count_on_resume(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    out = tmp_path / "out"
    out.mkdir()
    _lanes_run(path, out, checkpoint_every=100, stop_lanes_after=(150, 150))
    with pytest.raises(ReplayError, match="2 producers over 4 partitions, but the topics have 6"):
        _lanes_run(path, out, resume=True, partitions=6)


def test_a_dead_lane_stops_the_replay(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReplayError, match=r"^producer lane 1 died \(exit code 7\)"):
        _lanes_run(path, out, checkpoint_every=100, die_after=250)
    cp = read_checkpoint(checkpoint_path(path))
    # Lane 1 checkpoints every 50 sends (100 / 2 lanes): its last one, at 250 sends, stands.
    lane_of = _lane(_replayer(), 2)
    lane1 = [i for i, ev in enumerate(small_log.events()) if lane_of(ev) == 1]
    assert cp is not None and not cp.complete and cp.lanes[1] == lane1[249] + 1


def test_a_failed_send_in_a_lane_is_one_error_line(small_log, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_jsonl(small_log.events(), path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReplayError, match="not delivered") as exc:
        _lanes_run(path, out, checkpoint_every=100, fail_after=250)
    assert "\n" not in str(exc.value)


def test_lanes_on_error_stop_checkpoint_before_the_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    rows = [json.dumps({"user_id": u, "item_id": 2, "action": "click", "ts": 1_704_067_200_000 + u})
            for u in range(40)]
    path.write_text("\n".join(rows[:25] + ["{bad"] + rows[25:]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReplayError, match=r"^bad row, stopping: .*:26:"):
        _lanes_run(path, out, on_error="stop")
    cp = read_checkpoint(checkpoint_path(path))
    assert cp is not None and cp.lanes == [25, 25] and cp.position == 25
    assert sum(len(r) for r in _acknowledged(out).values()) == 25


# --------------------------------------------------------------------------- CLI


def build_parser():
    """Only our subcommands, so the tests do not depend on the rest of the CLI."""
    from stream.cli import generate, replay
    from stream.cli.common import OneLineParser

    parser = OneLineParser(prog="seqstream")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser)
    replay.add_parser(sub)
    generate.add_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def _assert_one_line_usage_error(capsys, flags: list[str], word: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["replay", "x.jsonl", "--format", "jsonl", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and word in err


def test_cli_bad_args_are_one_line(capsys, tmp_path: Path) -> None:
    _assert_one_line_usage_error(capsys, ["--speed", "fast"], "speed")
    assert _run(["replay", str(tmp_path / "nope.jsonl"), "--format", "jsonl",
                 "--broker", "127.0.0.1:1"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_producers_option(capsys, tmp_path: Path) -> None:
    _assert_one_line_usage_error(capsys, ["--producers", "0"], "positive integer")
    # Paced: one producer, and a one-line note (the run itself fails here: no such file).
    assert _run(["replay", str(tmp_path / "nope.jsonl"), "--format", "jsonl", "--speed", "60",
                 "--producers", "3", "--broker", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("seqstream replay: note: --producers 3 applies to --speed max "
                                   "without --limit; using one producer")
    assert _run(["replay", str(tmp_path / "nope.jsonl"), "--format", "jsonl", "--speed", "60",
                 "--broker", "127.0.0.1:1"]) == 1
    assert "note" not in capsys.readouterr().err  # the default says nothing


def test_generate_cli_writes_log_and_truth(tmp_path: Path, capsys) -> None:
    from models.datasets.reader import read_events

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


def test_replay_keeps_string_ids(tmp_path: Path) -> None:
    from kafka.partitioner.default import murmur2

    from models.datasets.reader import read_events

    path = tmp_path / "shop.jsonl"
    write_jsonl([LogEvent("541312140", "B07XJ8C8F5", "click", T_SHOP, category_id="shoes"),
                 LogEvent("9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", 42, "cart", T_SHOP + 1),
                 LogEvent("007", "007", "purchase", T_SHOP + 2)], path)
    r = _replayer()
    replay_events(list(read_events(path, "jsonl", on_error="stop")), r, progress=False)
    got = []
    for topic, part, key, value, _ts in r.producer.records:
        assert part == (murmur2(key) & 0x7FFFFFFF) % 4
        ev = decode_event(key, value, topic=topic, prefix="t-")
        got.append((key, ev.user_id, ev.item_id, ev.category_id))
    assert got == [(b"541312140", 541312140, "B07XJ8C8F5", "shoes"),
                   (b"9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", 42, None),
                   (b"007", "007", "007", None)]


T_SHOP = 1_700_000_000_000
