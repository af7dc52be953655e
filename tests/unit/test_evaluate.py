"""The evaluation protocol: reference figures, tie handling, no peeking, full ranking, heads."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from models.datasets.dump import write_jsonl
from models.datasets.reader import read_events
from models.evaluate.baselines import baseline_rankers, find_peeking
from models.evaluate.churn import LogisticRegression, churn_task
from models.evaluate.data import EvalData, EventTable, build_eval_data
from models.evaluate.metrics import (action_metrics, average_precision, churn_metrics, log_loss, ranking_metrics,
                                     ranks_of_targets, roc_auc)
from models.evaluate.protocol import evaluate_data, run_evaluation
from models.evaluate.report import format_table, write_report
from models.schema import ACTIONS, LogEvent
from stream.cli.evaluate import add_evaluate_arguments, run_evaluate_command

pytestmark = pytest.mark.unit

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TAOBAO_USERS = SHARED_DATA / "taobao_users.csv"
needs_shared = pytest.mark.skipif(not TAOBAO_USERS.is_file(), reason=f"shared data {TAOBAO_USERS} is absent")


def ev(user: int, item: int, ts: float, action: str = "click", cat: int | None = None, row: int = 0) -> LogEvent:
    return LogEvent(user, item, action, int(round(ts * 1000)), category_id=cat, row=row)


def log(*events: tuple) -> list[LogEvent]:
    """Events with rows in the given order."""
    return [ev(*e[:3], *e[3:], row=r) if len(e) <= 4 else ev(*e, row=r) for r, e in enumerate(events)]


A, B, C, D, E = 1, 2, 3, 4, 5

# Ten events, ts 0..9 -> q = quantile(0..9, 0.8) = 7.2: u1's A@8 and B@9 are the test events.
HAND = log((1, A, 0), (1, B, 1), (1, A, 2), (1, C, 3), (1, A, 8), (1, B, 9),
           (2, B, 4), (2, C, 5), (2, B, 6), (2, D, 7))


# ------------------------------------------------------------------------------- reference


@needs_shared
@pytest.mark.parametrize("mode", ["frozen", "online"])
@pytest.mark.parametrize(
    "target,n,V,ref",
    [
        ("item", 342, 6184, {"pop": (0.0146, 0.0011), "repeat": (0.5877, 0.2166), "item-knn": (0.0702, 0.0488)}),
        ("category", 1751, 949, {"pop": (0.3467, 0.1186), "repeat": (0.8190, 0.5496), "item-knn": (0.5997, 0.4246)}),
    ],
)
def test_reference_figures(target, n, V, ref, mode):
    res = run_evaluation(read_events(TAOBAO_USERS, "taobao", on_error="stop"), target=target, mode=mode,
                         progress=False)
    assert (res["target"], res["mode"], res["n"], res["V"]) == (target, mode, n, V)
    for name, (r20, mrr20) in ref.items():
        m = res["models"][name]
        assert (round(m["R@20"], 4), round(m["MRR@20"], 4)) == (r20, mrr20), name
    assert list(res["models"]) == ["pop", "repeat", "item-knn", "trending"]
    assert list(res["models"]["pop"]) == ["R@1", "MRR@1", "R@5", "MRR@5", "R@10", "MRR@10", "R@20", "MRR@20"]


# ------------------------------------------------------------------------------- split


def test_split_removal_and_scored_rule():
    events = [ev(9, A, t) for t in range(16)]  # filler: makes q = 15 + 0.8 * 85 = 83
    events += [ev(1, B, 1), ev(1, B, 100), ev(1, E, 101),  # E not in V: removed
               ev(2, A, 102),  # u2's first event: not scored
               ev(3, E, 103), ev(3, A, 104)]  # u3's earlier event was removed: not scored
    events = [LogEvent(e.user_id, e.item_id, e.action, e.ts_ms, row=r) for r, e in enumerate(events)]
    data = build_eval_data(EventTable.from_events(events), "item")
    assert data.q == pytest.approx(83.0)
    assert list(data.V) == [A, B]
    assert data.n_removed == 2
    assert data.n_events == 16 + 2 + 1 + 1
    scored = data.scored_idx
    assert len(scored) == 1
    i = int(scored[0])
    assert data.user_ids[data.user[i]] == 1 and data.ts[i] == 100.0 and data.V[data.y[i]] == B
    assert data.context(i) == slice(int(data.start[i]), i) and data.V[data.y[i - 1]] == B


def test_stable_sort_by_user_ts_row():
    # Same user and ts: file row order decides; input order does not matter.
    events = [LogEvent(1, 7, "click", 1000, row=1), LogEvent(1, 6, "click", 1000, row=0),
              LogEvent(0, 5, "click", 2000, row=2)]
    t = EventTable.from_events(events)
    assert list(t.user) == [0, 1, 1] and list(t.item) == [5, 6, 7] and list(t.row) == [2, 0, 1]


def test_category_needs_categories():
    with pytest.raises(ValueError, match="category"):
        build_eval_data(EventTable.from_events(HAND), "category")


# ------------------------------------------------------------------------------- baselines, by hand


def test_baselines_hand_computed():
    # V = {A, B, C, D}; train counts A2 B3 C2 D1. Scored: A@8 (context A B A C), B@9 (+ A@8).
    # pop:    A@8 -> {B, A, C} >= 2 -> rank 3;  B@9 -> rank 1.
    # repeat: A@8 -> C(pos 3), A(pos 2), B(pos 1) -> rank 2;  B@9 -> A(4), C(3), B(1) -> rank 3.
    # kNN pairs: A>B B>A A>C | B>C C>B B>D.  A@8: last C, succ {B} then pop (A = C tie) -> rank 3.
    #            B@9: last A (the test event A@8 is context), succ {B:1, C:1}, B more popular -> 1.
    res = run_evaluation(HAND, "item", progress=False, churn_horizon_s=None)
    assert (res["n"], res["V"]) == (2, 4)
    expect = {"pop": [3, 1], "repeat": [2, 3], "item-knn": [3, 1]}
    for name, ranks in expect.items():
        assert res["models"][name] == pytest.approx(ranking_metrics(np.array(ranks))), name
    assert res["models"]["pop"]["R@1"] == 0.5 and res["models"]["pop"]["MRR@5"] == pytest.approx((1 / 3 + 1) / 2)


def test_chunk_size_does_not_change_results():
    rng = np.random.default_rng(3)
    events = [ev(int(u), int(i), float(t), row=r) for r, (u, i, t) in
              enumerate(zip(rng.integers(0, 8, 400), rng.integers(0, 30, 400), rng.uniform(0, 1000, 400)))]
    table = EventTable.from_events(events)
    results = [run_evaluation(table, "item", chunk_size=c, progress=False) for c in (1, 7, 512)]
    assert results[0]["models"] == results[1]["models"] == results[2]["models"]
    online = run_evaluation(table, "item", mode="online", chunk_size=5, progress=False)
    assert online["models"] == results[0]["models"]  # baselines do not learn


# ------------------------------------------------------------------------------- ties, full ranking


class ConstantRanker:
    def fit(self, data: EvalData) -> None:
        pass

    def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        return np.zeros((len(event_idx), data.n_V))


class IdRanker:
    """score(v) = v, the same for every event: the target's rank is |V| - target index."""

    def fit(self, data: EvalData) -> None:
        pass

    def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        return np.tile(np.arange(data.n_V, dtype=float), (len(event_idx), 1))


def test_ties_count_against_the_model():
    res = run_evaluation(HAND, "item", {"const": ConstantRanker()}, progress=False)
    m = res["models"]["const"]  # every candidate ties: rank = |V| = 4
    assert m["R@1"] == 0.0 and m["R@5"] == 1.0 and m["MRR@5"] == pytest.approx(0.25)
    scores = np.array([[1.0, 2.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, np.nan, 1.0, 0.5]])
    assert list(ranks_of_targets(scores, np.array([1, 3, 2]))) == [2, 4, 2]  # NaN counts as a tie
    assert ranks_of_targets(np.array([[np.nan, 1.0]]), np.array([0]))[0] == 2  # NaN target: last


def test_full_ranking_no_sampling():
    # 600 candidates: with sampled negatives the ranks below would come out far smaller.
    n_items = 600
    events = [ev(0, i, float(i)) for i in range(n_items)]  # train: every item once
    events += [ev(1, 7, 10_000.0), ev(1, 0, 10_001.0), ev(1, 5, 10_002.0), ev(1, 599, 10_003.0)]
    # 750 events in all: q = quantile at index 599.2 lies between ts 599 and 10000.
    events += [ev(2, 3, 10_004.0 + k) for k in range(146)]
    events = [LogEvent(e.user_id, e.item_id, e.action, e.ts_ms, row=r) for r, e in enumerate(events)]
    table = EventTable.from_events(events)
    data = build_eval_data(table, "item")
    res = run_evaluation(table, "item", {"id": IdRanker()}, progress=False)
    targets = data.y[data.scored_idx]
    expected_ranks = n_items - targets
    assert res["V"] == n_items and res["n"] == len(targets)
    assert res["models"]["id"] == pytest.approx(ranking_metrics(expected_ranks))
    assert 600 in expected_ranks and 1 in expected_ranks  # item 0 ranks last, item 599 first


# ------------------------------------------------------------------------------- no peeking


class PeekingRanker:
    """Cheats: puts the event's own target first. Would look perfect."""

    def fit(self, data: EvalData) -> None:
        pass

    def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        out = np.zeros((len(event_idx), data.n_V))
        out[np.arange(len(event_idx)), data.y[event_idx]] = 1.0
        return out


class LastContextRanker:
    """Honest: puts the last context event's target (event i-1) first, and records its calls."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def fit(self, data: EvalData) -> None:
        pass

    def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(event_idx))
        out = np.zeros((len(event_idx), data.n_V))
        out[np.arange(len(event_idx)), data.y[event_idx - 1]] = 1.0
        return out


def _distinct_targets_log() -> list[LogEvent]:
    # Every user walks through distinct items: the target is never the previous target, so a
    # ranker that is handed the target as its last context event would score R@1 = 1.
    events = []
    for u in range(6):
        for k in range(12):
            events.append(ev(u, (u * 3 + k) % 40, u * 0.5 + k * 10.0))
    return [LogEvent(e.user_id, e.item_id, e.action, e.ts_ms, row=r) for r, e in enumerate(events)]


def test_protocol_never_passes_the_target_as_context():
    table = EventTable.from_events(_distinct_targets_log())
    data = build_eval_data(table, "item")
    honest = LastContextRanker()
    res = run_evaluation(table, "item", {"last": honest, "peek": PeekingRanker()}, progress=False)
    assert res["n"] > 0
    # The peeker looks perfect; the last-context ranker gets nothing: its "last context event"
    # is really the event before the target (an off-by-one protocol would give it 1.0).
    assert res["models"]["peek"]["R@1"] == 1.0
    assert res["models"]["last"]["R@1"] == 0.0
    # Exactly the scored events were asked for, each once, and each has context before it.
    asked = np.concatenate(honest.calls)
    assert np.array_equal(asked, data.scored_idx)
    assert np.all(data.start[asked] < asked) and np.all(data.user[asked - 1] == data.user[asked])


def test_find_peeking_catches_the_cheat_and_clears_the_baselines():
    data = build_eval_data(EventTable.from_events(_distinct_targets_log()), "item")
    peek = PeekingRanker()
    peek.fit(data)
    assert len(find_peeking(peek, data)) > 0
    honest = LastContextRanker()
    assert len(find_peeking(honest, data)) == 0
    for name, rk in baseline_rankers().items():
        rk.fit(data)
        assert len(find_peeking(rk, data)) == 0, name


# ------------------------------------------------------------------------------- online mode


class LearningRanker:
    def __init__(self) -> None:
        self.log: list[tuple[str, np.ndarray]] = []
        self.fitted = False

    def fit(self, data: EvalData) -> None:
        self.fitted = True

    def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        self.log.append(("score", np.array(event_idx)))
        return np.zeros((len(event_idx), data.n_V))

    def learn(self, data: EvalData, event_idx: np.ndarray) -> None:
        self.log.append(("learn", np.array(event_idx)))


def test_online_is_test_then_train_in_time_order():
    table = EventTable.from_events(_distinct_targets_log())
    data = build_eval_data(table, "item")
    rk = LearningRanker()
    evaluate_data(data, {"m": rk}, "online", chunk_size=4, progress=False)
    learnt = np.concatenate([idx for kind, idx in rk.log if kind == "learn"])
    assert np.array_equal(learnt, data.test_idx_in_time_order())  # every test event, once, in time order
    assert np.all(np.diff(data.ts[learnt]) >= 0)
    seen: set[int] = set()
    for kind, idx in rk.log:  # an event is scored before any learn() that contains it
        if kind == "learn":
            seen.update(int(i) for i in idx)
        else:
            assert not seen.intersection(int(i) for i in idx)
    frozen = LearningRanker()
    evaluate_data(data, {"m": frozen}, "frozen", progress=False)
    assert all(kind == "score" for kind, _ in frozen.log)


# ------------------------------------------------------------------------------- binary metrics


def _brute_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _brute_ap(s, y):
    # sklearn's definition: thresholds at distinct scores, descending.
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        pred = s >= t
        tp = (pred & (y == 1)).sum()
        p, r = tp / pred.sum(), tp / (y == 1).sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def test_roc_auc_and_ap_with_ties():
    assert roc_auc([1, 1], [1, 0]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8333333333)
    assert np.isnan(roc_auc([1, 2], [1, 1])) and np.isnan(average_precision([1, 2], [0, 0]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, 40).astype(float)  # many ties
        y = rng.integers(0, 2, 40)
        if 0 < y.sum() < len(y):
            assert roc_auc(s, y) == pytest.approx(_brute_auc(s, y))
            assert average_precision(s, y) == pytest.approx(_brute_ap(s, y))


def test_action_metrics():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    y = np.array([0, 1, 2, 0])
    m = action_metrics(probs, y)
    assert m["n"] == 4 and m["auc_purchase"] == 1.0 and m["auc_cart"] == 1.0
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.7, 0.8, 0.8])))
    assert log_loss(probs, y) == m["log_loss"]
    assert set(m["calibration"]) == set(ACTIONS)
    with pytest.raises(ValueError):
        action_metrics(probs[:, :2], y)


class ActionRanker(ConstantRanker):
    """Knows the protocol's next-action convention: P(action of event i | events before i)."""

    def action_probs(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
        prev = data.action[event_idx - 1]  # sticky: the next action repeats the last one
        p = np.full((len(event_idx), 3), 0.1)
        p[np.arange(len(event_idx)), prev] = 0.8
        return p

    def churn_scores(self, data: EvalData, event_idx: np.ndarray, horizon_s: float) -> np.ndarray:
        return np.zeros(len(event_idx))


def test_model_heads_are_plugged_in():
    res = run_evaluation(HAND, "item", {"m": ActionRanker()}, progress=False, churn_horizon_s=1.0)
    assert set(res["action"]) == {"prior", "action-LR", "m"} and res["action"]["m"]["n"] == res["n"]
    assert "m" in res["churn"]["models"] and "rf-logreg" in res["churn"]["models"]


# ------------------------------------------------------------------------------- churn


def test_churn_task_labels_and_censoring():
    # q = 7.2 (HAND). u1: last train event C@3, next event A@8: gap 5.  u2: last train D@7, no
    # later event; the log ends at 9, so u2 is observable only for horizons <= 2.
    data = build_eval_data(EventTable.from_events(HAND), "item")
    idx, labels = churn_task(data, horizon_s=1.0)
    assert [data.user_ids[data.user[i]] for i in idx] == [1, 2] and list(labels) == [True, True]
    idx, labels = churn_task(data, horizon_s=5.0)  # u1's next event at exactly +5: within H
    assert [data.user_ids[data.user[i]] for i in idx] == [1] and list(labels) == [False]
    m = churn_metrics([0.9, 0.1, 0.8], [1, 0, 0])
    assert m["n"] == 3 and m["roc_auc"] == 1.0 and m["pos_rate"] == pytest.approx(1 / 3)


def test_logistic_regression_learns():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 2))
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.normal(size=500)) > 0
    p = LogisticRegression().fit(X, y).predict_proba(X)
    assert roc_auc(p, y) > 0.95 and np.all((p > 0) & (p < 1))


# ------------------------------------------------------------------------------- output & CLI


def test_format_table_and_report(tmp_path):
    res = run_evaluation(HAND, "item", {"m": ActionRanker()}, progress=False, churn_horizon_s=1.0)
    text = format_table(res)
    assert "target=item mode=frozen n=2 |V|=4" in text and "item-knn" in text and "MRR@20" in text
    path = write_report([res], tmp_path / "rep", source="hand")
    assert path.read_text().startswith("# seqstream evaluation")
    assert (tmp_path / "rep" / "recall_item_frozen.png").stat().st_size > 0
    assert (tmp_path / "rep" / "calibration_item_frozen_m.png").stat().st_size > 0


def _args(*argv: str) -> argparse.Namespace:
    return add_evaluate_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_cli_baselines_json(tmp_path, capsys):
    dump = tmp_path / "log.jsonl"
    write_jsonl([LogEvent(e.user_id, e.item_id, e.action, e.ts_ms, category_id=e.item_id % 2, row=e.row)
                 for e in HAND], dump)
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--target", "both", "--json",
                                      "--report", str(tmp_path / "rep"))) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in out] == ["item", "category"]
    assert set(out[0]["models"]) == {"pop", "repeat", "item-knn", "trending"} and out[0]["n"] == 2
    assert (tmp_path / "rep" / "report.md").is_file()


@pytest.mark.parametrize("flag, value", [("--seeds", "0"), ("--chunk-size", "0"), ("--churn-horizon-h", "-1"),
                                         ("--trending-half-life-h", "0")])
def test_cli_bad_numbers_get_one_line(tmp_path, capsys, flag, value):
    dump = tmp_path / "log.jsonl"
    write_jsonl(HAND, dump)
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--train", flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag in err


def test_cli_category_task_without_categories(tmp_path, capsys):
    dump = tmp_path / "log.jsonl"
    write_jsonl(HAND, dump)  # no category_id anywhere
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--target", "category", "--json")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and captured.err.count("\n") == 1
    assert "--target item" in captured.err
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--target", "both", "--json")) == 0
    captured = capsys.readouterr()
    assert "skipping the category task" in captured.err
    assert json.loads(captured.out)["target"] == "item"


def test_cli_bad_row_stop(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3,pv,10\n1,,3,pv,11\n")  # an empty id is malformed
    assert run_evaluate_command(_args(str(bad), "--format", "taobao", "--on-error", "stop")) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_cli_without_gru_warns_and_runs_baselines(tmp_path, capsys, monkeypatch):
    dump = tmp_path / "log.jsonl"
    write_jsonl(HAND, dump)
    monkeypatch.setitem(sys.modules, "models.train.ranker", None)  # import models.train.ranker -> ImportError
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--train", "--json")) == 0
    captured = capsys.readouterr()
    assert "baselines only" in captured.err
    assert set(json.loads(captured.out)["models"]) == {"pop", "repeat", "item-knn", "trending"}


def test_cli_seeds_mean_std(tmp_path, capsys, monkeypatch):
    class FakeGRU:
        """Noisy constant scorer: a different result per seed."""

        def __init__(self, seed: int = 0) -> None:
            self.rng = np.random.default_rng(seed)

        def fit(self, data: EvalData) -> None:
            pass

        def score(self, data: EvalData, event_idx: np.ndarray) -> np.ndarray:
            return self.rng.random((len(event_idx), data.n_V))

    fake = types.ModuleType("models.train.ranker")
    fake.GRURanker = FakeGRU  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "models.train.ranker", fake)
    dump = tmp_path / "log.jsonl"
    write_jsonl(_distinct_targets_log(), dump)
    assert run_evaluate_command(_args(str(dump), "--format", "jsonl", "--train", "--seeds", "3", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == 3 and list(out["models"])[:4] == ["pop", "repeat", "item-knn", "trending"]
    # the JSON contract: the model's row is "seqstream", beside the baselines
    assert sorted(out["models"]) == ["item-knn", "pop", "repeat", "seqstream", "trending"]
    model = out["models"]["seqstream"]
    assert "R@20_std" in model and "MRR@20_std" in model and model["R@20_std"] >= 0
    assert "R@20_std" not in out["models"]["repeat"]
