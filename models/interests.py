"""Interest profiles: a user's top categories, decayed by event time and blended with the model.

A profile keeps, per category, a *decayed count*: every event of the category adds 1, and
every count halves per `half_life_ms` of event time (default 3 days). Counts are stored as of
`ref_ts`, the newest event time observed, so a late event is simply added at its discounted
value 2^-((ref_ts - ts) / half_life): the profile does not depend on arrival order (until the
cap drops a category). At most `cap` categories (default 32) are kept; past it the one with
the smallest count is dropped.

`top` gives up to k [category_id, weight] pairs, heaviest first. Weights are a mixture of two
distributions over categories, so each lies in [0, 1] and all of them sum to at most 1:

    weight(c) = (1 - blend) * count(c) / sum of counts  +  blend * p_model(c)

the user's share of decayed activity in c, and the model's probability that the next event is
in c (softmax of SeqModel.category_logits; only its `MODEL_TOP` most likely categories are
passed, the rest count as 0). A user with no categorized event yet has no interests ([]),
whatever the model says: logs without categories give empty interests.

Category ids are kept as given (ints or strings, models/ids.py), so the stream echoes the
catalogue's own ids and the evaluation its int64 keys.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

Category = Union[int, str]

DAY_MS = 24 * 3600 * 1000
DEFAULT_HALF_LIFE_MS = 3 * DAY_MS
DEFAULT_CAP = 32
DEFAULT_BLEND = 0.3  # BENCHMARKS.md "Interest profiles": the top-1/top-5 hit rates by blend
DEFAULT_TOP = 5
MODEL_TOP = 16  # the model's most likely categories passed to `top`
# a published profile is superseded when some category's weight moves by more than this; 0.1
# sent a profile for 49% of taobao_users' events (the blended model term swings with the
# newest category), 0.2 for 17% (BENCHMARKS.md, "Interest profiles")
DEFAULT_PUBLISH_THRESHOLD = 0.2
_EPS = 1e-12  # counts below this (about 40 half-lives old) are dropped


@dataclass(frozen=True)
class InterestPolicy:
    """How the worker keeps and publishes profiles (Settings: interests_*, profiles_threshold)."""

    half_life_ms: int = DEFAULT_HALF_LIFE_MS
    cap: int = DEFAULT_CAP
    blend: float = DEFAULT_BLEND  # 0: the user's own history only (and no model call)
    k: int = DEFAULT_TOP
    publish_threshold: float = DEFAULT_PUBLISH_THRESHOLD


@dataclass
class InterestProfile:
    """Decayed category counts of one user, as of event time `ref_ts` (ms)."""

    ref_ts: int | None = None
    mass: dict[Category, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.mass)

    def observe(self, category: Category | None, ts_ms: int, half_life_ms: int = DEFAULT_HALF_LIFE_MS,
                cap: int = DEFAULT_CAP) -> None:
        """Count one event of `category` at event time `ts_ms`; None or -1 (no category) is ignored."""
        if category is None or category == -1:
            return
        if self.ref_ts is None:
            self.ref_ts = ts_ms
        if ts_ms > self.ref_ts:  # move the reference forward: every count decays
            factor = 0.5 ** ((ts_ms - self.ref_ts) / half_life_ms)
            self.mass = {c: m * factor for c, m in self.mass.items() if m * factor > _EPS}
            self.ref_ts = ts_ms
            add = 1.0
        else:  # a late (or same-time) event: its count is already partly decayed
            add = 0.5 ** ((self.ref_ts - ts_ms) / half_life_ms)
        self.mass[category] = self.mass.get(category, 0.0) + add
        while len(self.mass) > cap:
            del self.mass[min(self.mass, key=self.mass.__getitem__)]

    def count(self, category: Category, at_ts: int, half_life_ms: int = DEFAULT_HALF_LIFE_MS) -> float:
        """The decayed count of `category` at event time `at_ts` (>= ref_ts)."""
        if self.ref_ts is None:
            return 0.0
        return self.mass.get(category, 0.0) * 0.5 ** (max(at_ts - self.ref_ts, 0) / half_life_ms)

    def shares(self) -> dict[Category, float]:
        """Each category's share of the decayed counts (sums to 1; {} when empty)."""
        total = sum(self.mass.values())
        return {c: m / total for c, m in self.mass.items()} if total > 0 else {}

    def top(self, k: int = DEFAULT_TOP, model_category_probs: Mapping[Category, float] | None = None,
            blend: float = DEFAULT_BLEND) -> list[list]:
        """Up to k [category, weight] pairs, heaviest first (ties by the id's text, so int and
        string ids sort together), weights rounded to 6 digits. See the module docstring."""
        total = sum(self.mass.values())
        if total <= 0:
            return []
        if not model_category_probs or blend <= 0:
            mixed = {c: m / total for c, m in self.mass.items()}
        else:
            b = min(float(blend), 1.0)
            own_w = (1.0 - b) / total
            mixed = {c: m * own_w for c, m in self.mass.items()}
            for c, p in model_category_probs.items():
                if p > 0 and math.isfinite(p):
                    mixed[c] = mixed.get(c, 0.0) + b * p
        if len(mixed) > k:  # on every event: select before sorting; ties at the k-th weight kept
            kth = heapq.nlargest(k, mixed.values())[-1]
            mixed = {c: w for c, w in mixed.items() if w >= kth}
        best = sorted(mixed.items(), key=lambda cw: (-cw[1], str(cw[0])))[:k]
        return [[c, round(min(max(w, 0.0), 1.0), 6)] for c, w in best]

    # -- bytes: plain lists for msgpack (stream/state.py) --------------------------------------

    def to_wire(self) -> list[Any]:
        return [self.ref_ts, list(self.mass), [round(m, 9) for m in self.mass.values()]]

    @classmethod
    def from_wire(cls, wire: list[Any] | None) -> "InterestProfile":
        if not wire:
            return cls()
        ref_ts, cats, masses = wire
        return cls(ref_ts, dict(zip(cats, (float(m) for m in masses))))


def changed_materially(published: list[list] | None, current: list[list],
                       threshold: float = DEFAULT_PUBLISH_THRESHOLD) -> bool:
    """Whether `current` top interests should supersede the last `published` ones: the first
    non-empty ones do; after that, some category's weight moved by more than `threshold`, a
    category that entered or left the top k counting as moving from or to 0.

    Not "the top-k set changed": with the model blended in, the last places hold categories of
    weight ~0.01 that swap on most events, and that rule sent a profile for 61% of the events of
    taobao_users at 0.1 (this one 49%: BENCHMARKS.md, "Interest profiles")."""
    if published is None:
        return bool(current)
    before = {c: w for c, w in published}
    now = {c: w for c, w in current}
    return any(abs(now.get(c, 0.0) - before.get(c, 0.0)) > threshold for c in before.keys() | now.keys())
