"""UserState: ring insertion in event-time order, eviction bookkeeping, bounded bytes."""
import numpy as np
import pytest

from stream.state import RingEntry, UserState, decode_state, encode_state, insert_event

pytestmark = pytest.mark.unit


def entry(ts: int, item: int = 1) -> RingEntry:
    return RingEntry(item=item, category=3, action=0, ts=ts)


def test_in_order_events_append_and_late_ones_insert_sorted():
    st = UserState(user_id=1)
    assert not insert_event(st, entry(100), 5).late
    assert not insert_event(st, entry(300), 5).late
    ins = insert_event(st, entry(200), 5)
    assert ins.late
    assert [e.ts for e in st.ring] == [100, 200, 300]
    assert st.n_late == 1 and st.last_ts == 300 and st.n_events == 3


def test_ring_is_bounded_and_reports_evictions():
    st = UserState(user_id=1)
    evicted = [insert_event(st, entry(t), 3).evicted for t in range(1000, 6000, 1000)]
    assert [e.ts if e else None for e in evicted] == [None, None, None, 1000, 2000]
    assert len(st.ring) == 3


def test_encode_decode_round_trip_and_size():
    st = UserState(user_id=123456789)
    for t in range(50):
        insert_event(st, RingEntry(item=4_000_000 + t, category=900_000, action=t % 3,
                                   ts=1_511_000_000_000 + t * 37_000), 50)
    st.hidden = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    st.anchor = np.ones(64, dtype=np.float32)
    st.anchor_ts = 1_510_000_000_000
    st.model_version = 3
    data = encode_state(st)
    back = decode_state(data)
    assert back.ring == st.ring
    np.testing.assert_array_equal(back.hidden, st.hidden)
    np.testing.assert_array_equal(back.anchor, st.anchor)
    assert (back.anchor_ts, back.model_version, back.n_events, back.n_by_action) == \
        (st.anchor_ts, 3, 50, st.n_by_action)
    # bounded: L=50 events with 7-digit ids plus two 64-float vectors
    assert len(data) < 1600, len(data)


def _with_interests() -> UserState:
    st = UserState(user_id="u-1")
    for t, cat in enumerate([5, 5, "SKU-cat", 7]):
        insert_event(st, RingEntry(item=t, category=cat if isinstance(cat, int) else -2, action=0,
                                   ts=1_511_000_000_000 + t * 60_000), 50)
        st.interests.observe(cat, 1_511_000_000_000 + t * 60_000)
    st.profile_sent = st.interests.top(5)
    return st


def test_interest_profile_round_trips_under_its_own_key():
    st = _with_interests()
    back = decode_state(encode_state(st))
    assert back.interests.ref_ts == st.interests.ref_ts
    assert back.interests.mass == pytest.approx(st.interests.mass)
    assert back.profile_sent == st.profile_sent
    assert back.interests.top(5) == st.interests.top(5)


def test_state_bytes_without_the_interest_key_still_decode():
    import msgpack

    from stream.state import STATE_FORMAT

    st = _with_interests()
    old = msgpack.unpackb(encode_state(st), raw=False)
    assert old["f"] == STATE_FORMAT == 1
    del old["ip"]  # what a worker from before interest profiles wrote
    back = decode_state(msgpack.packb(old, use_bin_type=True))
    assert not back.interests and back.profile_sent is None
    assert back.ring == st.ring and back.n_events == st.n_events and back.user_id == "u-1"
    # a user without categories writes no interest key at all
    plain = UserState(user_id=3)
    insert_event(plain, RingEntry(item=1, category=-1, action=0, ts=1_511_000_000_000), 50)
    plain.interests.observe(-1, 1_511_000_000_000)
    assert "ip" not in msgpack.unpackb(encode_state(plain), raw=False)
