"""Labelled abnormal users injected into a synthetic log (`seqstream generate --anomalies N`).

N users of each kind, drawn from their own random stream (seeded by the log's seed), so the
normal part of the log is byte-for-byte the log without anomalies:

- bot: a fresh user clicking at a regular sub-second pace (period 0.3-0.9 s, 5% jitter) through
  60-300 distinct catalogue items, one session, never a cart or a purchase;
- brushing: a fresh user who orders one item 2-5 times (click, cart, purchase, at a person's
  pace), with 0-4 views of popular items mixed in; brushing users share a few target items, as
  a seller's hired accounts would;
- burst: an existing user (>= 40 events) who at a random one of their later events suddenly
  emits 40-80 events at 10-30 times the population's within-session rate, irregularly, over
  items they viewed before and popular ones, with a few carts.

The labels go to the truth file: `anomalies.users` (user -> kind) and `anomalies.episodes`
(user, kind, start_ts, end_ts, item_id for brushing).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.synthetic import CART, CLICK, PURCHASE, SyntheticLog

KIND_SEED = 0x5EED_A0  # mixed with the log's seed: a stream apart from the generator's


def _gaps_ms(rng: np.random.Generator, median_s: float, sigma: float, n: int) -> np.ndarray:
    return np.maximum((rng.lognormal(np.log(median_s), sigma, n) * 1000).astype(np.int64), 1)


def inject_anomalies(log: SyntheticLog, n: int) -> SyntheticLog:
    """A new log with n abnormal users of each kind added (n = 0: the log itself)."""
    if n <= 0:
        return log
    cfg = log.config
    rng = np.random.default_rng([cfg.seed, KIND_SEED])
    start, end = int(log.ts_ms.min()), int(log.ts_ms.max())
    items, first = np.unique(log.item_id, return_index=True)
    cat_of = dict(zip(items.tolist(), log.category_id[first].tolist()))
    counts = np.bincount(np.searchsorted(items, log.item_id), minlength=items.shape[0])
    popular = items[np.argsort(-counts)[: max(50, items.shape[0] // 20)]]
    next_user = int(log.user_id.max()) + 1
    next_session = int(log.session_id.max()) + 1
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "action", "ts", "session")}
    users: dict[str, str] = {}
    episodes: list[dict] = []

    def add(user: int, item: np.ndarray, action: np.ndarray, ts: np.ndarray, session: np.ndarray,
            kind: str, **extra: int) -> None:
        cols["user"].append(np.full(ts.shape[0], user, np.int64))
        cols["item"].append(item.astype(np.int64))
        cols["action"].append(action.astype(np.int8))
        cols["ts"].append(ts.astype(np.int64))
        cols["session"].append(session.astype(np.int64))
        users[str(user)] = kind
        episodes.append({"user_id": user, "kind": kind, "start_ts": int(ts.min()),
                         "end_ts": int(ts.max()), **extra})

    for _ in range(n):  # bots
        k = int(rng.integers(60, 301))
        period = rng.uniform(300, 900)
        gaps = np.maximum(period * (1 + 0.05 * rng.uniform(-1, 1, k)), 1).astype(np.int64)
        gaps[0] = 0
        t0 = int(rng.integers(start, max(end - int(gaps.sum()), start + 1)))
        add(next_user, rng.choice(items, k, replace=False), np.full(k, CLICK), t0 + np.cumsum(gaps),
            np.full(k, next_session), "bot")
        next_user += 1
        next_session += 1

    targets = rng.choice(items, max(1, n // 5), replace=False)
    for _ in range(n):  # brushing
        orders = int(rng.integers(2, 6))
        item = int(rng.choice(targets))
        # the orders, with 0-4 views of popular items mixed in to look like a shopper
        seq_item = np.full(3 * orders, item)
        seq_action = np.tile([CLICK, CART, PURCHASE], orders)
        for _ in range(int(rng.integers(0, 5))):
            at = int(rng.integers(0, seq_item.shape[0] + 1))
            seq_item = np.insert(seq_item, at, rng.choice(popular))
            seq_action = np.insert(seq_action, at, CLICK)
        k = seq_item.shape[0]
        gaps = _gaps_ms(rng, 20.0, 0.7, k)
        gaps[0] = 0
        t0 = int(rng.integers(start, max(end - int(gaps.sum()), start + 1)))
        add(next_user, seq_item, seq_action, t0 + np.cumsum(gaps), np.full(k, next_session),
            "brushing", item_id=item)
        next_user += 1
        next_session += 1

    per_user = np.bincount(log.user_id)
    eligible = np.flatnonzero(per_user >= 40)
    for user in rng.choice(eligible, min(n, eligible.shape[0]), replace=False).tolist():
        mine = np.flatnonzero(log.user_id == user)
        at = mine[int(rng.integers(mine.shape[0] // 2, mine.shape[0]))]  # in their later life
        k = int(rng.integers(40, 81))
        speedup = rng.uniform(10, 30)
        gaps = _gaps_ms(rng, cfg.gap_s / speedup, 0.6, k)
        seen = log.item_id[mine[mine <= at]]
        pick = np.where(rng.random(k) < 0.5, rng.choice(seen, k), rng.choice(popular, k))
        action = np.where(rng.random(k) < 0.05, CART, CLICK)
        add(int(user), pick, action, int(log.ts_ms[at]) + np.cumsum(gaps),
            np.full(k, int(log.session_id[at])), "burst")

    user = np.concatenate([log.user_id, *cols["user"]])
    item = np.concatenate([log.item_id, *cols["item"]])
    ts = np.concatenate([log.ts_ms, *cols["ts"]])
    idx = np.arange(ts.shape[0])  # keeps the original rows' order among equal (ts, user)
    order = np.lexsort((idx, user, ts))
    category = np.array([cat_of[i] for i in item.tolist()], np.int64)
    return replace(
        log, user_id=user[order], item_id=item[order],
        action=np.concatenate([log.action, *cols["action"]])[order], ts_ms=ts[order],
        category_id=category[order],
        session_id=np.concatenate([log.session_id, *cols["session"]])[order],
        anomalies={"per_kind": n, "users": users, "episodes": episodes})
