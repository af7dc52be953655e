"""What the protocol needs from a model (`Ranker`), the four baselines (pop, repeat, item-kNN,
trending) and `find_peeking`, the check that a ranker never sees what it must predict."""
from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from models.evaluate.data import EvalData, FloatArray, IntArray
from models.schema import ACTIONS
from models.trending import DEFAULT_HALF_LIFE_S, TrendingCounts


BASELINE_NAMES: tuple[str, ...] = ("pop", "repeat", "item-knn", "trending")


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


class TrendingRanker:
    """trending: popularity decayed by event time (models/trending.py, half-life `half_life_s`),
    then train popularity. The decayed counts are over every remaining event of every user
    (train and test) strictly before the target's time: what a live worker has seen by then,
    never the target itself nor anything at or after its time. Same scores for events at the
    same time. Score = dense rank of the decayed count * |V| + popularity dense rank."""

    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s

    def fit(self, data: EvalData) -> None:
        _, self.pop_rank = _train_popularity(data)
        self._ts: FloatArray | None = None
        self._row: IntArray | None = None
        self._order: IntArray = np.zeros(0, dtype=np.int64)

    def _time_order(self, data: EvalData) -> IntArray:
        # find_peeking's altered copies share ts and row: reuse the sort, never the targets.
        if data.ts is not self._ts or data.row is not self._row:
            self._ts, self._row = data.ts, data.row
            self._order = np.lexsort((data.row, data.ts))
        return self._order

    def score(self, data: EvalData, event_idx: IntArray) -> FloatArray:
        order = self._time_order(data)
        ts_sorted, y_sorted = data.ts[order], data.y[order]
        when = data.ts[event_idx]
        out = np.empty((len(event_idx), data.n_V))
        state = TrendingCounts(data.n_V, self.half_life_s)
        done, last_t, row = 0, None, self.pop_rank
        for r in np.argsort(when, kind="stable"):  # one pass in time order per call
            t = float(when[r])
            if t != last_t:
                upto = int(np.searchsorted(ts_sorted, t, side="left"))  # strictly before t
                state.observe_many(y_sorted[done:upto], ts_sorted[done:upto])
                done, last_t = upto, t
                dense = np.unique(state.scores(t), return_inverse=True)[1].reshape(-1)
                row = dense * float(data.n_V) + self.pop_rank
            out[r] = row
        return out


def baseline_rankers(trending_half_life_s: float = DEFAULT_HALF_LIFE_S) -> dict[str, Ranker]:
    return {"pop": PopRanker(), "repeat": RepeatRanker(), "item-knn": ItemKNNRanker(),
            "trending": TrendingRanker(trending_half_life_s)}


def find_peeking(ranker: Ranker, data: EvalData, max_events: int = 50, seed: int = 0) -> IntArray:
    """Scored events whose scores change when the target event and everything after it (of the
    same user) is altered: a ranker that peeks at what it must predict shows up here. The
    ranker must be fitted; `max_events` scored events are sampled."""
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
