"""Abnormal-behaviour alerts in the worker's pure core: state bytes and the scorer's messages."""
from __future__ import annotations

import msgpack
import pytest

from models.anomaly import AnomalyPolicy, AnomalyStats, observe
from stream.config import Settings
from stream.events import Event
from stream.scoring import Scorer
from stream.state import STATE_FORMAT, RingEntry, UserState, decode_state, encode_state, insert_event
from stream.topics import topic_specs
from tests.unit.test_scoring import make_scoring

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def _state() -> UserState:
    st = UserState(user_id=7)
    for t in range(5):
        insert_event(st, RingEntry(item=100 + t, category=1, action=0, ts=T0 + t * 1000), 50)
    return st


def test_state_without_stats_keeps_its_bytes_and_old_bytes_decode():
    st = _state()
    data = encode_state(st)
    assert "an" not in msgpack.unpackb(data, raw=False)  # no new key when the feature is off
    assert decode_state(data).anomaly is None


def test_state_round_trips_the_stats_in_format_1():
    st = _state()
    st.anomaly = AnomalyStats()
    for t in range(40):
        observe(st.anomaly, 7, T0 + 500 * t, 1000 + t, 0)
    d = msgpack.unpackb(encode_state(st), raw=False)
    assert d["f"] == STATE_FORMAT == 1 and "an" in d
    back = decode_state(encode_state(st))
    assert back.anomaly == st.anomaly and back.anomaly.alerted == ["bot"]
    assert back.ring == st.ring


def _bot_events(user: int, n: int) -> list[Event]:
    return [Event(user, 100 + k % 50, "click", T0 + 500 * k, category_id=k % 10, topic="click",
                  offset=k) for k in range(n)]


def test_scorer_publishes_one_bot_alert_per_episode():
    scorer = Scorer(make_scoring(), ring_size=6, top_k=5, anomaly=AnomalyPolicy())
    states: dict = {}
    preds = []
    events = _bot_events(3, 60)
    for lo in range(0, len(events), 16):  # several batches: the stats live in the user state
        preds += scorer.score_batch(states, events[lo:lo + 16])
    msgs = [m for p in preds for m in p.anomaly_messages]
    assert [m["kind"] for m in msgs] == ["bot"]
    assert msgs[0]["user_id"] == 3 and msgs[0]["model_version"] == 1
    assert msgs[0]["event_ts"] == events[AnomalyPolicy().bot_gaps].ts
    assert states[3].anomaly is not None and states[3].anomaly.n == 60
    off = Scorer(make_scoring(), ring_size=6, top_k=5)
    off_states: dict = {}
    assert all(p.anomaly_messages == () for p in off.score_batch(off_states, events))
    assert off_states[3].anomaly is None


def test_the_anomalies_topic_exists_beside_the_outputs():
    s = Settings(prefix="x.")
    names = {t.name: t.partitions for t in topic_specs(s, 4)}
    assert names[s.anomalies_topic] == 4 and s.anomalies_topic == "x.anomalies"
