"""The abnormal-behaviour detector: each kind fires once per episode and re-arms after it."""
from __future__ import annotations

import math
import random

import msgpack
import pytest

from models.anomaly import WINDOW, AnomalyPolicy, AnomalyStats, Population, observe

pytestmark = pytest.mark.unit

T0 = 1_704_067_200_000


def _run(events, st=None, pop=None, policy=AnomalyPolicy(), user=1):
    """events: (ts, item, action[, nll]); the alerts with the index of the event that raised them."""
    st = st if st is not None else AnomalyStats()
    pop = pop if pop is not None else Population()
    out = []
    for i, ev in enumerate(events):
        ts, item, action = ev[:3]
        nll = ev[3] if len(ev) > 3 else None
        out += [(i, a) for a in observe(st, user, ts, item, action, nll, pop, policy)]
    return out, st


def _normal(rng: random.Random, n: int, t: int, gap_s: float = 25.0, item0: int = 0):
    """A person: log-normal gaps around gap_s inside sessions, sessions hours apart, some carts."""
    out = []
    for i in range(n):
        t += int(1000 * rng.lognormvariate(math.log(gap_s), 1.0)) if i % 8 else 4 * 3600_000
        action = 1 if rng.random() < 0.05 else 0
        out.append((t, item0 + rng.randrange(200), action))
    return out


def _fast(rng: random.Random, t: int, n: int = 60):
    """A burst: ~1.5 s apart but irregular (log-normal), so not a bot."""
    out = []
    for _ in range(n):
        t += int(1000 * rng.lognormvariate(math.log(1.5), 0.6))
        out.append((t, rng.randrange(200), 0))
    return out


def _kinds(alerts):
    return [a.kind for _, a in alerts]


def test_normal_users_raise_nothing():
    rng = random.Random(0)
    for user in range(30):
        alerts, _ = _run(_normal(rng, 300, T0), user=user)
        assert alerts == []


def test_burst_alerts_once_per_episode_and_rearms():
    rng = random.Random(1)
    ev = _normal(rng, 80, T0)
    burst = _fast(rng, ev[-1][0])
    calm = _normal(rng, 60, burst[-1][0])
    burst2 = _fast(rng, calm[-1][0])
    pop = Population()
    for other in range(20):  # the population: people at their usual pace
        _run(_normal(rng, 100, T0), pop=pop, user=100 + other)
    alerts, st = _run(ev + burst + calm + burst2, pop=pop)
    assert _kinds(alerts) == ["burst", "burst"]  # one per episode, the second after a re-arm
    first, second = alerts[0][0], alerts[1][0]
    assert 80 <= first < 80 + 40 and 200 <= second < 200 + 40
    a = alerts[0][1]
    assert a.score >= a.threshold == AnomalyPolicy().burst_factor
    assert a.evidence["events_per_min"] > 8 * a.evidence["population_events_per_min"]


def test_a_user_fast_by_nature_is_not_a_burst_at_their_own_rate():
    rng = random.Random(2)
    pop = Population()
    _run(_normal(rng, 500, T0), pop=pop, user=99)  # the population's rate: 25 s gaps
    fast = _normal(rng, 300, T0, gap_s=2.0)  # 12x the population, but always like that
    alerts, st = _run(fast, pop=pop)
    assert st.own_gaps > 100
    # the first windows have no own baseline yet (the population's stands in), later ones do
    assert all(i < WINDOW + AnomalyPolicy().own_min_gaps + 8 for i, _ in alerts)


def test_bot_regular_fast_distinct_no_carts():
    rng = random.Random(3)
    t = T0
    bot = []
    for k in range(200):
        t += int(500 * (1 + 0.05 * rng.uniform(-1, 1)))
        bot.append((t, 10_000 + k, 0))
    alerts, st = _run(bot)
    assert _kinds(alerts) == ["bot"]  # not also a burst
    i, a = alerts[0]
    assert i == AnomalyPolicy().bot_gaps  # as soon as the window holds enough gaps
    assert a.evidence["interarrival_cv"] < 0.1 and a.evidence["carts_purchases"] == 0
    assert a.evidence["distinct_items"] == 1.0
    assert "bot" in st.alerted


def test_regular_but_carting_or_slow_is_not_a_bot():
    carts = [(T0 + 500 * k, 10_000 + k, 1 if k % 5 == 0 else 0) for k in range(100)]
    assert "bot" not in _kinds(_run(carts)[0])
    slow = [(T0 + 10_000 * k, 10_000 + k, 0) for k in range(100)]  # a person can click every 10 s
    assert _run(slow)[0] == []


def test_bot_rearms_after_a_human_stretch():
    rng = random.Random(4)
    bot = [(T0 + 500 * k, 10_000 + k, 0) for k in range(60)]
    human = _normal(rng, 40, bot[-1][0])
    bot2 = [(human[-1][0] + 500 * (k + 1), 20_000 + k, 0) for k in range(60)]
    alerts, _ = _run(bot + human + bot2)
    assert _kinds(alerts) == ["bot", "bot"]
    assert alerts[1][0] >= 100


def test_brushing_fresh_user_repeated_orders_of_one_item():
    ev, t = [], T0
    for order in range(4):
        for action in (0, 1, 2):
            t += 20_000
            ev.append((t, 777, action))
    alerts, st = _run(ev)
    assert _kinds(alerts) == ["brushing"]
    i, a = alerts[0]
    assert a.evidence["item_id"] == 777 and a.evidence["purchases"] >= 2
    assert i == 5  # the 2nd purchase is the 4th conversion (cart, buy, cart, buy)
    # an established user repeating an order is a loyal customer, not a fresh brushing account
    rng = random.Random(5)
    history = _normal(rng, 80, T0)
    alerts, _ = _run(history + [(history[-1][0] + e[0] - T0, e[1], e[2]) for e in ev])
    assert "brushing" not in _kinds(alerts)


def test_surprise_z_of_nll_rearms():
    rng = random.Random(6)
    ev = [(T0 + 30_000 * k, rng.randrange(500), 0, rng.gauss(5.0, 0.5)) for k in range(100)]
    odd = [(ev[-1][0] + 30_000 * (k + 1), rng.randrange(500), 0, rng.gauss(9.0, 0.5))
           for k in range(6)]
    back = [(odd[-1][0] + 30_000 * (k + 1), rng.randrange(500), 0, rng.gauss(5.0, 0.5))
            for k in range(30)]
    odd2 = [(back[-1][0] + 30_000 * (k + 1), rng.randrange(500), 0, rng.gauss(9.0, 0.5))
            for k in range(6)]
    alerts, st = _run(ev + odd + back + odd2)
    assert _kinds(alerts) == ["surprise", "surprise"]
    assert 100 <= alerts[0][0] < 106 and 136 <= alerts[1][0] < 142
    assert alerts[0][1].score >= 4 and alerts[0][1].evidence["model_surprise"] > 6
    # without NLLs nothing is scored
    assert _run([e[:3] for e in ev + odd])[0] == []


def test_memory_is_bounded_and_stats_round_trip_msgpack():
    bot = [(T0 + 500 * k, k, 0) for k in range(500)]
    alerts, st = _run(bot)
    assert len(st.ts) == len(st.items) == len(st.actions) == WINDOW and st.n == 500
    again = AnomalyStats.from_dict(msgpack.unpackb(msgpack.packb(st.to_dict()), raw=False))
    assert again == st
    msg = msgpack.unpackb(msgpack.packb(alerts[0][1].message()), raw=False)
    assert msg["kind"] == "bot" and msg["user_id"] == 1 and msg["window"]["events"] > 0
    assert set(msg) >= {"score", "threshold", "event_ts", "model_version", "evidence"}


def test_same_millisecond_batches_are_not_a_rate():
    rng = random.Random(7)
    ev = _normal(rng, 40, T0)
    pile = [(ev[-1][0], 5_000 + k, 0) for k in range(40)]  # one client upload, one timestamp
    assert _run(ev + pile)[0] == []
    fast = [(ev[-1][0] + 400 * (k + 1), 5_000 + k, 0) for k in range(40)]
    assert _kinds(_run(ev + fast)[0]) == ["bot"]  # the same events spread out are a bot
