"""The action-LR next-action baseline: it learns a planted rule, it reads only earlier events,
and `seqstream evaluate` reports it beside the prior."""
from __future__ import annotations

import numpy as np
import pytest

from models.evaluate.action_lr import FEATURE_NAMES, ActionLR, action_features
from models.evaluate.metrics import roc_auc
from models.evaluate.protocol import run_evaluation
from models.evaluate.report import format_table
from models.schema import ACTIONS, LogEvent

pytestmark = pytest.mark.unit

CLICK, CART, PURCHASE = 0, 1, 2


def _planted(users: int, per_user: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user a chain: after a cart a purchase with p = .7, otherwise a cart with p = .1."""
    rng = np.random.default_rng(seed)
    action = np.zeros(users * per_user, np.int64)
    for u in range(users):
        prev = CLICK
        for j in range(per_user):
            r = rng.random()
            a = (PURCHASE if r < 0.7 else CLICK) if prev == CART else (CART if r < 0.1 else CLICK)
            action[u * per_user + j] = prev = a
    ts = np.tile(np.arange(per_user, dtype=np.float64) * 30.0, users)
    start = np.repeat(np.arange(users) * per_user, per_user)
    return action, ts, start


def test_features_shape_and_values():
    action = np.array([CLICK, CART, CLICK, PURCHASE, CLICK])
    ts = np.array([0.0, 10.0, 30.0, 100.0, 101.0])
    start = np.zeros(5, np.int64)
    X = action_features(action, ts, start, np.array([1, 4]))
    assert X.shape == (2, len(FEATURE_NAMES))
    f = dict(zip(FEATURE_NAMES, X[1]))  # target 4: context click, cart, click, purchase
    assert (f["n_click_last5"], f["n_cart_last5"], f["n_purchase_last5"]) == (2, 1, 1)
    assert f["last_is_purchase"] == 1 and f["last_is_click"] == 0
    assert f["log_gap_last_s"] == pytest.approx(np.log1p(70.0))  # 100 - 30: not the target's own ts
    assert f["log_since_cart"] == pytest.approx(np.log(3)) and f["log_since_purchase"] == 0.0
    g = dict(zip(FEATURE_NAMES, X[0]))  # target 1: one earlier event, no cart yet
    assert g["log_gap_last_s"] == 0.0 and g["log_since_cart"] == pytest.approx(np.log(2))
    with pytest.raises(ValueError):
        action_features(action, ts, start, np.array([0]))  # a user's first event has no context


def test_features_use_only_earlier_events():
    action, ts, start = _planted(users=20, per_user=30, seed=3)
    rng = np.random.default_rng(4)
    idx = np.flatnonzero(np.arange(len(action)) > start)
    X = action_features(action, ts, start, idx)
    for i in rng.choice(idx, 25, replace=False):
        a2, t2 = action.copy(), ts.copy()
        later = (np.arange(len(action)) >= i) & (start == start[i])  # event i and after, same user
        a2[later] = rng.integers(0, 3, later.sum())
        t2[later] += rng.uniform(1, 1e5, later.sum())
        row = np.flatnonzero(idx == i)[0]
        assert np.array_equal(action_features(a2, t2, start, np.array([i]))[0], X[row])
    # and no other user's events: a user's first target sees only its own first event
    assert np.all(X[idx == 1][:, FEATURE_NAMES.index("log_events_so_far")] == np.log1p(1))


def test_lr_recovers_a_planted_rule():
    action, ts, start = _planted(users=60, per_user=50, seed=1)
    idx = np.flatnonzero(np.arange(len(action)) > start)
    train, test = idx[start[idx] < 40 * 50], idx[start[idx] >= 40 * 50]
    lr = ActionLR().fit(action_features(action, ts, start, train), action[train])
    p = lr.predict_proba(action_features(action, ts, start, test))
    assert p.shape == (len(test), 3) and np.allclose(p.sum(axis=1), 1.0)
    after_cart = action[test - 1] == CART
    assert p[after_cart, PURCHASE].mean() == pytest.approx(0.7, abs=0.1)
    assert p[~after_cart, PURCHASE].mean() < 0.05
    assert roc_auc(p[:, PURCHASE], action[test] == PURCHASE) > 0.9
    # a constant feature set learns no more than the prior
    flat = ActionLR().fit(np.zeros((len(train), 2)), action[train]).predict_proba(np.zeros((3, 2)))
    freq = np.bincount(action[train], minlength=3) / len(train)
    assert np.allclose(flat, freq, atol=1e-3)


def test_evaluate_reports_action_lr_beside_the_prior():
    action, ts, start = _planted(users=60, per_user=50, seed=2)
    events = [LogEvent(int(start[i]) // 50, 1 + (i % 7), ACTIONS[action[i]],
                       int(1_700_000_000_000 + (i % 50) * 86_400_000 // 2), row=i) for i in range(len(action))]
    res = run_evaluation(events, "item", progress=False, churn_horizon_s=None)
    lr, prior = res["action"]["action-LR"], res["action"]["prior"]
    assert lr["n"] == prior["n"] == res["n"]
    assert lr["auc_purchase"] > 0.9 and prior["auc_purchase"] == 0.5
    assert lr["log_loss"] < prior["log_loss"]
    after = lr["after"]  # follows the rule: a cart just before -> a likely purchase
    assert after["cart"]["obs_purchase"] > 0.5 and after["cart"]["p_purchase"] > 0.5 > after["click"]["p_purchase"]
    assert after["cart"]["n"] + after["click"]["n"] + after.get("purchase", {"n": 0})["n"] == lr["n"]
    assert "after" not in prior
    text = format_table(res)
    assert "next action [action-LR]" in text and "after a cart" in text
