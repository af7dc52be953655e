"""Metrics: ranks with explicit tie handling (ties and NaNs count against the model),
Recall/MRR@K (overall and by the user's history length), ROC-AUC, average precision, log-loss, reliability, and the action and churn
heads' summaries."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.evaluate.data import FloatArray, IntArray
from models.schema import ACTION_INDEX, ACTIONS


KS: tuple[int, ...] = (1, 5, 10, 20)
# Disjoint buckets of "earlier events of the target's user" (label, lowest, highest): cold start
# is "<=1" (a scored target always has at least one earlier event, so in practice exactly 1).
HISTORY_BUCKETS: tuple[tuple[str, int, float], ...] = (("<=1", 0, 1), ("2-3", 2, 3), (">3", 4, math.inf))
HISTORY_KS: tuple[int, ...] = (20,)


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


def prior_events(start: IntArray, event_idx: IntArray) -> IntArray:
    """Per event: how many earlier events its user has in the filtered sequence (the context the
    model may see: train prefix plus earlier test events). `start[i]` is the user's first event."""
    idx = np.asarray(event_idx, dtype=np.int64)
    return idx - np.asarray(start, dtype=np.int64)[idx]


def history_bucket(n_prior: IntArray) -> IntArray:
    """Index into HISTORY_BUCKETS of each history length."""
    highs = np.array([hi for _, _, hi in HISTORY_BUCKETS[:-1]], dtype=np.float64)
    return np.searchsorted(highs, np.asarray(n_prior, dtype=np.float64), side="left").astype(np.int64)


def metrics_by_history(ranks: IntArray, n_prior: IntArray,
                       ks: Sequence[int] = HISTORY_KS) -> dict[str, dict[str, Any]]:
    """{bucket label: {"n", "R@K", "MRR@K"}} over HISTORY_BUCKETS; an empty bucket has n = 0 and
    NaN metrics. The n-weighted bucket means are the overall micro averages."""
    ranks = np.asarray(ranks)
    bucket = history_bucket(n_prior)
    out: dict[str, dict[str, Any]] = {}
    for b, (label, _, _) in enumerate(HISTORY_BUCKETS):
        sel = ranks[bucket == b]
        out[label] = {"n": int(len(sel)), **ranking_metrics(sel, ks)}
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


def action_after(probs: npt.ArrayLike, next_actions: npt.ArrayLike, last_actions: npt.ArrayLike) -> dict[str, dict[str, float]]:
    """Does a head follow what the user just did? Per previous action (the last context event's):
    n, the mean predicted P(purchase) and P(cart), and the observed purchase and cart rates."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(next_actions, dtype=np.int64)
    last = np.asarray(last_actions, dtype=np.int64)
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(ACTIONS):
        m = last == k
        if not m.any():
            continue
        out[name] = {"n": int(m.sum()),
                     **{f"p_{a}": float(p[m, ACTION_INDEX[a]].mean()) for a in ("purchase", "cart")},
                     **{f"obs_{a}": float((y[m] == ACTION_INDEX[a]).mean()) for a in ("purchase", "cart")}}
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
