"""The churn task: evaluation points and labels at each user's last train event, the
recency/frequency logistic-regression baseline, and `evaluate_churn`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.evaluate.data import BoolArray, EvalData, FloatArray, IntArray
from models.evaluate.metrics import churn_metrics


DEFAULT_CHURN_HORIZON_S: float = 24 * 3600.0


@dataclass
class LogisticRegression:
    """Tiny L2-regularised logistic regression (Newton / IRLS), standardised features."""

    l2: float = 1e-3
    iters: int = 50
    w: FloatArray | None = None
    mu: FloatArray | None = None
    sd: FloatArray | None = None

    def _design(self, X: FloatArray) -> FloatArray:
        assert self.mu is not None and self.sd is not None
        return np.c_[np.ones(len(X)), (X - self.mu) / self.sd]

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> LogisticRegression:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.mu, self.sd = X.mean(axis=0), X.std(axis=0)
        self.sd[self.sd == 0] = 1.0
        A = self._design(X)
        w = np.zeros(A.shape[1])
        reg = self.l2 * len(y) * np.eye(A.shape[1])
        reg[0, 0] = 0.0  # no penalty on the bias
        for _ in range(self.iters):
            p = 1.0 / (1.0 + np.exp(-A @ w))
            grad = A.T @ (p - y) + reg @ w
            H = (A * (p * (1 - p))[:, None]).T @ A + reg + 1e-9 * np.eye(A.shape[1])
            step = np.linalg.solve(H, grad)
            w -= step
            if np.abs(step).max() < 1e-10:
                break
        self.w = w
        return self

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        assert self.w is not None
        return 1.0 / (1.0 + np.exp(-self._design(np.asarray(X, dtype=np.float64)) @ self.w))


def churn_features(data: EvalData, event_idx: IntArray) -> FloatArray:
    """Recency/frequency at event i: log1p(seconds since the user's previous event; 0 for the
    first event) and log(number of the user's events up to and including i)."""
    i = np.asarray(event_idx, dtype=np.int64)
    has_prev = i > data.start[i]
    gap = np.where(has_prev, data.ts[i] - data.ts[np.maximum(i - 1, 0)], 0.0)
    return np.c_[np.log1p(gap), np.log(i - data.start[i] + 1.0)]


def churn_task(data: EvalData, horizon_s: float) -> tuple[IntArray, BoolArray]:
    """Evaluation points and labels: each user's last train event, label 1 when the user's next
    (unfiltered) event is more than horizon_s later. Users whose horizon window ends after the
    end of the log are left out: their label cannot be observed (right-censoring)."""
    idx = data.last_train_idx()
    t = data.ts[idx]
    observed = t + horizon_s <= data.t_max
    idx, t = idx[observed], t[observed]
    labels = data.user_next_test_ts[data.user[idx]] - t > horizon_s
    return idx, labels


def churn_baseline_training_set(data: EvalData, horizon_s: float) -> tuple[FloatArray, BoolArray]:
    """Training set of the recency/frequency baseline, from the train period only: every train
    event whose horizon window ends before q is a cutoff, labelled by the same rule. Its label
    needs no test data: if the next event is a test event, it is at >= q > ts + horizon."""
    tr = data.train_idx
    tr = tr[data.ts[tr] + horizon_s < data.q]
    nxt = np.minimum(tr + 1, data.n_events - 1)
    same_user_next = (tr + 1 < data.n_events) & (data.user[nxt] == data.user[tr]) & data.is_train[nxt]
    labels = ~(same_user_next & (data.ts[nxt] - data.ts[tr] <= horizon_s))
    return churn_features(data, tr), labels


def _call_churn_scores(ranker: Any, data: EvalData, idx: IntArray, horizon_s: float) -> FloatArray:
    fn = ranker.churn_scores
    if "horizon_s" in inspect.signature(fn).parameters:
        return np.asarray(fn(data, idx, horizon_s=horizon_s), dtype=np.float64)
    return np.asarray(fn(data, idx), dtype=np.float64)


def evaluate_churn(data: EvalData, horizon_s: float, rankers: dict[str, Any] | None = None) -> dict[str, Any]:
    idx, labels = churn_task(data, horizon_s)
    out: dict[str, Any] = {"horizon_s": float(horizon_s), "n": int(len(idx)), "models": {}}
    if len(idx) == 0:
        out["note"] = "no user has a fully observed horizon window after its last train event"
        return out
    X, y = churn_baseline_training_set(data, horizon_s)
    if len(y) and 0 < y.sum() < len(y):
        p = LogisticRegression().fit(X, y).predict_proba(churn_features(data, idx))
    else:  # one class only: the constant prior is all a model could learn
        p = np.full(len(idx), float(y.mean()) if len(y) else 0.5)
    out["models"]["rf-logreg"] = churn_metrics(p, labels)
    for name, ranker in (rankers or {}).items():
        if callable(getattr(ranker, "churn_scores", None)):
            out["models"][name] = churn_metrics(_call_churn_scores(ranker, data, idx, horizon_s), labels)
    return out
