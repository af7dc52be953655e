"""The "action-LR" next-action baseline: multinomial logistic regression on recent action
counts and recency, numpy only. A stronger bar than the train-frequency prior: it sees what a
user just did (a cart, a long run of views) but not which items, so a sequence model has to
beat it with what it learns beyond counts.

Features of target event i are read from the events before it only (`start[i]:i`, its user's
context), exactly what the GRU head has seen when it predicts i: nothing of event i itself, not
even its timestamp (the head predicts the next action before knowing when it comes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.evaluate.data import EvalData, FloatArray, IntArray
from models.schema import ACTION_INDEX, ACTIONS


WINDOWS: tuple[int, ...] = (5, 20)  # plus "all events so far"
FEATURE_NAMES: tuple[str, ...] = (
    *(f"n_{a}_last{k}" for k in WINDOWS for a in ACTIONS),
    *(f"log_n_{a}_all" for a in ACTIONS),
    *(f"last_is_{a}" for a in ACTIONS),
    "log_gap_last_s", "log_events_so_far", "log_since_cart", "log_since_purchase",
)


def action_features(action: npt.ArrayLike, ts: npt.ArrayLike, start: npt.ArrayLike,
                    idx: npt.ArrayLike) -> FloatArray:
    """Features [len(idx), len(FEATURE_NAMES)] of each target event i in `idx`, from events
    start[i]..i-1 (its user's earlier events; each i must have at least one, i > start[i]).
    `action`, `ts` (seconds), `start` are per event, grouped by user in time order."""
    a = np.asarray(action, dtype=np.int64)
    t = np.asarray(ts, dtype=np.float64)
    s = np.asarray(start, dtype=np.int64)
    i = np.asarray(idx, dtype=np.int64)
    if len(i) and np.any(i <= s[i]):
        raise ValueError("every target needs at least one earlier event of its user")
    k = len(ACTIONS)
    onehot = np.zeros((len(a), k))
    onehot[np.arange(len(a)), a] = 1.0
    csum = np.vstack([np.zeros((1, k)), np.cumsum(onehot, axis=0)])  # csum[j] = counts of [0, j)
    lo_user = s[i]
    cols: list[FloatArray] = []
    for w in WINDOWS:
        lo = np.maximum(lo_user, i - w)
        cols.append(csum[i] - csum[lo])
    n_so_far = (i - lo_user).astype(np.float64)
    cols.append(np.log1p(csum[i] - csum[lo_user]))
    cols.append(onehot[i - 1])  # the last action before the target
    prev2 = np.maximum(i - 2, 0)
    gap = np.where(i - 2 >= lo_user, t[i - 1] - t[prev2], 0.0)  # between the last two context events
    cols.append(np.log1p(np.maximum(gap, 0.0))[:, None])
    cols.append(np.log1p(n_so_far)[:, None])
    pos = np.arange(len(a))
    for name in ("cart", "purchase"):
        last = np.maximum.accumulate(np.where(a == ACTION_INDEX[name], pos, -1))[i - 1]
        # events since the last one (1 = the last context event); never seen: one more than all
        since = np.where(last >= lo_user, i - last, n_so_far + 1.0)
        cols.append(np.log(since.astype(np.float64))[:, None])
    return np.hstack(cols)


@dataclass
class ActionLR:
    """Multinomial logistic regression, click as the reference class, standardised features,
    L2 on the weights (not the intercepts, bar a trace), Newton steps with backtracking: a
    fixed number of iterations at most, deterministic."""

    l2: float = 1e-3
    iters: int = 30
    w: FloatArray | None = None  # [1 + d, K - 1]
    mu: FloatArray | None = None
    sd: FloatArray | None = None
    n_classes: int = len(ACTIONS)

    def _design(self, X: FloatArray) -> FloatArray:
        assert self.mu is not None and self.sd is not None
        return np.c_[np.ones(len(X)), (X - self.mu) / self.sd]

    @staticmethod
    def _probs(A: FloatArray, w: FloatArray) -> FloatArray:
        z = np.c_[np.zeros(len(A)), A @ w]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> ActionLR:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        n, K = len(y), self.n_classes
        if n == 0:
            raise ValueError("no training rows")
        self.mu, self.sd = X.mean(axis=0), X.std(axis=0)
        self.sd[self.sd == 0] = 1.0
        A = self._design(X)
        d1 = A.shape[1]
        Y = np.zeros((n, K))
        Y[np.arange(n), y] = 1.0
        # L2 per parameter; the intercepts get a trace of it, so a class absent from the train
        # split gets a very negative but finite intercept
        reg = np.full(d1, self.l2)
        reg[0] = 1e-6
        reg_vec = np.tile(reg, K - 1)  # parameters flattened class by class

        def objective(w: FloatArray) -> float:
            p = self._probs(A, w)
            return float(-np.log(np.clip(p[np.arange(n), y], 1e-300, 1.0)).mean()
                         + 0.5 * (reg[:, None] * w * w).sum())

        w = np.zeros((d1, K - 1))
        f = objective(w)
        for _ in range(self.iters):
            p = self._probs(A, w)
            grad = (A.T @ (p - Y)[:, 1:]) / n + reg[:, None] * w
            H = np.zeros(((K - 1) * d1, (K - 1) * d1))
            for a in range(1, K):
                for b in range(1, K):
                    c = p[:, a] * ((a == b) - p[:, b])
                    H[(a - 1) * d1:a * d1, (b - 1) * d1:b * d1] = (A * c[:, None]).T @ A / n
            H[np.diag_indices_from(H)] += reg_vec
            g = grad.T.reshape(-1)  # class-major, as H's blocks
            step = np.linalg.solve(H, g).reshape(K - 1, d1).T
            lr = 1.0
            while lr > 1e-4:
                w_new = w - lr * step
                f_new = objective(w_new)
                if f_new <= f:
                    break
                lr *= 0.5
            else:
                break
            done = f - f_new < 1e-10
            w, f = w_new, f_new
            if done:
                break
        self.w = w
        return self

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        assert self.w is not None, "fit first"
        return self._probs(self._design(np.asarray(X, dtype=np.float64)), self.w)


def action_lr_probs(data: EvalData, idx: IntArray) -> FloatArray | None:
    """Fit action-LR on the train split's events (each with at least one earlier event of its
    user), then P(next action) [len(idx), 3] for the events `idx`. None without train targets."""
    train = np.flatnonzero(data.is_train & (np.arange(data.n_events) > data.start))
    if len(train) == 0:
        return None
    model = ActionLR().fit(action_features(data.action, data.ts, data.start, train), data.action[train])
    return model.predict_proba(action_features(data.action, data.ts, data.start, idx))
