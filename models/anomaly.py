"""Abnormal-behaviour detection in event time: bursts, bots, brushing and model surprise.

Pure and O(1) per user: `AnomalyStats` keeps a short window of the user's recent events (at most
`WINDOW` timestamps, items and actions), an EWMA of their within-session log inter-arrival time
fed only by gaps that have *left* the window, and not during an open burst or bot episode (so a
burst does not become its own baseline), an
EWMA mean/variance of the model's per-event NLL and one `alerted` flag per kind. `Population`
is the shared running aggregate ("far above the population's rate"). `observe` updates both with
one event and returns the alerts it raises: one per episode per kind; the flag re-arms when the
user's score falls back below the kind's re-arm level (the same idea as churn's `returned`).

Default thresholds (`AnomalyPolicy`; tuned on seeds that the benchmark does not report, see
BENCHMARKS.md "Abnormal behaviour"):

- burst: over the last `burst_gaps` gaps the mean gap is at least `burst_factor` (8) times
  shorter than both the user's own typical gap and the population's; re-arms below factor 3;
- bot: over the last `bot_gaps` gaps, a coefficient of variation <= 0.2 (score 1 - cv >= 0.8),
  a median gap under 2 s (faster than a person), >= 80% distinct items and no cart or purchase;
  re-arms when 1 - cv < 0.6 or a gate fails (16 log-normal human gaps reach cv 0.3 now and then);
- brushing: a fresh user (<= 64 events) with >= 4 carts/purchases of one item, 2+ of them
  purchases, and that item >= 50% of the window's events; re-arms when that item has < 2 conversions left in the window;
- surprise: z >= 4 of a short EWMA of the NLL against the user's own running NLL statistics
  (after >= 20 scored events); re-arms below z = 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

WINDOW = 32  # recent events kept per user
CART, PURCHASE = 1, 2  # action indices (models.schema.ACTIONS)
KINDS: tuple[str, ...] = ("burst", "bot", "brushing", "surprise")


@dataclass(frozen=True)
class AnomalyPolicy:
    session_gap_ms: int = 30 * 60_000  # longer gaps are between sessions: not a "rate"
    own_alpha: float = 0.1  # EWMA weight of the user's own log gap
    own_min_gaps: int = 8  # below this the user's own baseline is the population's
    burst_gaps: int = 16
    burst_factor: float = 8.0
    burst_rearm: float = 3.0
    bot_gaps: int = 16
    bot_regularity: float = 0.8  # 1 - coefficient of variation of the gaps
    bot_rearm: float = 0.6
    bot_max_median_gap_ms: int = 2_000
    bot_min_distinct: float = 0.8
    brushing_max_events: int = 64  # "fresh" user
    brushing_conversions: int = 4
    brushing_purchases: int = 2
    brushing_item_share: float = 0.5  # of the window's events: the account is about that item
    brushing_rearm: int = 2
    surprise_z: float = 4.0
    surprise_rearm: float = 1.0
    surprise_min_events: int = 20
    nll_alpha: float = 0.02  # the user's long-run NLL mean/variance
    nll_short_alpha: float = 0.25  # "recent events"


@dataclass
class Population:
    """Running aggregate over all users: EWMA of the within-session log gap (seconds)."""

    log_gap: float = math.log(25.0)  # a prior until enough gaps are seen
    gaps: int = 0
    alpha: float = 1e-3

    def observe_gap(self, gap_ms: int) -> None:
        a = max(self.alpha, 1.0 / (self.gaps + 1))  # plain mean at first, then EWMA
        self.log_gap += a * (math.log(max(gap_ms, 1) / 1000.0) - self.log_gap)
        self.gaps += 1

    def typical_gap_ms(self) -> float:
        return 1000.0 * math.exp(self.log_gap)


@dataclass
class AnomalyStats:
    """Per-user running statistics; plain lists and numbers, so they serialise as msgpack."""

    n: int = 0
    ts: list[int] = field(default_factory=list)  # recent timestamps (arrival order), <= WINDOW
    items: list[int | str] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    own_log_gap: float = 0.0  # EWMA of log seconds over gaps that left the window
    own_gaps: int = 0
    nll_mean: float = 0.0
    nll_var: float = 0.0
    nll_short: float = 0.0
    nll_n: int = 0
    alerted: list[str] = field(default_factory=list)  # kinds in an open episode

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AnomalyStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Alert:
    user_id: int | str
    kind: str
    score: float
    threshold: float
    window_events: int
    window_ms: int
    event_ts: int
    model_version: int
    evidence: dict

    def message(self) -> dict:
        """The `anomalies` topic's msgpack payload."""
        return {"type": "anomaly", "user_id": self.user_id, "kind": self.kind,
                "score": round(self.score, 4), "threshold": self.threshold,
                "window": {"events": self.window_events, "ms": self.window_ms},
                "event_ts": self.event_ts, "model_version": self.model_version,
                "evidence": {k: round(v, 4) if isinstance(v, float) else v
                             for k, v in self.evidence.items()}}


def _gaps(ts: list[int], k: int) -> list[int]:
    tail = ts[-(k + 1):]
    return [max(b - a, 0) for a, b in zip(tail, tail[1:])]


def _burst(st: AnomalyStats, pop: Population, p: AnomalyPolicy) -> tuple[float | None, dict]:
    # events in one millisecond are one client batch (or a clamped log), not a rate
    gaps = [g for g in _gaps(st.ts, WINDOW) if g > 0][-p.burst_gaps:]
    if len(gaps) < p.burst_gaps:
        return None, {}
    mean_gap = max(sum(gaps) / len(gaps), 1.0)
    pop_gap = pop.typical_gap_ms()
    own_gap = 1000.0 * math.exp(st.own_log_gap) if st.own_gaps >= p.own_min_gaps else pop_gap
    score = min(own_gap, pop_gap) / mean_gap
    return score, {"events_per_min": 60_000.0 / mean_gap, "own_events_per_min": 60_000.0 / own_gap,
                   "population_events_per_min": 60_000.0 / pop_gap}


def _bot(st: AnomalyStats, p: AnomalyPolicy) -> tuple[float | None, bool, dict]:
    """(regularity score, gates pass, evidence)."""
    gaps = [g for g in _gaps(st.ts, WINDOW) if g > 0][-p.bot_gaps:]  # as in _burst
    if len(gaps) < p.bot_gaps:
        return None, False, {}
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / max(mean, 1.0)
    median = sorted(gaps)[len(gaps) // 2]
    recent_items = st.items[-(p.bot_gaps + 1):]
    distinct = len(set(recent_items)) / len(recent_items)
    conversions = sum(a != 0 for a in st.actions[-(p.bot_gaps + 1):])
    gates = median <= p.bot_max_median_gap_ms and distinct >= p.bot_min_distinct and conversions == 0
    return 1.0 - cv, gates, {"interarrival_cv": cv, "median_gap_ms": median,
                             "distinct_items": distinct, "carts_purchases": conversions,
                             "events_per_min": 60_000.0 / max(mean, 1.0)}


def _brushing(st: AnomalyStats, p: AnomalyPolicy) -> tuple[int, int, dict]:
    """(conversions of the most converted item, its purchases, evidence)."""
    conv: dict[int | str, list[int]] = {}
    for item, a in zip(st.items, st.actions):
        if a in (CART, PURCHASE):
            c = conv.setdefault(item, [0, 0])
            c[0] += 1
            c[1] += a == PURCHASE
    if not conv:
        return 0, 0, {}
    item, (n, buys) = max(conv.items(), key=lambda kv: kv[1])
    share = sum(i == item for i in st.items) / len(st.items)
    return n, buys, {"item_id": item, "carts_purchases": n, "purchases": buys,
                     "item_share": share, "user_events": st.n}


def _update_nll(st: AnomalyStats, nll: float, p: AnomalyPolicy) -> tuple[float | None, dict]:
    """z of the short NLL average against the long-run one (before the long run learns it)."""
    z, evidence = None, {}
    st.nll_short = nll if st.nll_n == 0 else st.nll_short + p.nll_short_alpha * (nll - st.nll_short)
    if st.nll_n >= p.surprise_min_events:
        # the short EWMA's own spread under the user's normal NLL distribution
        sd = math.sqrt(max(st.nll_var, 1e-6) * p.nll_short_alpha / (2 - p.nll_short_alpha))
        z = (st.nll_short - st.nll_mean) / sd
        evidence = {"model_surprise": st.nll_short, "nll_mean": st.nll_mean,
                    "nll_std": math.sqrt(max(st.nll_var, 0.0)), "last_nll": nll}
    if st.nll_n == 0:
        st.nll_mean = nll
    else:
        a = max(p.nll_alpha, 1.0 / (st.nll_n + 1))
        d = nll - st.nll_mean
        st.nll_mean += a * d
        st.nll_var = (1 - a) * (st.nll_var + a * d * d)
    st.nll_n += 1
    return z, evidence


def _push(st: AnomalyStats, pop: Population, ts: int, item: int | str, action: int,
          p: AnomalyPolicy) -> None:
    # an open rate episode (burst, bot) teaches neither baseline: it would become the new normal
    learn = "burst" not in st.alerted and "bot" not in st.alerted
    if st.ts and learn:
        gap = ts - st.ts[-1]
        if 0 <= gap < p.session_gap_ms:
            pop.observe_gap(gap)
    st.ts.append(ts)
    st.items.append(item)
    st.actions.append(action)
    if len(st.ts) > WINDOW:
        # the oldest gap leaves the window: only now does it join the user's own baseline
        gap = st.ts[1] - st.ts[0]
        if learn and 0 <= gap < p.session_gap_ms:
            x = math.log(max(gap, 1) / 1000.0)
            a = max(p.own_alpha, 1.0 / (st.own_gaps + 1))
            st.own_log_gap = x if st.own_gaps == 0 else st.own_log_gap + a * (x - st.own_log_gap)
            st.own_gaps += 1
        del st.ts[0], st.items[0], st.actions[0]
    st.n += 1


def observe(st: AnomalyStats, user_id: int | str, ts: int, item: int | str, action: int,
            nll: float | None = None, population: Population | None = None,
            policy: AnomalyPolicy = AnomalyPolicy(), model_version: int = 0) -> list[Alert]:
    """Apply one event (action: index into ACTIONS; nll: the model's -log p(item) before it)."""
    p, pop = policy, population if population is not None else Population()
    _push(st, pop, ts, item, action, p)
    window_ms = st.ts[-1] - st.ts[0]
    checks: list[tuple[str, bool, bool, float, float, dict]] = []  # kind, hot, calm, score, thr, ev

    bot_score, bot_gates, bot_ev = _bot(st, p)
    bot_hot = bot_score is not None and bot_gates and bot_score >= p.bot_regularity
    if bot_score is not None:
        checks.append(("bot", bot_hot, not bot_gates or bot_score < p.bot_rearm, bot_score,
                       p.bot_regularity, bot_ev))
    burst_score, burst_ev = _burst(st, pop, p)
    if burst_score is not None:
        # a bot is fast too: its alert says more, so it takes precedence over a burst
        hot = burst_score >= p.burst_factor and not bot_hot and "bot" not in st.alerted
        checks.append(("burst", hot, burst_score < p.burst_rearm, burst_score, p.burst_factor,
                       burst_ev))
    n_conv, n_buys, brush_ev = _brushing(st, p)
    hot = (st.n <= p.brushing_max_events and n_conv >= p.brushing_conversions
           and n_buys >= p.brushing_purchases
           and brush_ev.get("item_share", 0.0) >= p.brushing_item_share)
    checks.append(("brushing", hot, n_conv < p.brushing_rearm, float(n_conv),
                   float(p.brushing_conversions), brush_ev))
    if nll is not None:
        z, nll_ev = _update_nll(st, float(nll), p)
        if z is not None:
            checks.append(("surprise", z >= p.surprise_z, z < p.surprise_rearm, z, p.surprise_z,
                           nll_ev))

    alerts = []
    for kind, hot, calm, score, threshold, evidence in checks:
        if kind in st.alerted:
            if calm:
                st.alerted.remove(kind)  # back to normal: the next episode alerts again
        elif hot:
            st.alerted.append(kind)
            alerts.append(Alert(user_id, kind, float(score), threshold, len(st.ts), window_ms,
                                ts, model_version, evidence))
    return alerts
