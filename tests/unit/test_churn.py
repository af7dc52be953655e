"""Churn in event time: one alert per episode, a `returned` message, re-arming, cheap sweeps."""
import pytest

from models.schema import ACTION_INDEX
from stream.churn import ChurnPolicy, DueIndex, PartitionClock, churn_reason, on_event
from stream.state import RingEntry, UserState, insert_event

pytestmark = pytest.mark.unit

H = 3_600_000
POLICY = ChurnPolicy(inactivity_ms=10 * H, risk_threshold=0.5, allowed_lateness_ms=0)


def user(last_ts: int, risk: float, actions=("click",)) -> UserState:
    st = UserState(user_id=1)
    for i, a in enumerate(actions):
        insert_event(st, RingEntry(1, 1, ACTION_INDEX[a], last_ts - (len(actions) - 1 - i) * 1000), 50)
    st.churn_risk = risk
    return st


def test_event_after_due_time_raises_the_alert_then_returned():
    st = user(0, 0.9)
    msgs = on_event(st, 11 * H, POLICY, model_version=4)
    assert [m["type"] for m in msgs] == ["churn", "returned"]
    alert, back = msgs
    assert alert["alert_ts"] == 10 * H and alert["last_event_ts"] == 0 and alert["model_version"] == 4
    assert back["gap_ms"] == 11 * H


def test_no_alert_before_due_or_below_risk_threshold():
    assert on_event(user(0, 0.9), 9 * H, POLICY, 1) == []
    assert on_event(user(0, 0.2), 50 * H, POLICY, 1) == []


def test_alerted_user_gets_returned_once_and_alert_rearms():
    st = user(0, 0.9)
    st.churn_alerted = True  # the sweep alerted them
    assert [m["type"] for m in on_event(st, 20 * H, POLICY, 1)] == ["returned"]
    insert_event(st, RingEntry(2, 1, 0, 20 * H), 50)
    assert not st.churn_alerted
    assert on_event(st, 21 * H, POLICY, 1) == []  # a normal next event: nothing to say
    assert POLICY.due_ts(st) == 30 * H  # armed again


def test_late_event_does_not_close_an_episode():
    st = user(5 * H, 0.9)
    assert on_event(st, 1 * H, POLICY, 1) == []


def test_reason_prefers_abandoned_cart():
    assert churn_reason(user(0, 1, ("click", "cart", "click"))) == "cart-abandoned"
    assert churn_reason(user(0, 1, ("cart", "purchase"))) == "inactive"


def test_due_index_pops_only_due_users_and_respects_newer_events():
    idx = DueIndex()
    idx.update(0, 1, 100)
    idx.update(0, 2, 200)
    idx.update(1, 3, 50)
    idx.update(0, 1, 300)  # user 1 had a newer event: the old due time is void
    assert idx.pop_due(0, 250) == [2]
    assert idx.pop_due(0, 250) == []
    assert idx.pop_due(0, 300) == [1]
    idx.update(1, 3, None)
    assert idx.pop_due(1, 10**9) == [] and len(idx) == 0


def test_due_index_takes_int_and_string_users_due_at_the_same_time():
    # found by tests/faults/test_fuzz_input.py: a tie on the due time compared the user ids,
    # and an int with a str raised TypeError in the batch and in the sweep (the worker crashed)
    idx = DueIndex()
    idx.update(0, 7, 100)
    idx.update(0, "sku-7", 100)
    idx.update(0, "7a", 100)
    idx.update(0, 8, 50)
    assert idx.pop_due(0, 99) == [8]
    assert sorted(map(str, idx.pop_due(0, 100))) == ["7", "7a", "sku-7"]
    idx.update(1, "u", 10)
    idx.update(1, 3, 10)
    idx.drop_partition(1)
    assert len(idx) == 0


def test_partition_clock_trails_newest_event_and_counts_late_ones():
    clock = PartitionClock(allowed_lateness_ms=100)
    clock.observe(0, 1000)
    clock.observe(0, 950)  # within lateness
    clock.observe(0, 800)  # beyond it
    assert clock.now(0) == 900 and clock.late_events == 1 and clock.now(1) is None
