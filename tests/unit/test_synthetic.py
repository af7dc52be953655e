"""The synthetic generator: deterministic, realistic shape, churn and drift ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.schema import ACTIONS
from models.synthetic import DAY_MS, GeneratorConfig, SyntheticLog, generate

pytestmark = pytest.mark.unit

CFG = GeneratorConfig(users=300, events=40_000, items=3_000, categories=60, seed=7)


@pytest.fixture(scope="module")
def log() -> SyntheticLog:
    return generate(CFG)


@pytest.fixture(scope="module")
def drift_log() -> SyntheticLog:
    return generate(GeneratorConfig(users=300, events=40_000, items=3_000, categories=60,
                                    seed=7, drift=True, drift_at=0.5))


def _columns(log: SyntheticLog) -> list[np.ndarray]:
    return [log.user_id, log.item_id, log.action, log.ts_ms, log.category_id, log.session_id]


def test_same_seed_same_log(log: SyntheticLog) -> None:
    again = generate(CFG)
    for a, b in zip(_columns(log), _columns(again)):
        assert np.array_equal(a, b)
    assert again.churners == log.churners and again.churn_ts == log.churn_ts


def test_other_seed_other_log(log: SyntheticLog) -> None:
    other = generate(GeneratorConfig(**{**CFG.__dict__, "seed": 8}))
    assert not np.array_equal(other.item_id, log.item_id)


def test_sizes_and_ids(log: SyntheticLog) -> None:
    assert len(log) == CFG.events
    assert set(np.unique(log.user_id)) == set(range(1, CFG.users + 1))  # every user is active
    assert log.item_id.min() >= 1 and log.item_id.max() <= CFG.items
    assert log.category_id.min() >= 1 and log.category_id.max() <= CFG.categories
    start, end = CFG.start_ts_ms, CFG.start_ts_ms + int(CFG.days * DAY_MS)
    assert log.ts_ms.min() >= start and log.ts_ms.max() < end


def test_sorted_by_time_then_user(log: SyntheticLog) -> None:
    order = np.lexsort((log.user_id, log.ts_ms))
    assert np.array_equal(order, np.arange(len(log)))


def test_action_mix_close_to_taobao(log: SyntheticLog) -> None:
    share = np.bincount(log.action, minlength=3) / len(log)
    assert share[0] == pytest.approx(0.922, abs=0.015)
    assert share[1] == pytest.approx(0.055, abs=0.01)
    assert share[2] == pytest.approx(0.023, abs=0.008)


def test_carts_and_purchases_follow_a_view_in_the_session(log: SyntheticLog) -> None:
    viewed: set[tuple[int, int]] = set()
    for ev in log.events():
        if ev.action == "click":
            viewed.add((ev.session_id, ev.item_id))
        else:
            assert (ev.session_id, ev.item_id) in viewed


def _dynamics(log: SyntheticLog) -> dict[str, float]:
    """Per inner session event: P(purchase) within 3 events of a cart and otherwise, P(cart)
    after 20+ views in a row and overall."""
    o = np.lexsort((np.arange(len(log)), log.ts_ms, log.user_id))
    a, s = log.action[o], log.session_id[o]
    idx = np.arange(len(a))
    inner = np.r_[False, s[1:] == s[:-1]]
    sess_start = np.maximum.accumulate(np.where(~inner, idx, 0))
    prev_cart = np.r_[-1, np.maximum.accumulate(np.where(a == 1, idx, -1))[:-1]]
    carted = inner & (prev_cart >= sess_start) & (idx - prev_cart <= 3)
    prev_other = np.r_[-1, np.maximum.accumulate(np.where(a != 0, idx, -1))[:-1]]
    browsing = inner & (idx - np.maximum(prev_other + 1, sess_start) >= 20) & ~carted
    return {"buy_after_cart": float((a[carted] == 2).mean()), "buy_else": float((a[inner & ~carted] == 2).mean()),
            "cart_browsing": float((a[browsing] == 1).mean()), "cart_inner": float((a[inner] == 1).mean())}


def test_actions_react_to_carts_and_browsing(log: SyntheticLog) -> None:
    d = _dynamics(log)
    assert d["buy_after_cart"] > 3 * d["buy_else"]  # configured: 5x for 3 events
    assert d["cart_browsing"] < 0.7 * d["cart_inner"]  # 20+ views: at most half the base chance
    # switched off, actions are i.i.d. again (same mix)
    flat = generate(GeneratorConfig(**{**CFG.__dict__, "cart_purchase_boost": 1.0, "browse_run": 0}))
    f = _dynamics(flat)
    assert f["buy_after_cart"] < 2 * f["buy_else"] and f["cart_browsing"] > 0.7 * f["cart_inner"]
    share = np.bincount(flat.action, minlength=3) / len(flat)
    assert share == pytest.approx(np.bincount(log.action, minlength=3) / len(log), abs=0.005)


def test_sessions_are_bursts_and_users_come_back(log: SyntheticLog) -> None:
    by_user = np.lexsort((log.ts_ms, log.user_id))
    u, ts, s = log.user_id[by_user], log.ts_ms[by_user], log.session_id[by_user]
    same_user = u[1:] == u[:-1]
    gap = np.diff(ts)
    within = gap[same_user & (s[1:] == s[:-1])]
    between = gap[same_user & (s[1:] != s[:-1])]
    assert np.median(within) < 120_000  # seconds apart
    assert np.median(between) > 3_600_000  # hours or days apart
    # Repeat behaviour: a good share of views revisit an item the user viewed before.
    clicks = log.action == 0
    pairs = log.user_id[clicks] * 10**7 + log.item_id[clicks]
    assert 0.15 < 1 - np.unique(pairs).shape[0] / pairs.shape[0] < 0.7


def test_item_popularity_is_skewed(log: SyntheticLog) -> None:
    counts = np.sort(np.bincount(log.item_id))[::-1]
    top = counts[: len(counts) // 100].sum() / counts.sum()
    assert top > 0.1  # top 1% of items take well over 1% of events


def test_churners_go_silent_and_others_stay(log: SyntheticLog) -> None:
    assert len(log.churners) == round(CFG.churn_fraction * CFG.users)
    end = CFG.start_ts_ms + CFG.days * DAY_MS
    last: dict[int, int] = {}
    for u, ts in zip(log.user_id.tolist(), log.ts_ms.tolist()):
        last[u] = ts
    for u in log.churners:
        assert last[u] == log.churn_ts[u]
        assert last[u] < CFG.start_ts_ms + 0.8 * CFG.days * DAY_MS
    for u, ts in last.items():
        if u not in log.churners:
            assert ts > end - 0.1 * CFG.days * DAY_MS


def test_drift_brings_new_trending_items(drift_log: SyntheticLog) -> None:
    assert drift_log.drift_ts is not None and len(drift_log.trending_items) > 0
    after = drift_log.ts_ms >= drift_log.drift_ts
    trending = np.isin(drift_log.item_id, drift_log.trending_items)
    assert not trending[~after].any()  # new items: never seen before drift
    assert trending[after].mean() > 0.1
    # Popularity changes: the top items after drift are mostly not the top items before.
    def top(mask: np.ndarray) -> set[int]:
        ids, n = np.unique(drift_log.item_id[mask], return_counts=True)
        return set(ids[np.argsort(-n)[:50]].tolist())
    assert len(top(~after) & top(after)) < 25


def test_no_drift_keeps_popularity(log: SyntheticLog) -> None:
    assert log.drift_ts is None and len(log.trending_items) == 0
    mid = CFG.start_ts_ms + CFG.days * DAY_MS / 2
    early, late = log.ts_ms < mid, log.ts_ms >= mid
    ids_e, n_e = np.unique(log.item_id[early], return_counts=True)
    ids_l, n_l = np.unique(log.item_id[late], return_counts=True)
    top_e = set(ids_e[np.argsort(-n_e)[:50]].tolist())
    top_l = set(ids_l[np.argsort(-n_l)[:50]].tolist())
    assert len(top_e & top_l) >= 15


def test_events_and_truth(log: SyntheticLog, tmp_path) -> None:
    evs = list(log.events(0, 5))
    assert [e.row for e in evs] == list(range(5))
    assert all(e.action in ACTIONS for e in evs)
    path = tmp_path / "t.truth.json"
    log.write_truth(path)
    truth = json.loads(path.read_text())
    assert set(truth["churners"]) == log.churners
    assert {int(k): v for k, v in truth["churn_ts"].items()} == log.churn_ts


@pytest.mark.parametrize("kw", [{"users": 0}, {"events": 5, "users": 10}, {"items": 10, "categories": 20},
                                {"churn_fraction": 1.0}, {"drift_at": 1.5},
                                {"cart_purchase_boost": 0.5}, {"browse_run": -1}])
def test_bad_config(kw: dict) -> None:
    with pytest.raises(ValueError):
        generate(GeneratorConfig(**kw))


def test_tiny_logs() -> None:
    one = generate(GeneratorConfig(users=1, events=1, items=5, categories=1))
    assert len(one) == 1
    few = generate(GeneratorConfig(users=5, events=5, items=5, categories=2, churn_fraction=0.0))
    assert len(few) == 5 and not few.churners
