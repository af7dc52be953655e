"""The evaluation protocol of EVALUATION.md (v1), implemented exactly, numpy only.

Pipeline: LogEvents -> `EventTable` (sorted rows) -> `build_eval_data` (split, V, filtering,
scored events) -> `evaluate_data` (full ranking of every scored event by every `Ranker`, plus
the next-action and churn heads) -> a JSON-friendly dict -> `format_table` / `write_report`.

Protocol points worth knowing (each checked against the reference figures of §7):
- Events are stable-sorted by (user, ts, row); q = numpy.quantile(ts, 0.8) (linear); train is
  ts < q. V = distinct train targets. Test events whose target is not in V are dropped from the
  sequences entirely. A remaining test event is scored when its user has an earlier remaining
  event; the model may use exactly the events before it in that filtered sequence (train prefix
  AND earlier test events as context) and never the event itself.
- rank = #{v in V : score(v) >= score(target)}: ties count against the model, and a NaN score
  counts as a tie. Full ranking, never sampled.
- Baselines encode "X, then popularity" as lexicographic score tiers: popularity enters as its
  dense rank among V (0..|V|-1), so that `tier * |V| + pop_rank` is exact in float64 and ties in
  popularity stay ties (they count against the model, as for any other ranker).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.schema import ACTION_INDEX, ACTIONS, LogEvent


Target = Literal["item", "category"]
Mode = Literal["frozen", "online"]
KS: tuple[int, ...] = (1, 5, 10, 20)
CURVE_KS: tuple[int, ...] = tuple(range(1, 21))
BASELINE_NAMES: tuple[str, ...] = ("pop", "repeat", "item-knn")
DEFAULT_CHURN_HORIZON_S: float = 24 * 3600.0
# Max number of float64 scores per chunk (chunk rows * |V|): 2**25 doubles = 256 MiB.
MAX_CHUNK_CELLS = 2**25

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


# =============================================================================== events & split


@dataclass
class EventTable:
    """All events of a log as columns, stable-sorted by (user, ts, row). Nothing is filtered.

    `category` is -1 where the source has no category (`has_category` tells whether any has)."""

    user: IntArray
    item: IntArray
    category: IntArray
    action: npt.NDArray[np.int8]
    ts: FloatArray  # seconds, UTC
    row: IntArray
    has_category: bool

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_events(cls, events: Iterable[LogEvent], progress: bool = False) -> EventTable:
        # array('q') keeps ~8 bytes per field while streaming: no list of LogEvent objects.
        user, item, cat, act, ts_ms, row = (array("q") for _ in range(6))
        any_cat = False
        it: Iterable[LogEvent] = events
        if progress:
            it = tqdm(events, desc="reading", unit=" ev", file=sys.stderr, disable=None, leave=False)
        for ev in it:
            user.append(ev.user_id)
            item.append(ev.item_id)
            if ev.category_id is None:
                cat.append(-1)
            else:
                cat.append(ev.category_id)
                any_cat = True
            act.append(ACTION_INDEX[ev.action])
            ts_ms.append(ev.ts_ms)
            row.append(ev.row)
        u = np.frombuffer(user, dtype=np.int64)
        t = np.frombuffer(ts_ms, dtype=np.int64) / 1000.0
        r = np.frombuffer(row, dtype=np.int64)
        order = np.lexsort((r, t, u))  # stable sort by (user, ts, row)
        return cls(
            user=u[order],
            item=np.frombuffer(item, dtype=np.int64)[order],
            category=np.frombuffer(cat, dtype=np.int64)[order],
            action=np.frombuffer(act, dtype=np.int64)[order].astype(np.int8),
            ts=t[order],
            row=r[order],
            has_category=any_cat,
        )


@dataclass
class EvalData:
    """The filtered sequences of one task (item or category), encoded for models.

    Only the *remaining* events are here (train events, and test events whose target is in V),
    in (user, ts, row) order; so `y` is never -1. Events of user u are
    `seq_start[u]:seq_start[u+1]`; `start[i]` is the first event of event i's user, so the
    context a model may use to score event i is `start[i]:i`. `V[y[i]]` is the raw target id.
    """

    target: Target
    V: IntArray  # raw target ids, sorted; index = candidate id
    user_ids: IntArray  # raw user id per user index
    user: IntArray  # per event: user index
    y: IntArray  # per event: target index in V
    item: IntArray  # per event: raw item id
    category: IntArray  # per event: raw category id (-1 if absent)
    action: npt.NDArray[np.int8]  # per event: index into ACTIONS
    ts: FloatArray  # per event: seconds
    row: IntArray  # per event: source data row
    is_train: BoolArray
    is_scored: BoolArray
    seq_start: IntArray  # [n_users + 1] CSR offsets
    start: IntArray  # per event: seq_start[user]
    q: float  # split time: train ts < q <= test ts
    t_max: float  # last event time of the whole (unfiltered) log
    user_next_test_ts: FloatArray  # per user: first (unfiltered) event with ts >= q, inf if none
    n_removed: int  # test events dropped because their target is not in V
    train_action_freq: FloatArray = field(default_factory=lambda: np.full(len(ACTIONS), 1 / len(ACTIONS)))

    @property
    def n_V(self) -> int:
        return len(self.V)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return len(self.y)

    @property
    def scored_idx(self) -> IntArray:
        return np.flatnonzero(self.is_scored)

    @property
    def train_idx(self) -> IntArray:
        return np.flatnonzero(self.is_train)

    def test_idx_in_time_order(self) -> IntArray:
        """Remaining test events in global time order (ts, row): the order of a live stream."""
        test = np.flatnonzero(~self.is_train)
        return test[np.lexsort((self.row[test], self.ts[test]))]

    def context(self, i: int) -> slice:
        """The events a model may use when scoring event i: its user's events before i."""
        return slice(int(self.start[i]), int(i))

    def last_train_idx(self) -> IntArray:
        """Per user with at least one train event: the index of that user's last train event."""
        tr = np.flatnonzero(self.is_train)
        if len(tr) == 0:
            return tr
        last = np.r_[self.user[tr][1:] != self.user[tr][:-1], True]
        return tr[last]


def build_eval_data(table: EventTable, target: Target) -> EvalData:
    """Split, build V, drop test events outside V, mark scored events (EVALUATION.md §2)."""
    if target not in ("item", "category"):
        raise ValueError(f"target must be 'item' or 'category', got {target!r}")
    if len(table) == 0:
        raise ValueError("no events to evaluate")
    if target == "category" and not table.has_category:
        raise ValueError("the category task needs category ids, and this log has none")
    ts = table.ts
    q = float(np.quantile(ts, 0.8))
    train = ts < q
    raw = table.item if target == "item" else table.category
    usable = np.ones(len(table), dtype=bool) if target == "item" else raw != -1
    V = np.unique(raw[train & usable])
    if len(V) == 0:
        raise ValueError("no train events: V is empty")
    pos = np.searchsorted(V, raw)
    in_V = V[np.minimum(pos, len(V) - 1)] == raw
    # Train events always stay (except, for the category task, events without a category).
    keep = np.where(train, usable, in_V & usable)
    n_removed = int((~train & ~keep).sum())

    u_raw = table.user[keep]
    first = np.r_[True, u_raw[1:] != u_raw[:-1]]  # rows are sorted by user
    seq_start = np.r_[np.flatnonzero(first), len(u_raw)].astype(np.int64)
    user = np.cumsum(first) - 1
    is_train = train[keep]
    # Scored: a remaining test event with an earlier remaining event of the same user.
    is_scored = ~is_train & ~first

    user_ids = u_raw[first]
    # Per user: the first test event of the *unfiltered* log (churn labels use every event).
    next_test = np.full(len(user_ids), np.inf)
    tu, ti = np.unique(table.user[~train], return_index=True)  # first index = earliest (sorted)
    loc = np.searchsorted(user_ids, tu)
    ok = (loc < len(user_ids)) & (user_ids[np.minimum(loc, len(user_ids) - 1)] == tu)
    next_test[loc[ok]] = ts[~train][ti[ok]]

    action = table.action[keep]
    freq = np.bincount(action[is_train], minlength=len(ACTIONS)).astype(np.float64)
    return EvalData(
        target=target,
        V=V,
        user_ids=user_ids,
        user=user.astype(np.int64),
        y=pos[keep].astype(np.int64),
        item=table.item[keep],
        category=table.category[keep],
        action=action,
        ts=ts[keep],
        row=table.row[keep],
        is_train=is_train,
        is_scored=is_scored,
        seq_start=seq_start,
        start=seq_start[user],
        q=q,
        t_max=float(ts.max()),
        user_next_test_ts=next_test,
        n_removed=n_removed,
        train_action_freq=freq / max(freq.sum(), 1.0),
    )


# =============================================================================== rankers


@runtime_checkable
class Ranker(Protocol):
    """What the evaluation needs from a model.

    `score(data, event_idx)` returns float scores [len(event_idx), data.n_V]: row r ranks every
    candidate for event `event_idx[r]`, using only the context `data.context(event_idx[r])`
    (the user's events before it). It is called in chunks, in increasing index order in frozen
    mode and in time order in online mode.

    Optional hooks, looked up with getattr:
    - `learn(data, event_idx)`: online mode only; after a chunk of test events (time order) has
      been scored, the ranker is told those events (test-then-train).
    - `action_probs(data, event_idx) -> [m, 3]`: P(action of event i) given the same context as
      `score` (i.e. the action of the NEXT event after the context), columns in ACTIONS order.
    - `churn_scores(data, event_idx, horizon_s=...) -> [m]`: P(no event of the user within
      horizon_s after event i), given the user's events up to AND including event i.
    """

    def fit(self, data: EvalData) -> None: ...

    def score(self, data: EvalData, event_idx: IntArray) -> npt.NDArray[np.floating]: ...


def _train_popularity(data: EvalData) -> tuple[FloatArray, FloatArray]:
    """Train counts per candidate, and their dense rank (ties share a rank) as float64."""
    counts = np.bincount(data.y[data.is_train], minlength=data.n_V).astype(np.float64)
    dense = np.unique(counts, return_inverse=True)[1].reshape(-1).astype(np.float64)
    return counts, dense


class PopRanker:
    """pop: train popularity (same scores for every event)."""

    def fit(self, data: EvalData) -> None:
        self.counts, _ = _train_popularity(data)

    def score(self, data: EvalData, event_idx: IntArray) -> FloatArray:
        return np.broadcast_to(self.counts, (len(event_idx), data.n_V))


class RepeatRanker:
    """repeat: the user's own earlier targets, most recent first, then popularity.

    Earlier = every event before the scored one in the filtered sequence, train and test
    context alike. Score = |V| + (position of the candidate's last occurrence) for seen targets,
    else the popularity dense rank (< |V|): the two tiers never overlap.
    """

    def fit(self, data: EvalData) -> None:
        _, self.pop_rank = _train_popularity(data)
        self._cache_data: EvalData | None = None
        self._cache_user = -1
        self._cache_upto = -1
        self._cache_row: FloatArray | None = None

    def _row(self, data: EvalData, i: int) -> FloatArray:
        # Incremental per user: consecutive calls for the same user (frozen order) only add the
        # new context events, so a long history costs O(|V| + new events) per row.
        u, s = int(data.user[i]), int(data.start[i])
        if self._cache_row is None or data is not self._cache_data or u != self._cache_user or i < self._cache_upto:
            self._cache_row = self.pop_rank.copy()
            self._cache_data, self._cache_user, self._cache_upto = data, u, s
        lo = self._cache_upto
        if i > lo:
            # Later positions overwrite earlier ones: assign in order via maximum (ufunc.at is
            # unbuffered, so repeated candidates get the max = most recent position).
            np.maximum.at(self._cache_row, data.y[lo:i], data.n_V + np.arange(lo - s, i - s, dtype=np.float64))
        self._cache_upto = i
        return self._cache_row

    def score(self, data: EvalData, event_idx: IntArray) -> FloatArray:
        out = np.empty((len(event_idx), data.n_V))
        for r, i in enumerate(event_idx):
            out[r] = self._row(data, int(i))
        return out


class ItemKNNRanker:
    """item-kNN: successor counts of consecutive train pairs for the user's last target, then
    popularity. Pairs are consecutive train events of the same user (repeats included); the
    last target is the event just before the scored one (it may be test context).
    Score = count * |V| + popularity dense rank (lexicographic)."""

    def fit(self, data: EvalData) -> None:
        _, self.pop_rank = _train_popularity(data)
        n_V = data.n_V
        tr, same = data.is_train, data.user[1:] == data.user[:-1]
        pair = same & tr[:-1] & tr[1:]
        codes = data.y[:-1][pair] * n_V + data.y[1:][pair]
        uniq, counts = np.unique(codes, return_counts=True)
        src = uniq // n_V
        # CSR by source candidate: successors of a are dst[indptr[a]:indptr[a+1]].
        self.indptr = np.r_[0, np.cumsum(np.bincount(src, minlength=n_V))].astype(np.int64)
        self.dst = uniq % n_V
        self.counts = counts.astype(np.float64)

    def score(self, data: EvalData, event_idx: IntArray) -> FloatArray:
        out = np.tile(self.pop_rank, (len(event_idx), 1))
        n_V = data.n_V
        for r, i in enumerate(event_idx):
            a = data.y[int(i) - 1]  # scored events always have an earlier event of the user
            lo, hi = self.indptr[a], self.indptr[a + 1]
            out[r, self.dst[lo:hi]] += n_V * self.counts[lo:hi]
        return out


def baseline_rankers() -> dict[str, Ranker]:
    return {"pop": PopRanker(), "repeat": RepeatRanker(), "item-knn": ItemKNNRanker()}


def find_peeking(ranker: Ranker, data: EvalData, max_events: int = 50, seed: int = 0) -> IntArray:
    """Scored events whose scores change when the target event and everything after it (of the
    same user) is altered: a ranker that peeks at what it must predict shows up here. The
    ranker must be fitted; `max_events` scored events are sampled."""
    import dataclasses

    rng = np.random.default_rng(seed)
    scored = data.scored_idx
    sample = np.sort(rng.choice(scored, size=min(max_events, len(scored)), replace=False))
    bad = []
    for i in sample:
        i = int(i)
        end = int(data.seq_start[data.user[i] + 1])
        y, action = data.y.copy(), data.action.copy()
        item, category = data.item.copy(), data.category.copy()
        y[i:end] = (y[i:end] + 1) % data.n_V
        action[i:end] = (action[i:end] + 1) % len(ACTIONS)
        item[i:end] += 1
        category[i:end] += 1
        altered = dataclasses.replace(data, y=y, action=action, item=item, category=category)
        ref = np.asarray(ranker.score(data, np.array([i])))
        alt = np.asarray(ranker.score(altered, np.array([i])))
        if not np.array_equal(ref, alt, equal_nan=True):
            bad.append(i)
    return np.array(bad, dtype=np.int64)


# =============================================================================== metrics


def ranks_of_targets(scores: npt.NDArray[np.floating], targets: IntArray) -> IntArray:
    """rank = #candidates with score >= score(target); ties (and NaNs) count against."""
    scores = np.asarray(scores)
    t = scores[np.arange(len(targets)), targets]
    ranks = (scores >= t[:, None]).sum(axis=1)
    nan = np.isnan(scores)
    if nan.any():
        ranks = ranks + nan.sum(axis=1)  # a NaN candidate is a tie with the target
        ranks = np.where(np.isnan(t), scores.shape[1], ranks)  # a NaN target is ranked last
    return ranks.astype(np.int64)


def ranking_metrics(ranks: IntArray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K and MRR@K, micro-averaged over events."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"R@{k}"] = float(hit.mean()) if len(ranks) else math.nan
        out[f"MRR@{k}"] = float((hit / ranks).mean()) if len(ranks) else math.nan
    return out


def _average_ranks(x: FloatArray) -> FloatArray:
    """1-based ranks of x with ties given their average rank (as in Mann-Whitney U)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1, len(xs)]
    avg = (boundaries[:-1] + boundaries[1:] + 1) / 2.0  # mean of 1-based ranks in the group
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, np.diff(boundaries))
    return ranks


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """ROC-AUC via the rank-sum statistic, ties averaged. NaN when a class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_k - R_{k-1}) * P_k, with tied
    scores forming a single threshold (as scikit-learn). NaN without positives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last_of_group]
    fp = (last_of_group + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(probs: npt.ArrayLike, labels: npt.ArrayLike, eps: float = 1e-15) -> float:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0)).mean())


def reliability(probs: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 10) -> dict[str, list[float]]:
    """Calibration curve of a binary probability: equal-width bins on [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.float64)
    b = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(b, weights=p, minlength=bins) / count
        frac_pos = np.bincount(b, weights=y, minlength=bins) / count
    keep = count > 0
    return {
        "mean_pred": mean_pred[keep].tolist(),
        "frac_pos": frac_pos[keep].tolist(),
        "count": count[keep].astype(float).tolist(),
    }


def action_metrics(probs: npt.ArrayLike, next_actions: npt.ArrayLike) -> dict[str, Any]:
    """Next-action head: probs [n, 3] in ACTIONS order, next_actions [n] action indices.
    ROC-AUC and PR-AUC for purchase and cart (one-vs-rest), log-loss, calibration bins."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(next_actions, dtype=np.int64)
    if p.ndim != 2 or p.shape != (len(y), len(ACTIONS)):
        raise ValueError(f"probs must have shape ({len(y)}, {len(ACTIONS)}), got {p.shape}")
    out: dict[str, Any] = {"n": int(len(y))}
    for name in ("purchase", "cart"):
        k = ACTION_INDEX[name]
        out[f"auc_{name}"] = roc_auc(p[:, k], y == k)
        out[f"ap_{name}"] = average_precision(p[:, k], y == k)
    out["log_loss"] = log_loss(p, y) if len(y) else math.nan
    out["calibration"] = {a: reliability(p[:, k], y == k) for k, a in enumerate(ACTIONS)}
    return out


def churn_metrics(scores: npt.ArrayLike, labels: npt.ArrayLike) -> dict[str, float]:
    """Churn head: scores = P(churn), labels 1 = no event within the horizon."""
    y = np.asarray(labels).astype(bool)
    return {
        "n": int(len(y)),
        "pos_rate": float(y.mean()) if len(y) else math.nan,
        "roc_auc": roc_auc(scores, y),
        "pr_auc": average_precision(scores, y),
    }


# =============================================================================== churn


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


# =============================================================================== evaluation


def _chunks(idx: IntArray, size: int) -> Iterator[IntArray]:
    for s in range(0, len(idx), size):
        yield idx[s : s + size]


def evaluate_data(
    data: EvalData,
    rankers: dict[str, Ranker],
    mode: Mode = "frozen",
    ks: Sequence[int] = KS,
    *,
    include_baselines: bool = True,
    chunk_size: int = 512,
    churn_horizon_s: float | None = DEFAULT_CHURN_HORIZON_S,
    progress: bool = True,
    fit: bool = True,
) -> dict[str, Any]:
    """Evaluate rankers on prepared data. See `run_evaluation` for the result's shape.

    frozen: fit on train, score the scored events in index order. online: fit on train, then
    walk the remaining test events in time order in chunks of `chunk_size`: score the chunk's
    scored events, then call `learn(data, chunk)` (rankers without `learn` stay frozen). Within
    a chunk, weights are those learnt up to the previous chunk; the context is always exact.
    """
    if mode not in ("frozen", "online"):
        raise ValueError(f"mode must be 'frozen' or 'online', got {mode!r}")
    all_rankers: dict[str, Ranker] = dict(baseline_rankers()) if include_baselines else {}
    for name in rankers:
        if name in all_rankers:
            raise ValueError(f"model name {name!r} clashes with a baseline")
    all_rankers.update(rankers)

    if fit:
        for name, rk in all_rankers.items():
            rk.fit(data)
    else:  # pre-trained models are used as they are; baselines still need their counts
        for name, rk in all_rankers.items():
            if name in BASELINE_NAMES:
                rk.fit(data)

    # Churn is evaluated at each user's last train event: before any online learning.
    churn = evaluate_churn(data, churn_horizon_s, rankers) if churn_horizon_s else None

    scored = data.scored_idx
    if mode == "online":
        stream = data.test_idx_in_time_order()
        steps = [(c, c[data.is_scored[c]]) for c in _chunks(stream, chunk_size)]
    else:
        rows = max(1, min(chunk_size, MAX_CHUNK_CELLS // max(data.n_V, 1)))
        steps = [(None, c) for c in _chunks(scored, rows)]

    ranks: dict[str, list[IntArray]] = {name: [] for name in all_rankers}
    probs: dict[str, list[FloatArray]] = {
        name: [] for name, rk in rankers.items() if callable(getattr(rk, "action_probs", None))
    }
    order: list[IntArray] = []
    bar = tqdm(total=len(scored), desc=f"{data.target}/{mode}", unit=" ev", file=sys.stderr,
               disable=None if progress else True, leave=False)
    for learn_idx, idx in steps:
        if len(idx):
            order.append(idx)
            targets = data.y[idx]
            for name, rk in all_rankers.items():
                s = np.asarray(rk.score(data, idx))
                if s.shape != (len(idx), data.n_V):
                    raise ValueError(f"{name}.score returned shape {s.shape}, expected {(len(idx), data.n_V)}")
                ranks[name].append(ranks_of_targets(s, targets))
            for name in probs:
                probs[name].append(np.asarray(rankers[name].action_probs(data, idx), dtype=np.float64))
            bar.update(len(idx))
        if learn_idx is not None:
            for rk in all_rankers.values():
                if callable(getattr(rk, "learn", None)):
                    rk.learn(data, learn_idx)
    bar.close()

    # Canonical (index) order before averaging, so frozen and online sums agree to the bit.
    evaluated = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    canon = np.argsort(evaluated, kind="stable")
    evaluated = evaluated[canon]

    def cat(parts: list[Any]) -> Any:
        return np.concatenate(parts)[canon] if parts else np.zeros(0, dtype=np.int64)

    next_actions = data.action[evaluated].astype(np.int64)
    result: dict[str, Any] = {
        "target": data.target,
        "mode": mode,
        "n": int(len(evaluated)),
        "V": int(data.n_V),
        "models": {},
    }
    curve: dict[str, list[float]] = {}
    for name in all_rankers:
        r = cat(ranks[name])
        result["models"][name] = ranking_metrics(r, ks)
        curve[name] = [float((r <= k).mean()) if len(r) else math.nan for k in CURVE_KS]
    result["curve"] = {"K": list(CURVE_KS), "recall": curve}
    # Next action: the prior (train action frequencies) is the baseline every head must beat.
    action: dict[str, Any] = {}
    if len(evaluated):
        action["prior"] = action_metrics(np.tile(data.train_action_freq, (len(evaluated), 1)), next_actions)
        for name, parts in probs.items():
            action[name] = action_metrics(cat(parts), next_actions)
    result["action"] = action
    if churn is not None:
        result["churn"] = churn
    return result


def run_evaluation(
    events_iterable: Iterable[LogEvent] | EventTable,
    target: Target = "item",
    rankers: dict[str, Ranker] | None = None,
    mode: Mode = "frozen",
    ks: Sequence[int] = KS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the protocol on a log. Baselines (pop, repeat, item-knn) are always included.

    Returns {"target", "mode", "n", "V", "models": {name: {"R@1", "MRR@1", ..., "R@20",
    "MRR@20"}}} plus "curve" (Recall@1..20 per model), "action" (next-action metrics, with the
    train-frequency "prior" baseline) and "churn" (ROC-AUC/PR-AUC at each user's last train
    event; "rf-logreg" baseline). Extra keyword arguments go to `evaluate_data`.
    """
    table = events_iterable if isinstance(events_iterable, EventTable) else EventTable.from_events(events_iterable)
    data = build_eval_data(table, target)
    return evaluate_data(data, rankers or {}, mode, ks, **kwargs)


# =============================================================================== seeds & output

_NO_AGG = {"n", "V", "target", "mode", "horizon_s", "calibration", "note"}


def _mean_std(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the numeric values of per-seed metric dicts, plus "<key>_std" (population std)."""
    out: dict[str, Any] = {}
    for key, value in dicts[0].items():
        if isinstance(value, (int, float)) and key not in _NO_AGG:
            vals = np.array([d[key] for d in dicts], dtype=np.float64)
            out[key] = float(vals.mean())
            out[f"{key}_std"] = float(vals.std())
        else:
            out[key] = value
    return out


def aggregate_seeds(baseline_result: dict[str, Any], seed_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge runs of the same models over several seeds into `baseline_result` (which holds the
    baselines): each model's metrics become the mean over seeds, with "<metric>_std" beside."""
    result = json.loads(json.dumps(baseline_result))  # deep copy
    if not seed_results:
        return result
    result["seeds"] = len(seed_results)
    for name in seed_results[0]["models"]:
        if name in BASELINE_NAMES:
            continue
        result["models"][name] = _mean_std([r["models"][name] for r in seed_results])
        curves = np.array([r["curve"]["recall"][name] for r in seed_results])
        result["curve"]["recall"][name] = curves.mean(axis=0).tolist()
        if name in seed_results[0].get("action", {}):
            result["action"][name] = _mean_std([r["action"][name] for r in seed_results])
        if name in seed_results[0].get("churn", {}).get("models", {}):
            result["churn"]["models"][name] = _mean_std([r["churn"]["models"][name] for r in seed_results])
    return result


def _fmt(metrics: dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "   -  "
    std = metrics.get(f"{key}_std")
    return f"{v:.4f}" + (f"±{std:.4f}" if std is not None else "")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one result (one target, one mode)."""
    ks = [k[2:] for k in next(iter(result["models"].values())) if k.startswith("R@") and not k.endswith("_std")]
    cols = [c for k in ks for c in (f"R@{k}", f"MRR@{k}")]
    width = max(8, *(len(n) for n in result["models"]))
    seeds = f", mean±std of {result['seeds']} seeds" if result.get("seeds") else ""
    lines = [f"target={result['target']} mode={result['mode']} n={result['n']} |V|={result['V']}{seeds}"]
    cell = max(len(_fmt(m, c)) for m in result["models"].values() for c in cols)
    lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>{cell}}" for c in cols))
    for name, m in result["models"].items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_fmt(m, c):>{cell}}" for c in cols))
    for name, m in result.get("action", {}).items():
        lines.append(
            f"next action [{name}] n={m['n']}: AUC purchase {_fmt(m, 'auc_purchase')}, cart {_fmt(m, 'auc_cart')}; "
            f"AP purchase {_fmt(m, 'ap_purchase')}, cart {_fmt(m, 'ap_cart')}; log-loss {_fmt(m, 'log_loss')}"
        )
    churn = result.get("churn")
    if churn:
        head = f"churn H={churn['horizon_s'] / 3600:g}h n={churn['n']}"
        if churn.get("note"):
            lines.append(f"{head}: {churn['note']}")
        for name, m in churn["models"].items():
            lines.append(
                f"{head} [{name}] positive rate {_fmt(m, 'pos_rate')}: "
                f"ROC-AUC {_fmt(m, 'roc_auc')}, PR-AUC {_fmt(m, 'pr_auc')}"
            )
    return "\n".join(lines)


def _markdown_table(result: dict[str, Any]) -> str:
    keys = [k for k in next(iter(result["models"].values())) if "@" in k and not k.endswith("_std")]
    out = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in result["models"].items():
        out.append(f"| {name} | " + " | ".join(_fmt(m, k).strip() for k in keys) + " |")
    return "\n".join(out)


def write_report(results: list[dict[str, Any]], out_dir: str | Path, title: str = "seqstream evaluation",
                 source: str | None = None) -> Path:
    """Markdown report plus PNG plots (Recall@K curves; action-head reliability diagrams)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    if source:
        md += [f"Log: `{source}`", ""]
    md += ["Protocol: EVALUATION.md v1 (full ranking, ties count against, micro averages).", ""]
    for res in results:
        tag = f"{res['target']}_{res['mode']}"
        seeds = f", mean±std of {res['seeds']} seeds" if res.get("seeds") else ""
        md += [f"## {res['target']} / {res['mode']}", "", f"n = {res['n']} scored events, |V| = {res['V']}{seeds}", ""]
        md += [_markdown_table(res), ""]

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in res["curve"]["recall"].items():
            ax.plot(res["curve"]["K"], curve, marker=".", label=name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_title(f"{res['target']} / {res['mode']} (n={res['n']}, |V|={res['V']})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"recall_{tag}.png", dpi=110)
        plt.close(fig)
        md += [f"![Recall@K](recall_{tag}.png)", ""]

        action = res.get("action", {})
        if action:
            md += ["### Next action", "", "| model | n | AUC purchase | AUC cart | AP purchase | AP cart | log-loss |",
                   "|---|---|---|---|---|---|---|"]
            for name, m in action.items():
                md.append(f"| {name} | {m['n']} | " + " | ".join(
                    _fmt(m, k).strip() for k in ("auc_purchase", "auc_cart", "ap_purchase", "ap_cart", "log_loss")) + " |")
            md.append("")
            for name, m in action.items():
                if name == "prior":
                    continue  # a constant: its reliability diagram is a single point per action
                fig, ax = plt.subplots(figsize=(5, 5))
                ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
                for a, cal in m["calibration"].items():
                    ax.plot(cal["mean_pred"], cal["frac_pos"], marker="o", label=a)
                ax.set_xlabel("predicted probability")
                ax.set_ylabel("observed frequency")
                ax.set_title(f"next-action calibration: {name} ({res['target']}/{res['mode']})")
                ax.legend()
                fig.tight_layout()
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
                fig.savefig(out / f"calibration_{tag}_{safe}.png", dpi=110)
                plt.close(fig)
                md += [f"![calibration {name}](calibration_{tag}_{safe}.png)", ""]

        churn = res.get("churn")
        if churn:
            md += [f"### Churn (H = {churn['horizon_s'] / 3600:g} h, n = {churn['n']})", ""]
            if churn.get("note"):
                md += [churn["note"], ""]
            if churn["models"]:
                md += ["| model | positive rate | ROC-AUC | PR-AUC |", "|---|---|---|---|"]
                for name, m in churn["models"].items():
                    md.append(f"| {name} | " + " | ".join(_fmt(m, k).strip() for k in ("pos_rate", "roc_auc", "pr_auc")) + " |")
                md.append("")
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path


# =============================================================================== CLI glue


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `seqstream evaluate LOG --format FMT ...`."""
    from models.datasets import FORMATS

    parser.add_argument("log", metavar="LOG", help="the log file to evaluate on")
    parser.add_argument("--format", required=True, choices=FORMATS, help="log format")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="PATH", help="evaluate a trained GRU checkpoint (not refit)")
    model.add_argument("--train", action="store_true", help="train the GRU on the train split, then evaluate")
    parser.add_argument("--mode", choices=("frozen", "online", "both"), default="frozen",
                        help="frozen (references' mode), online (test-then-train), or both")
    parser.add_argument("--target", choices=("item", "category", "both"), default="item")
    parser.add_argument("--json", action="store_true", help="print JSON (a list when several runs)")
    parser.add_argument("--report", metavar="DIR", help="write report.md and PNG plots to DIR")
    parser.add_argument("--seeds", type=int, default=3,
                        help="with --train: fit S models (seeds 0..S-1) and report mean ± std (default 3: "
                             "the shared samples are small)")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="skip", help="bad rows: skip or stop")
    parser.add_argument("--churn-horizon-h", type=float, default=DEFAULT_CHURN_HORIZON_S / 3600,
                        help="churn horizon H in hours (default 24)")
    parser.add_argument("--chunk-size", type=int, default=512,
                        help="test events per step; online mode learns after each step (the worker "
                             "trains every 200-2,000 samples), so a test period shorter than one "
                             "chunk scores as in frozen mode")
    return parser


def _model_factory(args: argparse.Namespace) -> tuple[Any, bool] | None:
    """(factory(seed) -> Ranker, fit?) for the GRU, or None for baselines only."""
    if not (args.train or args.model):
        return None
    try:
        from models.train import GRURanker  # lazy: torch is only needed with a model
    except ImportError as e:
        print(f"warning: models.train.GRURanker is not importable ({e}); evaluating baselines only",
              file=sys.stderr)
        return None
    if args.train:
        return (lambda seed: GRURanker(seed=seed)), True
    path = args.model
    if callable(getattr(GRURanker, "load", None)):
        return (lambda seed: GRURanker.load(path)), False
    return (lambda seed: GRURanker(checkpoint=path, seed=seed)), False


def run_evaluate_command(args: argparse.Namespace) -> int:
    """`seqstream evaluate`: returns the process exit code."""
    from models.datasets import BadRow, ErrorReport, read_events

    checks = [(args.seeds >= 1, "--seeds must be >= 1"), (args.chunk_size >= 1, "--chunk-size must be >= 1"),
              (args.churn_horizon_h > 0, "--churn-horizon-h must be > 0")]
    for ok, msg in checks:
        if not ok:
            print(f"seqstream evaluate: error: {msg}", file=sys.stderr)
            return 2
    errors = ErrorReport()
    try:
        table = EventTable.from_events(read_events(args.log, args.format, on_error=args.on_error, errors=errors),
                                       progress=True)
    except BadRow as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if errors.count:
        print(f"{args.log}: {errors.summary()}", file=sys.stderr)
    if len(table) == 0:
        print("error: no events read", file=sys.stderr)
        return 2

    targets: list[Target] = ["item", "category"] if args.target == "both" else [args.target]
    if "category" in targets and not table.has_category:
        if args.target == "category":
            print(f"error: {args.log} has no categories (format {args.format}); use --target item", file=sys.stderr)
            return 2
        print(f"warning: format {args.format} has no categories; skipping the category task", file=sys.stderr)
        targets = ["item"]
    modes: list[Mode] = ["frozen", "online"] if args.mode == "both" else [args.mode]
    factory = _model_factory(args)
    seeds = args.seeds if factory and factory[1] else 1
    horizon = args.churn_horizon_h * 3600.0

    results = []
    for target in targets:
        data = build_eval_data(table, target)
        for mode in modes:
            common = dict(chunk_size=args.chunk_size, churn_horizon_s=horizon)
            base = evaluate_data(data, {}, mode, **common)
            if factory is None:
                results.append(base)
                continue
            make, fit = factory
            runs = []
            for seed in range(seeds):
                runs.append(evaluate_data(data, {"seqstream": make(seed)}, mode, include_baselines=False, fit=fit, **common))
            merged = aggregate_seeds(base, runs) if seeds > 1 else _merge_single(base, runs[0])
            results.append(merged)

    if args.json:
        print(json.dumps(to_jsonable(results[0] if len(results) == 1 else results), indent=2))
    else:
        print("\n\n".join(format_table(r) for r in results))
    if args.report:
        path = write_report(results, args.report, source=str(args.log))
        print(f"report written to {path}", file=sys.stderr)
    return 0


def to_jsonable(obj: Any) -> Any:
    """NaN (an undefined metric, e.g. AUC with one class) becomes null: strict JSON has no NaN."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def _merge_single(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Put one model run's entries beside the baselines, model first."""
    merged = dict(base)
    merged["models"] = {**run["models"], **base["models"]}
    merged["curve"] = {"K": base["curve"]["K"], "recall": {**run["curve"]["recall"], **base["curve"]["recall"]}}
    merged["action"] = {**base.get("action", {}), **{k: v for k, v in run.get("action", {}).items() if k != "prior"}}
    if "churn" in base:
        churn = dict(base["churn"])
        churn["models"] = {**base["churn"]["models"], **run.get("churn", {}).get("models", {})}
        merged["churn"] = churn
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="seqstream evaluate"))
    return run_evaluate_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
