"""A stalled worker: two workers share 4 partitions; one is paused with SIGSTOP for longer than the
session timeout (stream/worker/app.py, broker_session_timeout) while paced input keeps coming,
then resumed with SIGCONT. The group evicts it, its partitions move to the other worker, and it
rejoins (partitions come back) once resumed. The judge (an independent kafka-python consumer of
predictions) sees a prediction for every produced event; duplicates are counted (at least once)."""
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

SESSION_TIMEOUT_S = 30.0  # stream/worker/app.py
STOP_FOR_S = SESSION_TIMEOUT_S + 15  # eviction, rebalance and recovery on the survivor fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", N_ITEMS, 10)


def test_sigstop_past_session_timeout(kafka_bootstrap, checkpoint, tmp_path):
    settings = deployment4(kafka_bootstrap)
    rate = 40.0
    n = int(rate * (STOP_FOR_S + 12))
    stop_at = int(rate * 4)
    events = make_events(n, seed=11)
    judge = Judge(kafka_bootstrap, settings.predictions_topic)
    a = Worker(settings, checkpoint, tmp_path / "a", tmp_path / "a.log", "at_least_once")
    b = Worker(settings, checkpoint, tmp_path / "b", tmp_path / "b.log", "at_least_once")
    fault: dict = {}
    try:
        a.wait_ready()
        b.wait_ready()
        wait_owned([a, b])

        def stop() -> None:
            owned = wait_owned([a, b], timeout_s=10)
            fault.update(moved=owned[1], at=time.monotonic(), wall_ms=int(time.time() * 1000))
            b.proc.send_signal(signal.SIGSTOP)

        def resume() -> None:
            fault["during"] = a.owned()  # the survivor owns every partition by now
            b.proc.send_signal(signal.SIGCONT)

        sources = send_paced(kafka_bootstrap, settings, events, rate,
                             {stop_at: stop, stop_at + int(rate * STOP_FOR_S): resume})
        wait_all(judge, set(sources), 120, [a, b])
        back = wait_owned([a, b], timeout_s=60)  # b rejoined: partitions split again
        out = judge_outcome(judge, sources, events, fault["at"], fault["wall_ms"], fault["moved"])
        print(out.line("sigstop at_least_once"), f"moved={sorted(fault['moved'])}",
              f"survivor_owned_during={sorted(fault['during'])}", f"after={back}")
        assert out.missing == 0, f"{out}\n{a.tail()}\n{b.tail()}"
        assert fault["during"] == set(range(4)), "the stalled worker's partitions did not move"
        assert all(back), "the resumed worker got no partitions back"
        if out.wrong_counts:
            # Known bug (measured 12 of 40 users over-counted, e.g. 81 vs 65): the resumed worker
            # finishes the batches it held before it learns it was evicted and writes their state
            # to the changelog after the survivor wrote its own; at_least_once has no fencing.
            pytest.xfail(f"zombie state writes after SIGCONT: user_events (seen, true) "
                         f"{out.wrong_counts}")
    finally:
        judge.stop()
        if b.alive():
            b.proc.send_signal(signal.SIGCONT)
        for w in (a, b):
            w.stop()
        delete_topics(kafka_bootstrap, settings)
