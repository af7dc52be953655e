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

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from models.evaluate.action_lr import action_lr_probs
from models.evaluate.baselines import BASELINE_NAMES, Ranker, baseline_rankers
from models.evaluate.churn import DEFAULT_CHURN_HORIZON_S, evaluate_churn
from models.evaluate.data import EventTable, EvalData, FloatArray, IntArray, Mode, Target, build_eval_data
from models.evaluate.metrics import (KS, action_after, action_metrics, metrics_by_history, prior_events,
                                     ranking_metrics, ranks_of_targets)
from models.evaluate.interests import evaluate_interests
from models.schema import LogEvent
from models.trending import DEFAULT_HALF_LIFE_S


CURVE_KS: tuple[int, ...] = tuple(range(1, 21))
# Max number of float64 scores per chunk (chunk rows * |V|): 2**25 doubles = 256 MiB.
MAX_CHUNK_CELLS = 2**25


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
    trending_half_life_s: float = DEFAULT_HALF_LIFE_S,
) -> dict[str, Any]:
    """Evaluate rankers on prepared data. See `run_evaluation` for the result's shape.

    frozen: fit on train, score the scored events in index order. online: fit on train, then
    walk the remaining test events in time order in chunks of `chunk_size`: score the chunk's
    scored events, then call `learn(data, chunk)` (rankers without `learn` stay frozen). Within
    a chunk, weights are those learnt up to the previous chunk; the context is always exact.
    """
    if mode not in ("frozen", "online"):
        raise ValueError(f"mode must be 'frozen' or 'online', got {mode!r}")
    all_rankers: dict[str, Ranker] = dict(baseline_rankers(trending_half_life_s)) if include_baselines else {}
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
    # Interest profiles (issue 19): also once, after fitting
    interests = evaluate_interests(data, rankers, include_baseline=include_baselines)

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
    n_prior = prior_events(data.start, evaluated)
    result["by_history"] = {}
    for name in all_rankers:
        r = cat(ranks[name])
        result["models"][name] = ranking_metrics(r, ks)
        result["by_history"][name] = metrics_by_history(r, n_prior)
        curve[name] = [float((r <= k).mean()) if len(r) else math.nan for k in CURVE_KS]
    result["curve"] = {"K": list(CURVE_KS), "recall": curve}
    # Next action: the prior (train action frequencies) is the floor every head must beat;
    # action-LR (recent action counts and recency, models/evaluate/action_lr.py) the real bar.
    action: dict[str, Any] = {}
    if len(evaluated):
        last_actions = data.action[evaluated - 1]  # a scored event always has an earlier one
        heads = {"prior": np.tile(data.train_action_freq, (len(evaluated), 1))}
        lr_probs = action_lr_probs(data, evaluated) if include_baselines else None
        if lr_probs is not None:
            heads["action-LR"] = lr_probs
        heads.update({name: cat(parts) for name, parts in probs.items()})
        for name, p in heads.items():
            action[name] = action_metrics(p, next_actions)
            if name != "prior":
                action[name]["after"] = action_after(p, next_actions, last_actions)
    result["action"] = action
    if churn is not None:
        result["churn"] = churn
    if interests is not None:
        result["interests"] = interests
    return result


def run_evaluation(
    events_iterable: Iterable[LogEvent] | EventTable,
    target: Target = "item",
    rankers: dict[str, Ranker] | None = None,
    mode: Mode = "frozen",
    ks: Sequence[int] = KS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the protocol on a log. Baselines (pop, repeat, item-knn, trending) are always included.

    Returns {"target", "mode", "n", "V", "models": {name: {"R@1", "MRR@1", ..., "R@20",
    "MRR@20"}}} plus "by_history" ({name: {bucket: {"n", "R@20", "MRR@20"}}}, buckets "<=1", "2-3",
    ">3" of the target's user's earlier events in the filtered sequence: metrics.HISTORY_BUCKETS), "curve" (Recall@1..20 per model), "action" (next-action metrics, with the
    train-frequency "prior" and the "action-LR" baselines) and "churn" (ROC-AUC/PR-AUC at each user's last train
    event; "rf-logreg" baseline). Extra keyword arguments go to `evaluate_data`.
    """
    table = events_iterable if isinstance(events_iterable, EventTable) else EventTable.from_events(events_iterable)
    data = build_eval_data(table, target)
    return evaluate_data(data, rankers or {}, mode, ks, **kwargs)


_NO_AGG = {"n", "V", "target", "mode", "horizon_s", "calibration", "note", "after"}


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
        result["by_history"][name] = {b: _mean_std([r["by_history"][name][b] for r in seed_results])
                                      for b in seed_results[0]["by_history"][name]}
        curves = np.array([r["curve"]["recall"][name] for r in seed_results])
        result["curve"]["recall"][name] = curves.mean(axis=0).tolist()
        if name in seed_results[0].get("action", {}):
            result["action"][name] = _mean_std([r["action"][name] for r in seed_results])
        if name in seed_results[0].get("churn", {}).get("models", {}):
            result["churn"]["models"][name] = _mean_std([r["churn"]["models"][name] for r in seed_results])
        if name in seed_results[0].get("interests", {}).get("models", {}):
            result["interests"]["models"][name] = _mean_std([r["interests"]["models"][name] for r in seed_results])
    return result


def merge_single(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Put one model run's entries beside the baselines, model first."""
    merged = dict(base)
    merged["models"] = {**run["models"], **base["models"]}
    merged["by_history"] = {**run["by_history"], **base["by_history"]}
    merged["curve"] = {"K": base["curve"]["K"], "recall": {**run["curve"]["recall"], **base["curve"]["recall"]}}
    merged["action"] = {**base.get("action", {}), **{k: v for k, v in run.get("action", {}).items() if k != "prior"}}
    if "churn" in base:
        churn = dict(base["churn"])
        churn["models"] = {**base["churn"]["models"], **run.get("churn", {}).get("models", {})}
        merged["churn"] = churn
    if "interests" in base:
        merged["interests"] = {**base["interests"], "models": {
            **run.get("interests", {}).get("models", {}), **base["interests"]["models"]}}
    return merged


def evaluate_runs(table: EventTable, targets: Sequence[Target], modes: Sequence[Mode],
                  model: Callable[[int], Ranker] | None = None, *, fit: bool = True, seeds: int = 1,
                  chunk_size: int = 512,
                  churn_horizon_s: float | None = DEFAULT_CHURN_HORIZON_S,
                  trending_half_life_s: float = DEFAULT_HALF_LIFE_S) -> list[dict[str, Any]]:
    """One result per (target, mode), targets outermost: the baselines, and with `model` (seed ->
    Ranker; `fit`: fit it on the train split, else use it as it is) its runs for seeds
    0..`seeds`-1 beside them as "seqstream" (mean ± std when `seeds` > 1)."""
    results = []
    for target in targets:
        data = build_eval_data(table, target)
        for mode in modes:
            common = dict(chunk_size=chunk_size, churn_horizon_s=churn_horizon_s)
            base = evaluate_data(data, {}, mode, trending_half_life_s=trending_half_life_s, **common)
            if model is None:
                results.append(base)
                continue
            runs = []
            for seed in range(seeds):
                runs.append(evaluate_data(data, {"seqstream": model(seed)}, mode, include_baselines=False, fit=fit, **common))
            merged = aggregate_seeds(base, runs) if seeds > 1 else merge_single(base, runs[0])
            results.append(merged)
    return results
