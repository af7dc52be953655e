"""A deterministic, realistic synthetic behaviour log: the project's own data for tests and demos.

`generate(GeneratorConfig(...))` returns a `SyntheticLog`: columns (numpy) sorted by event time
then user, plus the ground truth (churners, their last event time, the drift time and the
trending items). Everything is drawn from one `numpy.random.Generator` seeded by `cfg.seed`, and
all work is vectorised over events, so 1M events take a few seconds.

What makes it realistic (shaped after Taobao UserBehavior):

- users have latent category interests: a handful of favourite categories (picked by category
  popularity) with Dirichlet weights, plus some exploration of any category;
- item popularity is Zipf within each category, and category popularity is Zipf too;
- user activity is heavy-tailed (log-normal), events come in sessions (bursts seconds apart)
  and sessions are hours or days apart;
- a view -> cart -> purchase funnel: carts are of items viewed earlier in the same session,
  purchases of items carted (or else viewed) earlier in the session; the overall mix is about
  92% click, 5.5% cart, 2.3% purchase (Taobao's 89% pv + 3% fav count as clicks here);
- actions have dynamics, so a next-action model has something to learn: in the few events
  after a cart a purchase (of the carted item) is 5x likelier, and a long run of views without
  a cart makes carts and purchases rarer the longer it gets;
- users revisit items they viewed before (repeat behaviour);
- churners: a fraction of users stop for good at a random time well before the end, and fade
  out first (their sessions thin out towards their last one, as disengagement looks in real
  logs); everybody else stays active until the last days of the timeline;
- drift (optional): at `drift_at` of the timeline a set of brand-new items becomes trending and
  users' category interests shift.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.schema import ACTIONS, LogEvent

DAY_MS = 86_400_000
DEFAULT_START_TS_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: fixed, so output is reproducible

CLICK, CART, PURCHASE = 0, 1, 2
# Bumped whenever generated behaviour changes, so that caches of models trained on generated
# logs (the demo's) are retrained. 2: actions with dynamics (a cart raises the purchase chance).
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 1_000
    events: int = 100_000  # total; exact unless fewer than users
    items: int = 10_000
    categories: int = 200
    seed: int = 0
    start_ts_ms: int = DEFAULT_START_TS_MS
    days: float = 30.0
    churn_fraction: float = 0.2
    churn_fade: float = 2.5  # churners' sessions sit at lifetime * U**fade: 1 = no fade-out
    drift: bool = False
    drift_at: float = 0.6  # fraction of the timeline where drift starts
    drift_new_items: int = 0  # trending new items at drift; 0: 1% of items (at least 20)
    drift_trending_share: float = 0.25  # share of fresh item draws that go to trending items
    drift_interest_shift: float = 0.6  # share of category draws from the users' new interests
    # Behaviour shape.
    favourite_categories: int = 6
    interest_alpha: float = 0.5  # Dirichlet concentration over a user's favourites
    explore: float = 0.1  # share of draws from any category (by category popularity)
    zipf_items: float = 1.1  # Zipf exponent of item popularity within a category
    zipf_categories: float = 0.9
    activity_sigma: float = 1.0  # log-normal spread of events per user
    session_events: float = 8.0  # mean events per session
    gap_s: float = 25.0  # median seconds between events within a session
    repeat: float = 0.25  # share of views that revisit an item the user viewed before
    cart_share: float = 0.055
    purchase_share: float = 0.023
    purchase_from_cart: float = 0.6  # purchases of a carted item when the session has one
    # Action dynamics within a session: for `cart_boost_events` events after a cart a purchase
    # is `cart_purchase_boost` times likelier (of a carted item); past `browse_run` views in a
    # row without a cart or purchase, both chances fall as browse_run / run. 1 and 0: i.i.d.
    cart_purchase_boost: float = 5.0
    cart_boost_events: int = 3
    browse_run: int = 10

    def validate(self) -> GeneratorConfig:
        if self.users < 1:
            raise ValueError(f"users must be at least 1, got {self.users}")
        if self.events < self.users:
            raise ValueError(f"events ({self.events}) must be at least users ({self.users})")
        if self.categories < 1 or self.items < self.categories:
            raise ValueError(f"need 1 <= categories <= items, got {self.categories} categories "
                             f"and {self.items} items")
        if self.days <= 0:
            raise ValueError(f"days must be positive, got {self.days}")
        if not 0 <= self.churn_fraction < 1:
            raise ValueError(f"churn_fraction must be in [0, 1), got {self.churn_fraction}")
        if self.churn_fade < 1:
            raise ValueError(f"churn_fade must be at least 1, got {self.churn_fade}")
        if not 0 < self.drift_at < 1:
            raise ValueError(f"drift_at must be in (0, 1), got {self.drift_at}")
        if self.cart_share + self.purchase_share >= 0.5:
            raise ValueError("cart_share + purchase_share must stay below 0.5")
        if self.cart_purchase_boost < 1 or self.cart_boost_events < 0 or self.browse_run < 0:
            raise ValueError("cart_purchase_boost must be >= 1, cart_boost_events and browse_run >= 0")
        if self.session_events < 1:
            raise ValueError(f"session_events must be at least 1, got {self.session_events}")
        return self


@dataclass
class SyntheticLog:
    """Columns of equal length, sorted by (ts_ms, user_id), and the ground truth."""

    user_id: np.ndarray  # int64
    item_id: np.ndarray  # int64
    action: np.ndarray  # int8 index into ACTIONS
    ts_ms: np.ndarray  # int64
    category_id: np.ndarray  # int64
    session_id: np.ndarray  # int64
    config: GeneratorConfig
    churners: set[int] = field(default_factory=set)
    churn_ts: dict[int, int] = field(default_factory=dict)  # churner -> ts of their last event
    drift_ts: int | None = None
    trending_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    anomalies: dict | None = None  # injected abnormal users (models/synthetic_anomalies.py)

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def events(self, start: int = 0, stop: int | None = None) -> Iterator[LogEvent]:
        """LogEvents in time order; `row` is the index in this log."""
        stop = len(self) if stop is None else min(stop, len(self))
        chunk = 65_536  # tolist() per chunk: fast without materialising 1M objects at once
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            cols = zip(self.user_id[lo:hi].tolist(), self.item_id[lo:hi].tolist(),
                       self.action[lo:hi].tolist(), self.ts_ms[lo:hi].tolist(),
                       self.category_id[lo:hi].tolist(), self.session_id[lo:hi].tolist())
            for i, (u, it, a, ts, c, s) in enumerate(cols, start=lo):
                yield LogEvent(u, it, ACTIONS[a], ts, c, s, i)

    def __iter__(self) -> Iterator[LogEvent]:
        return self.events()

    def truth(self) -> dict:
        """The ground truth as JSON-ready data (the CLI's FILE.truth.json)."""
        truth = {
            "config": asdict(self.config),
            "events": len(self),
            "users": int(np.unique(self.user_id).shape[0]),
            "churners": sorted(self.churners),
            "churn_ts": {str(u): ts for u, ts in sorted(self.churn_ts.items())},
            "drift_ts": self.drift_ts,
            "trending_items": [int(x) for x in self.trending_items],
            "end_ts": int(self.config.start_ts_ms + self.config.days * DAY_MS),
        }
        if self.anomalies is not None:  # absent without --anomalies: the same bytes as before
            truth["anomalies"] = self.anomalies
        return truth

    def write_truth(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.truth(), indent=1) + "\n", encoding="utf-8")


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n things, in a random order (so ids do not reveal popularity)."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return rng.permutation(w)


def _ranks_in_group(group_start: np.ndarray, n: int) -> np.ndarray:
    """0-based position of each element within its contiguous group (group_start: bool mask)."""
    idx = np.arange(n)
    starts = np.maximum.accumulate(np.where(group_start, idx, 0))
    return idx - starts


def _sample_categorical_rows(cum: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per event, the slot of a row-wise categorical (cum: rows x K cumulative, last col = 1)."""
    return np.minimum((cum[rows] < u[:, None]).sum(axis=1), cum.shape[1] - 1)


def _simulate_actions(first: np.ndarray, length: np.ndarray, u: np.ndarray, p_cart: float,
                      p_buy: float, cfg: GeneratorConfig) -> tuple[np.ndarray, float, float]:
    """One pass of the session dynamics with base chances p_cart, p_buy: the actions, and the
    expected cart and purchase counts along the path (for calibrating the base chances).
    Sessions are sorted longest first, so the sessions still running at step j are a prefix."""
    order = np.argsort(-length, kind="stable")
    first, length = first[order], length[order]
    action = np.full(u.shape[0], CLICK, np.int8)
    since_cart = np.full(len(first), np.iinfo(np.int64).max // 2)  # events since the last cart
    run = np.ones(len(first))  # views in a row (the session's first event is one)
    e_cart = e_buy = 0.0
    R = float(cfg.browse_run)
    for j in range(1, int(length.max(initial=1))):
        m = int(np.searchsorted(-length, -j, side="left"))  # sessions longer than j
        ev = first[:m] + j
        r, s = run[:m], since_cart[:m]
        damp = np.minimum(1.0, R / np.maximum(r, 1.0)) if R > 0 else np.ones(m)
        pc = np.minimum(p_cart * damp, 0.45)
        pb = np.minimum(p_buy * damp * np.where(s <= cfg.cart_boost_events, cfg.cart_purchase_boost, 1.0), 0.5)
        uu = u[ev]
        a = np.where(uu < pc, CART, np.where(uu < pc + pb, PURCHASE, CLICK)).astype(np.int8)
        action[ev] = a
        since_cart[:m] = np.where(a == CART, 1, s + 1)
        run[:m] = np.where(a == CLICK, r + 1, 0)
        e_cart += float(np.sum(pc))
        e_buy += float(np.sum(pb))
    return action, e_cart, e_buy


def _session_actions(first: np.ndarray, length: np.ndarray, u: np.ndarray, cfg: GeneratorConfig) -> np.ndarray:
    """Actions with the session dynamics (GeneratorConfig: cart boost, browsing damp), their
    base chances rescaled a few times so that the expected mix stays cart_share / purchase_share
    (the dynamics alone would shift it). Deterministic: the same uniforms `u` every pass."""
    n = u.shape[0]
    inner_share = max(1.0 - len(first) / max(n, 1), 1e-9)
    p_cart, p_buy = cfg.cart_share / inner_share, cfg.purchase_share / inner_share
    for _ in range(3):
        _, e_cart, e_buy = _simulate_actions(first, length, u, p_cart, p_buy, cfg)
        if e_cart <= 0 or e_buy <= 0:
            break
        p_cart *= cfg.cart_share * n / e_cart
        p_buy *= cfg.purchase_share * n / e_buy
    return _simulate_actions(first, length, u, p_cart, p_buy, cfg)[0]


def generate(cfg: GeneratorConfig) -> SyntheticLog:
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    n_users, n_events, n_items, n_cats = cfg.users, cfg.events, cfg.items, cfg.categories
    span_ms = int(cfg.days * DAY_MS)

    # ---- catalogue: items in categories, Zipf within each category -----------------------------
    cat_pop = _zipf_weights(n_cats, cfg.zipf_categories, rng)
    cat_pop /= cat_pop.sum()
    # Every category gets at least one item; the rest follow category popularity (flattened so
    # that niche categories still have a real catalogue).
    share = np.sqrt(cat_pop)
    sizes = 1 + rng.multinomial(n_items - n_cats, share / share.sum())
    cat_of_slot = np.repeat(np.arange(n_cats), sizes)  # item slots grouped by category
    slot_start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(n_items) - slot_start[cat_of_slot]
    weight = 1.0 / (rank + 1.0) ** cfg.zipf_items
    # Shuffle popularity within each category: add a random key and sort inside the group.
    order = np.lexsort((rng.random(n_items), cat_of_slot))
    weight = weight[order]
    # Global CDF where category c spans [c, c+1): an item of category c is searchsorted(c + u).
    norm = weight / np.bincount(cat_of_slot, weights=weight)[cat_of_slot]
    item_cdf = np.cumsum(norm)
    item_cdf[np.cumsum(sizes) - 1] = np.arange(1, n_cats + 1)  # exact group ends (float drift)
    item_id_of_slot = rng.permutation(n_items).astype(np.int64) + 1  # ids 1..items, shuffled

    def draw_items(cats: np.ndarray) -> np.ndarray:
        u = rng.random(cats.shape[0])
        slots = np.searchsorted(item_cdf, cats + u, side="right")
        return np.minimum(slots, n_items - 1)

    # ---- users: activity, lifetime, churn ------------------------------------------------------
    activity = rng.lognormal(0.0, cfg.activity_sigma, n_users)  # events per unit of lifetime
    n_churn = int(round(cfg.churn_fraction * n_users))
    churner = np.zeros(n_users, bool)
    churner[rng.choice(n_users, n_churn, replace=False)] = True
    first = rng.uniform(0.0, 0.3, n_users)  # users arrive during the first 30% of the timeline
    # Churners stop for good between 30% and 75% of the timeline (well before the end).
    last = np.where(churner, rng.uniform(np.maximum(first + 0.1, 0.3), 0.75), 1.0)
    # A user's event count is their rate times their lifetime: leaving early means fewer events.
    weight = activity * (last - first)
    per_user = 1 + rng.multinomial(n_events - n_users, weight / weight.sum())
    first_ms = (first * span_ms).astype(np.int64)
    last_ms = (last * span_ms).astype(np.int64)

    # ---- events of each user, grouped by user (then time) --------------------------------------
    user = np.repeat(np.arange(n_users), per_user)
    user_first = np.zeros(n_events, bool)
    user_first[np.concatenate(([0], np.cumsum(per_user)[:-1]))] = True
    new_session = user_first | (rng.random(n_events) < 1.0 / cfg.session_events)
    session = np.cumsum(new_session) - 1  # global session index, grouped by user
    n_sessions = int(session[-1]) + 1
    sess_user = user[new_session]
    # Session starts: uniform over the user's lifetime (1h of margin before its end), sorted.
    lo = first_ms[sess_user]
    hi = np.maximum(lo + 1, last_ms[sess_user] - 3_600_000)
    # Churners fade out: U**fade puts their sessions closer together early in their lifetime
    # and further apart towards its end (at the end, 1/fade of the mean session rate).
    u = rng.random(n_sessions)
    u = np.where(churner[sess_user], u ** cfg.churn_fade, u)
    starts = lo + (u * (hi - lo)).astype(np.int64)
    starts = starts[np.lexsort((starts, sess_user))]
    # A loyal user's last session falls in the final 7% of the timeline, so that "silent" means
    # churned in the ground truth.
    last_sess = np.r_[sess_user[1:] != sess_user[:-1], True]
    stay = last_sess & ~churner[sess_user]
    late_lo = np.maximum(int(0.93 * span_ms), starts[np.maximum(np.flatnonzero(stay) - 1, 0)])
    late_lo = np.where(user_first[new_session][stay], int(0.93 * span_ms), late_lo)
    late_hi = span_ms - 3_600_000
    starts[stay] = late_lo + (rng.random(int(stay.sum())) * np.maximum(late_hi - late_lo, 1)).astype(np.int64)
    # Within a session: log-normal gaps around cfg.gap_s seconds.
    gaps = (rng.lognormal(np.log(cfg.gap_s), 1.0, n_events) * 1000).astype(np.int64)
    gaps[new_session] = 0
    pos_in_session = _ranks_in_group(new_session, n_events)
    within = np.cumsum(gaps)
    within -= within[np.flatnonzero(new_session)][session]
    rel = np.minimum(starts[session] + within, span_ms - 1)
    # Monotone per user even if two sessions overlap: running max within each user.
    big = np.int64(span_ms + 1)
    rel = np.maximum.accumulate(rel + user.astype(np.int64) * big) - user.astype(np.int64) * big

    drift_rel = int(cfg.drift_at * span_ms) if cfg.drift else None
    after = (rel >= drift_rel) if drift_rel is not None else np.zeros(n_events, bool)

    # ---- actions: the funnel; a session's first event is always a view -------------------------
    u = rng.random(n_events)
    sess_first = np.flatnonzero(new_session)
    action = _session_actions(sess_first, np.diff(np.r_[sess_first, n_events]), u, cfg)

    # ---- which item: a fresh draw, or a reference to an earlier event ---------------------------
    idx = np.arange(n_events)
    is_click = action == CLICK
    last_click = np.maximum.accumulate(np.where(is_click, idx, -1))  # at or before i
    sess_start_idx = np.flatnonzero(new_session)[session]
    user_start_idx = np.flatnonzero(user_first)[user]
    ref = idx.copy()
    # Carts: an item viewed earlier in the session (a random earlier view; recent ones likelier).
    back = sess_start_idx + (np.sqrt(rng.random(n_events)) * pos_in_session).astype(np.int64)
    earlier_view = last_click[np.maximum(back, 0)]
    ok = earlier_view >= sess_start_idx
    carts = action == CART
    ref[carts] = np.where(ok[carts], earlier_view[carts], idx[carts])
    # Purchases: a carted item of this session if any (mostly; always just after a cart), else
    # a viewed one.
    last_cart = np.maximum.accumulate(np.where(carts, idx, -1))
    prev_cart = np.r_[-1, last_cart[:-1]]
    buys = action == PURCHASE
    just_carted = idx - prev_cart <= cfg.cart_boost_events
    use_cart = (prev_cart >= sess_start_idx) & ((rng.random(n_events) < cfg.purchase_from_cart) | just_carted)
    buy_ref = np.where(use_cart, np.maximum(prev_cart, 0), earlier_view)
    buy_ok = use_cart | ok
    ref[buys] = np.where(buy_ok[buys], buy_ref[buys], idx[buys])
    # A cart/purchase without any earlier view in its session becomes a view (rare).
    action[(carts | buys) & (ref == idx)] = CLICK
    is_click = action == CLICK
    # Repeat views: an item this user viewed before (any earlier event, any session).
    pos_in_user = idx - user_start_idx
    rep = is_click & (pos_in_user > 0) & (rng.random(n_events) < cfg.repeat)
    ref[rep] = user_start_idx[rep] + (rng.random(int(rep.sum())) * pos_in_user[rep]).astype(np.int64)
    # Resolve chains (a repeat of a cart of a repeat...) by pointer jumping: O(N log depth).
    while True:
        nxt = ref[ref]
        if np.array_equal(nxt, ref):
            break
        ref = nxt
    fresh = np.flatnonzero(ref == idx)

    # Fresh draws: category from the user's interests (shifted after drift), Zipf item inside.
    k = min(cfg.favourite_categories, n_cats)
    fav = rng.choice(n_cats, size=(n_users, k), p=cat_pop)
    fav_w = rng.dirichlet(np.full(k, cfg.interest_alpha), size=n_users)
    fav_cum = np.cumsum(fav_w, axis=1)
    fav_cum[:, -1] = 1.0
    fu = user[fresh]
    fcat = fav[fu, _sample_categorical_rows(fav_cum, fu, rng.random(fresh.shape[0]))]
    explore = rng.random(fresh.shape[0]) < cfg.explore
    fcat[explore] = rng.choice(n_cats, size=int(explore.sum()), p=cat_pop)
    trending = np.zeros(0, np.int64)
    trend_cat = np.zeros(0, np.int64)
    f_after = after[fresh]
    if cfg.drift:
        # New interests: favourites drawn from a reshuffled category popularity.
        pop2 = rng.permutation(cat_pop)
        fav2 = rng.choice(n_cats, size=(n_users, k), p=pop2)
        fav2_cum = np.cumsum(rng.dirichlet(np.full(k, cfg.interest_alpha), size=n_users), axis=1)
        fav2_cum[:, -1] = 1.0
        shift = f_after & (rng.random(fresh.shape[0]) < cfg.drift_interest_shift)
        su = fu[shift]
        fcat[shift] = fav2[su, _sample_categorical_rows(fav2_cum, su, rng.random(su.shape[0]))]
    fslot = draw_items(fcat)
    fitem = item_id_of_slot[fslot]
    if cfg.drift:
        n_new = cfg.drift_new_items or max(20, n_items // 100)
        trending = np.arange(n_items + 1, n_items + 1 + n_new, dtype=np.int64)  # never seen before
        trend_cat = rng.choice(n_cats, size=n_new, p=cat_pop)
        tw = _zipf_weights(n_new, 1.0, rng)
        hot = f_after & (rng.random(fresh.shape[0]) < cfg.drift_trending_share)
        pick = rng.choice(n_new, size=int(hot.sum()), p=tw / tw.sum())
        fitem[hot] = trending[pick]
        fcat[hot] = trend_cat[pick]
    item_all = np.zeros(n_events, np.int64)
    cat_all = np.zeros(n_events, np.int64)
    item_all[fresh] = fitem
    cat_all[fresh] = fcat
    item_all = item_all[ref]
    cat_all = cat_all[ref] + 1  # category ids 1..categories

    # ---- global order: by event time, then user, then the user's own order ---------------------
    ts = cfg.start_ts_ms + rel
    user_ids = user.astype(np.int64) + 1  # user ids 1..users
    order = np.lexsort((idx, user_ids, ts))
    log = SyntheticLog(
        user_id=user_ids[order],
        item_id=item_all[order],
        action=action[order],
        ts_ms=ts[order],
        category_id=cat_all[order],
        session_id=(session.astype(np.int64) + 1)[order],
        config=cfg,
        drift_ts=(cfg.start_ts_ms + drift_rel) if drift_rel is not None else None,
        trending_items=trending,
    )
    # Ground truth: churners and the time of their last event (events are sorted per user).
    user_last = np.flatnonzero(np.r_[user[1:] != user[:-1], True])
    churn_users = np.flatnonzero(churner)
    log.churners = {int(u) + 1 for u in churn_users}
    log.churn_ts = {int(u) + 1: int(ts[user_last[u]]) for u in churn_users}
    return log
