"""The interests metric of `seqstream evaluate` (models/evaluate/interests.py)."""
from __future__ import annotations

import numpy as np
import pytest

from models.evaluate.data import EventTable, build_eval_data
from models.evaluate.interests import BASELINE, evaluate_interests
from models.evaluate.protocol import evaluate_data
from models.evaluate.report import format_table
from models.schema import LogEvent

pytestmark = pytest.mark.unit

H = 3600.0


def _log(per_user: dict[int, list[int | None]]) -> list[LogEvent]:
    """Each user's categories, one event per hour; the last ~20% of hours are the test split."""
    out = []
    for u, cats in per_user.items():
        for t, c in enumerate(cats):
            out.append(LogEvent(u, 100 + t % 3, "click", int((1_511_000_000 + t * H) * 1000), c, row=len(out)))
    return out


def _data(per_user, target="item"):
    return build_eval_data(EventTable.from_events(_log(per_user)), target)


class FixedModel:
    """A stand-in for the GRU: always predicts category 9 with probability 1."""

    def category_top(self, data, idx, k):
        return np.full((len(idx), 1), 9), np.ones((len(idx), 1))


def test_hits_use_only_the_events_before_the_scored_one():
    # user 1 always stays in category 5; user 2 moves to a category it never had before
    data = _data({1: [5] * 10, 2: [7, 7, 7, 7, 7, 7, 7, 7, 8, 8]})
    res = evaluate_interests(data, {})
    scored = data.scored_idx
    assert res["n"] == len(scored) > 0
    own = data.category[scored]
    first_8 = [i for i in scored if data.category[i] == 8 and data.category[i - 1] != 8]
    assert first_8  # its first 8 cannot be predicted from history: a miss even in the top-5
    expected = np.mean([not (i in first_8) for i in scored])
    assert res["models"][BASELINE]["top5"] == pytest.approx(expected)
    assert res["models"][BASELINE]["top1"] <= res["models"][BASELINE]["top5"]
    assert set(own) <= {5, 7, 8}


def test_the_model_blend_moves_its_category_into_the_top():
    data = _data({1: [5] * 10, 2: [9] * 10})
    low = evaluate_interests(data, {"m": FixedModel()}, blend=0.3)["models"]
    high = evaluate_interests(data, {"m": FixedModel()}, blend=0.9)["models"]
    # user 2's category is 9 (hit either way); user 1's is 5: top-1 only while the blend is low
    assert low["m"]["top1"] == pytest.approx(1.0) and low["m"]["top5"] == pytest.approx(1.0)
    share_2 = np.mean(data.category[data.scored_idx] == 9)
    assert high["m"]["top1"] == pytest.approx(share_2) and high["m"]["top5"] == pytest.approx(1.0)
    assert low[BASELINE] == {"top1": 1.0, "top5": 1.0}


def test_no_categories_no_interest_metric_and_the_table_says_it():
    data = _data({1: [None] * 10, 2: [None] * 10})
    assert evaluate_interests(data, {}) is None
    assert "interests" not in evaluate_data(data, {}, churn_horizon_s=None, progress=False)
    with_cats = evaluate_data(_data({1: [5] * 10, 2: [6, 7] * 5}), {}, churn_horizon_s=None, progress=False)
    assert "interests" in with_cats
    assert f"[{BASELINE}] next category in top-1" in format_table(with_cats)
