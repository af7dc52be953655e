"""kill -9 under paced load: two workers share 4 partitions; one is killed mid-stream (SIGKILL: no
commit, no flush) and restarted on its data dir a few seconds later. An independent kafka-python
consumer of predictions judges every produced event by its source (topic, partition, offset).

at_least_once: no event without a prediction; duplicates are allowed and counted. exactly_once:
the judge reads read_committed and sees each source once. Both: each user's user_events counter
(state from the changelog) is exact at the end. The printed FAULT line gives the figures
(RELIABILITY.md); recovery_s is kill -> the first new prediction for a partition the killed worker
owned."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from stream.topics import delete_topics
from tests.faults.scenario import (Judge, Worker, deployment4, judge_outcome, send_paced,
                                   wait_all, wait_owned)
from tests.integration.test_worker import N_ITEMS, make_events
from tests.integration.workers import untrained_checkpoint

RESTART_AFTER_S = 5.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", N_ITEMS, 10)


def kill_scenario(bootstrap: str, checkpoint: Path, tmp_path: Path, guarantee: str, n: int,
                  rate: float, kill_at: int, name: str):
    settings = deployment4(bootstrap)
    events = make_events(n, seed=7)
    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    judge = Judge(bootstrap, settings.predictions_topic, isolation)
    a = Worker(settings, checkpoint, tmp_path / "a", tmp_path / "a.log", guarantee)
    b = Worker(settings, checkpoint, tmp_path / "b", tmp_path / "b.log", guarantee)
    workers = [a, b]
    fault: dict = {}
    try:
        a.wait_ready()
        b.wait_ready()
        wait_owned(workers)

        def kill() -> None:
            owned = wait_owned(workers, timeout_s=10)
            fault.update(moved=owned[1], at=time.monotonic(), wall_ms=int(time.time() * 1000))
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait()

        def restart() -> None:
            workers.append(Worker(settings, checkpoint, tmp_path / "b", tmp_path / "b2.log",
                                  guarantee))

        at = {kill_at: kill, kill_at + int(RESTART_AFTER_S * rate): restart}
        sources = send_paced(bootstrap, settings, events, rate, at)
        live = [a, workers[-1]]
        wait_all(judge, set(sources), 180, live)
        out = judge_outcome(judge, sources, events, fault["at"], fault["wall_ms"], fault["moved"])
        print(out.line(name), f"moved={sorted(fault['moved'])}")
        return out, live
    finally:
        judge.stop()
        for w in workers:
            if w.alive():
                w.stop()
        delete_topics(bootstrap, settings)


def check(out, live, exactly_once: bool) -> None:
    tails = "\n".join(w.tail() for w in live)
    assert out.missing == 0, f"{out}\n{tails}"
    assert out.wrong_counts == {}, f"user_events (seen, true) off: {out.wrong_counts}\n{tails}"
    assert out.recovery_s is not None, f"no new prediction for a moved partition: {out}"
    if exactly_once:
        assert out.duplicates == 0, f"{out}"


def test_kill9_at_least_once(kafka_bootstrap, checkpoint, tmp_path):
    out, live = kill_scenario(kafka_bootstrap, checkpoint, tmp_path, "at_least_once", 1500, 150,
                              500, "kill9 at_least_once (CI)")
    check(out, live, exactly_once=False)


def test_kill9_exactly_once(kafka_bootstrap, checkpoint, tmp_path):
    out, live = kill_scenario(kafka_bootstrap, checkpoint, tmp_path, "exactly_once", 1500, 150,
                              500, "kill9 exactly_once (CI)")
    check(out, live, exactly_once=True)


@pytest.mark.faults_long
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill9_long(kafka_bootstrap, checkpoint, tmp_path, guarantee):
    out, live = kill_scenario(kafka_bootstrap, checkpoint, tmp_path, guarantee, 3000, 300, 1200,
                              f"kill9 {guarantee} (long)")
    check(out, live, exactly_once=guarantee == "exactly_once")
