"""TrendingCounts: event-time decayed popularity (models/trending.py)."""
from __future__ import annotations

import numpy as np
import pytest

from models.trending import TrendingCounts

pytestmark = pytest.mark.unit


def _direct(n: int, items: np.ndarray, ts: np.ndarray, now: float, h: float) -> np.ndarray:
    return np.bincount(items, weights=np.exp2(-(now - ts) / h), minlength=n)


def test_scores_are_decayed_counts_in_any_order():
    rng = np.random.default_rng(0)
    items, ts = rng.integers(0, 7, 300), rng.uniform(0, 5000, 300)
    one, many = TrendingCounts(7, half_life_s=600.0), TrendingCounts(7, half_life_s=600.0)
    for i, t in zip(items, ts):  # out of time order on purpose
        one.observe(int(i), float(t))
    order = np.argsort(ts)
    many.observe_many(items[order], ts[order])
    want = _direct(7, items, ts, 5000.0, 600.0)
    assert one.scores(5000.0) == pytest.approx(want, rel=1e-12)
    assert many.scores(5000.0) == pytest.approx(want, rel=1e-12)


def test_half_life_means_half():
    tc = TrendingCounts(2, half_life_s=3600.0)
    tc.observe(1, 1000.0)
    assert list(tc.scores(1000.0)) == [0.0, 1.0]
    assert tc.scores(1000.0 + 3600.0)[1] == pytest.approx(0.5)
    assert tc.scores(1000.0 + 7200.0)[1] == pytest.approx(0.25)


def test_long_spans_rebase_without_overflow():
    tc = TrendingCounts(3, half_life_s=1.0)
    tc.observe(0, 0.0)
    tc.observe(1, 600.0)  # 600 half-lives later: past the rebase threshold
    tc.observe_many(np.array([2, 2]), np.array([5000.0, 5001.0]))
    s = tc.scores(5001.0)
    assert np.isfinite(s).all()
    assert s[2] == pytest.approx(1.5) and s[1] == 0.0 and s[0] == 0.0  # 2^-4401 underflows to 0
    tc2 = TrendingCounts(2, half_life_s=1.0)
    tc2.observe(0, 0.0)
    tc2.observe(1, 600.0)
    assert tc2.scores(600.0) == pytest.approx([2.0 ** -600, 1.0], rel=1e-12)


def test_top_k_best_first_ties_to_lower_index_and_no_unseen():
    tc = TrendingCounts(6, half_life_s=100.0)
    tc.observe_many(np.array([4, 4, 1, 3, 5, 5]), np.array([10.0, 10.0, 10.0, 10.0, 10.0, 10.0]))
    assert list(tc.top(10, 10.0)) == [4, 5, 1, 3]  # 0 and 2 never seen
    assert list(tc.top(3, 10.0)) == [4, 5, 1]  # the 1/3 tie at the cut goes to 1
    assert list(tc.top(0, 10.0)) == []
    assert list(TrendingCounts(3).top(5, 0.0)) == []
    tc.observe(2, 300.0)  # newer beats more frequent once the old events have decayed
    assert list(tc.top(1, 300.0)) == [2]


def test_half_life_must_be_positive():
    with pytest.raises(ValueError, match="half_life_s"):
        TrendingCounts(3, half_life_s=0.0)
