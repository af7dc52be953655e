"""Interest profiles under the protocol: is the next event's category among the user's top-1 /
top-5 interests, computed from the events before it?

For every scored event with a category, the user's profile (models/interests.py: decayed counts
by event time) is built from exactly the context the rankers get (`EvalData.context`: the
user's earlier remaining events, train prefix and earlier test events), never from the event
itself. "decayed-count" is that profile alone (no model); a model with `category_top` (the GRU)
is blended in with the worker's rule and default blend. Like churn, this is measured once after
fitting: in online mode too, the model is the one fitted on the train split.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.evaluate.data import EvalData, IntArray
from models.interests import DEFAULT_BLEND, DEFAULT_HALF_LIFE_MS, MODEL_TOP, InterestProfile

BASELINE = "decayed-count"
TOPS = (1, 5)


def interest_hits(data: EvalData, idx: IntArray, model_top: list[dict] | None = None,
                  half_life_ms: int = DEFAULT_HALF_LIFE_MS, blend: float = DEFAULT_BLEND) -> np.ndarray:
    """[len(idx), len(TOPS)] bool: event idx[j]'s category in the top-k interests before it.
    `model_top[j]`: the model's {category: probability} after the context of idx[j]."""
    hits = np.zeros((len(idx), len(TOPS)), dtype=bool)
    order = np.argsort(idx, kind="stable")
    profile, user, done = InterestProfile(), -1, 0
    for j in order:  # one pass per user over its events, in sequence order
        i = int(idx[j])
        if data.user[i] != user:
            profile, user, done = InterestProfile(), int(data.user[i]), int(data.start[i])
        for e in range(done, i):
            profile.observe(int(data.category[e]), int(round(data.ts[e] * 1000)), half_life_ms)
        done = i
        top = [c for c, _ in profile.top(max(TOPS), model_top[j] if model_top else None, blend)]
        hits[j] = [int(data.category[i]) in top[:k] for k in TOPS]
    return hits


def _summary(hits: np.ndarray) -> dict[str, float]:
    return {f"top{k}": float(hits[:, c].mean()) if len(hits) else math.nan for c, k in enumerate(TOPS)}


def evaluate_interests(data: EvalData, rankers: dict[str, Any], *, include_baseline: bool = True,
                       half_life_ms: int = DEFAULT_HALF_LIFE_MS, blend: float = DEFAULT_BLEND,
                       chunk: int = 512) -> dict[str, Any] | None:
    """{"n", "half_life_h", "blend", "models": {name: {"top1", "top5"}}}; None for a log without
    categories. Models without `category_top(data, idx, k)` are left out."""
    idx = data.scored_idx
    idx = idx[data.category[idx] != -1]
    if len(idx) == 0:
        return None
    models: dict[str, dict[str, float]] = {}
    if include_baseline:
        models[BASELINE] = _summary(interest_hits(data, idx, None, half_life_ms))
    for name, rk in rankers.items():
        if not callable(getattr(rk, "category_top", None)):
            continue
        tops: list[dict] = []
        for s in range(0, len(idx), chunk):
            ids, probs = rk.category_top(data, idx[s:s + chunk], MODEL_TOP)
            tops += [dict(zip(i, p)) for i, p in zip(np.asarray(ids).tolist(), np.asarray(probs).tolist())]
        models[name] = _summary(interest_hits(data, idx, tops, half_life_ms, blend))
    return {"n": int(len(idx)), "half_life_h": half_life_ms / 3.6e6, "blend": blend, "models": models}
