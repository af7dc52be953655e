"""Cold start in the evaluation: metrics by the user's history length, and the trending baseline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.evaluate.baselines import PopRanker, TrendingRanker, find_peeking
from models.evaluate.data import EventTable, build_eval_data
from models.evaluate.metrics import (HISTORY_BUCKETS, history_bucket, metrics_by_history, prior_events,
                                     ranks_of_targets)
from models.evaluate.protocol import aggregate_seeds, evaluate_data
from models.evaluate.report import format_table, write_report
from models.schema import LogEvent

pytestmark = pytest.mark.unit

A, B, C, D = 1, 2, 3, 4


def _cold_log() -> list[LogEvent]:
    """32 train events (ts 0..31) and 8 test events (ts 100..107): q = 31 + 0.2 * 69 = 44.8.

    Scored test events and their users' earlier events (train prefix + earlier test events):
      u1: train A@0; test B@100 (1), A@101 (2), C@102 (3), B@103 (4), A@104 (5)
      u2: train A@1 B@2 C@3; test A@105 (3)
      u3: test B@106 (first event: not scored), C@107 (1)
    -> "<=1": 2, "2-3": 3, ">3": 2.
    """
    rows = [(1, A, 0), (2, A, 1), (2, B, 2), (2, C, 3)]
    rows += [(9, (A, B, C, D)[t % 4], t) for t in range(4, 32)]
    rows += [(1, B, 100), (1, A, 101), (1, C, 102), (1, B, 103), (1, A, 104), (2, A, 105), (3, B, 106), (3, C, 107)]
    return [LogEvent(u, i, "click", t * 1000, row=r) for r, (u, i, t) in enumerate(rows)]


EXPECTED_PRIOR = {(1, 100): 1, (1, 101): 2, (1, 102): 3, (1, 103): 4, (1, 104): 5, (2, 105): 3, (3, 107): 1}


def test_prior_events_and_buckets_by_hand():
    data = build_eval_data(EventTable.from_events(_cold_log()), "item")
    assert data.q == pytest.approx(44.8)
    scored = data.scored_idx
    got = {(int(data.user_ids[data.user[i]]), int(data.ts[i])): int(n)
           for i, n in zip(scored, prior_events(data.start, scored))}
    assert got == EXPECTED_PRIOR
    assert list(history_bucket(np.array([0, 1, 2, 3, 4, 100]))) == [0, 0, 1, 1, 2, 2]
    assert [b[0] for b in HISTORY_BUCKETS] == ["<=1", "2-3", ">3"]


def test_by_history_counts_and_combines_to_overall():
    data = build_eval_data(EventTable.from_events(_cold_log()), "item")
    res = evaluate_data(data, {}, progress=False, churn_horizon_s=None)
    assert res["n"] == 7
    for name, buckets in res["by_history"].items():
        assert {b: m["n"] for b, m in buckets.items()} == {"<=1": 2, "2-3": 3, ">3": 2}, name
        for key in ("R@20", "MRR@20"):
            combined = sum(m["n"] * m[key] for m in buckets.values()) / res["n"]
            assert combined == pytest.approx(res["models"][name][key]), (name, key)
    # repeat knows u1's history only from the second test event on: buckets must differ from pop
    assert res["by_history"]["repeat"][">3"]["MRR@20"] != res["by_history"]["pop"][">3"]["MRR@20"]


def test_metrics_by_history_empty_bucket_is_nan():
    out = metrics_by_history(np.array([1, 3]), np.array([5, 9]))
    assert out["<=1"]["n"] == 0 and np.isnan(out["<=1"]["R@20"])
    assert out[">3"] == {"n": 2, "R@20": 1.0, "MRR@20": pytest.approx((1 + 1 / 3) / 2)}


def test_by_history_in_table_report_and_seed_mean(tmp_path):
    data = build_eval_data(EventTable.from_events(_cold_log()), "item")
    base = evaluate_data(data, {}, progress=False, churn_horizon_s=None)
    text = format_table(base)
    assert "<=1 (n=2)" in text and "2-3 (n=3)" in text and ">3 (n=2)" in text
    md = write_report([base], tmp_path).read_text()
    assert "| model | <=1 (n=2) | 2-3 (n=3) | >3 (n=2) |" in md

    class Noisy:
        def __init__(self, seed: int) -> None:
            self.rng = np.random.default_rng(seed)

        def fit(self, data):
            pass

        def score(self, data, idx):
            return self.rng.random((len(idx), data.n_V))

    runs = [evaluate_data(data, {"m": Noisy(s)}, include_baselines=False, progress=False, churn_horizon_s=None)
            for s in range(3)]
    merged = aggregate_seeds(base, runs)
    cell = merged["by_history"]["m"]["2-3"]
    vals = [r["by_history"]["m"]["2-3"]["MRR@20"] for r in runs]
    assert cell["n"] == 3 and cell["MRR@20"] == pytest.approx(np.mean(vals)) and cell["MRR@20_std"] == pytest.approx(np.std(vals))
    assert cell["MRR@20_std"] > 0


# ------------------------------------------------------------------------------- trending


def _trend_log() -> list[LogEvent]:
    """Train (ts < q = 22 + 0.2 * 78 = 37.6): u9 A0 A1 A2 A3 C4 B20 B21, u1 C22 (A4 B2 C2).
    Test: u1 B@100 (scored), u1 A@101 (scored; B@100 is now the most recent event)."""
    rows = [(9, A, 0), (9, A, 1), (9, A, 2), (9, A, 3), (9, C, 4), (9, B, 20), (9, B, 21), (1, C, 22),
            (1, B, 100), (1, A, 101)]
    return [LogEvent(u, i, "click", t * 1000, row=r) for r, (u, i, t) in enumerate(rows)]


@pytest.mark.parametrize("half_life_s, ranks", [
    (1.0, [2, 3]),  # B@100: C (newest) above B; A@101: B@100 then C above A
    (86400.0, [2, 1]),  # a day: almost plain counts before t: A then B (B's events are newer than C's)
])
def test_trending_ranks_by_hand(half_life_s, ranks):
    data = build_eval_data(EventTable.from_events(_trend_log()), "item")
    idx = data.scored_idx
    assert len(idx) == 2
    rk = TrendingRanker(half_life_s)
    rk.fit(data)
    assert list(ranks_of_targets(rk.score(data, idx), data.y[idx])) == ranks
    pop = PopRanker()
    pop.fit(data)
    assert list(ranks_of_targets(pop.score(data, idx), data.y[idx])) == [3, 1]


def test_trending_uses_only_events_strictly_before_the_target():
    rng = np.random.default_rng(5)
    n = 600
    rows = zip(rng.integers(0, 40, n), rng.integers(0, 25, n), rng.integers(0, 3000, n))  # ts ties happen
    data = build_eval_data(EventTable.from_events(
        [LogEvent(int(u), int(i), "click", int(t) * 1000, row=r) for r, (u, i, t) in enumerate(rows)]), "item")
    rk = TrendingRanker(600.0)
    rk.fit(data)
    sample = data.scored_idx[::7]
    changed = 0
    for i in sample:
        i = int(i)
        ref = rk.score(data, np.array([i]))
        future = data.ts >= data.ts[i]  # the target, same-time events and everything later, any user
        y = data.y.copy()
        y[future] = (y[future] + 1) % data.n_V
        assert np.array_equal(rk.score(dataclasses.replace(data, y=y), np.array([i])), ref), i
        past = np.flatnonzero(~future)
        y = data.y.copy()
        newest = past[np.argmax(data.ts[past])]  # the newest earlier event: the largest weight
        y[newest] = (y[newest] + 3) % data.n_V
        changed += not np.array_equal(rk.score(dataclasses.replace(data, y=y), np.array([i])), ref)
    assert changed >= len(sample) // 2  # the past does count
    assert len(find_peeking(rk, data)) == 0
    # chunked calls and a whole call agree (the state is rebuilt per call)
    whole = rk.score(data, data.scored_idx)
    parts = np.concatenate([rk.score(data, c) for c in np.array_split(data.scored_idx, 5)])
    assert np.array_equal(whole, parts)
