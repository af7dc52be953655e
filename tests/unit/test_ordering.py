"""The reorder buffer releases a partition's events in event-time order, whatever the fetch order."""
import math
import random

import pytest

from stream.events import Event
from stream.ordering import ReorderBuffer

pytestmark = pytest.mark.unit

TOPICS = ["click", "cart", "purchase"]


def ev(topic: str, ts: int, offset: int, partition: int = 0, user: int = 1) -> Event:
    return Event(user, 1, topic, ts, topic=topic, partition=partition, offset=offset)


def never(topic, partition):
    return None


def always(topic, partition):
    return math.inf


def test_holds_events_until_every_topic_has_passed_them():
    buf: ReorderBuffer = ReorderBuffer(TOPICS)
    buf.add(ev("cart", 20, 0), "c20")
    assert buf.release(never) == []  # click and purchase may still bring something older
    buf.add(ev("click", 10, 0), "k10")
    buf.add(ev("purchase", 30, 0), "p30")
    assert [h for _, h in buf.release(never)] == ["k10"]  # watermark = min(10, 20, 30)
    buf.add(ev("click", 25, 1), "k25")
    assert [h for _, h in buf.release(never)] == ["c20"]
    assert buf.size == 2


def test_caught_up_topics_do_not_hold_others_back():
    buf: ReorderBuffer = ReorderBuffer(TOPICS)
    buf.add(ev("click", 10, 0), "k10")
    buf.add(ev("click", 11, 1), "k11")
    caught = lambda t, p: None if t == "click" else 0.0  # noqa: E731 - cart, purchase are drained
    assert [h for _, h in buf.release(caught)] == ["k10", "k11"]


def test_caught_up_only_counts_when_it_is_newer_than_the_event():
    # cart-0 was fetched at t=200; click-0 looked drained at its last fetch, t=100, but that
    # fetch predates the cart event, so a click older than the cart may still be on its way
    buf: ReorderBuffer = ReorderBuffer(TOPICS)
    buf.add(ev("cart", 50, 0), "c50", seen_ms=200.0)
    polled = {"click": 100.0, "cart": 200.0, "purchase": 200.0}
    assert buf.release(lambda t, p: polled[t]) == []
    buf.add(ev("click", 40, 7), "k40", seen_ms=250.0)  # the next fetch brings it
    polled = dict.fromkeys(TOPICS, 250.0)
    assert [h for _, h in buf.release(lambda t, p: polled[t])] == ["k40", "c50"]


def test_grace_waits_for_a_fetch_that_much_newer():
    # a producer may still hold an older cart record when click's newer ones are fetched: with
    # a grace, "caught up" only counts from a fetch at least grace_ms after the event was seen
    buf: ReorderBuffer = ReorderBuffer(TOPICS, grace_ms=100.0)
    buf.add(ev("click", 50, 0), "k50", seen_ms=200.0)
    assert buf.release(lambda t, p: 250.0) == []  # drained as of 250 < 200 + 100
    buf.add(ev("cart", 45, 3), "c45", seen_ms=260.0)  # the straggler arrives
    assert buf.release(lambda t, p: 310.0) == []  # k50 could go, but c45 needs a fetch >= 360
    assert [h for _, h in buf.release(lambda t, p: 360.0)] == ["c45", "k50"]
    assert ReorderBuffer(TOPICS).release(lambda t, p: 0.0) == []


def test_release_order_is_independent_of_arrival_order():
    rng = random.Random(1)
    events = []
    offsets = {t: 0 for t in TOPICS}
    for ts in sorted(rng.sample(range(10_000), 300)):
        t = rng.choice(TOPICS)
        events.append(ev(t, ts, offsets[t], user=rng.randrange(5)))
        offsets[t] += 1

    def run(seed):
        # each topic keeps its own order (Kafka's guarantee); topics interleave at random
        queues = {t: [e for e in events if e.topic == t] for t in TOPICS}
        r = random.Random(seed)
        buf: ReorderBuffer = ReorderBuffer(TOPICS)
        out = []
        while any(queues.values()):
            t = r.choice([t for t in TOPICS if queues[t]])
            for _ in range(r.randint(1, 20)):
                if queues[t]:
                    e = queues[t].pop(0)
                    buf.add(e, e)
            out += [e for e, _ in buf.release(lambda topic, p: None if queues[topic] else 0.0)]
        out += [e for e, _ in buf.release(always)]
        return out

    first = run(0)
    assert len(first) == len(events)
    assert [e.ts for e in first] == sorted(e.ts for e in events)
    assert run(1) == first == run(2)


def test_bounded_buffer_forces_oldest_out_and_revocation_hands_back():
    buf: ReorderBuffer = ReorderBuffer(TOPICS, max_events=3)
    for i in range(5):
        buf.add(ev("click", 100 + i, i, partition=i % 2), i)
    released = buf.release(never)
    assert [h for _, h in released] == [0, 1] and buf.forced == 2 and buf.size == 3
    dropped = buf.drop_partitions({0})
    assert sorted(h for _, h in dropped) == [2, 4] and buf.size == 1
