"""The delivery check that finds records faust took from the fetcher and lost
(stream/worker/delivery.py), with no broker: by hand, and against a simulated fetcher."""
import pytest
from hypothesis import given, settings, strategies as st

from stream.worker.delivery import DeliveryTracker, Probe

pytestmark = pytest.mark.unit
P = ("click", 0)


def rereads(tracker, positions, in_transit, now):
    reread, probes = tracker.due(positions, in_transit, now)
    assert not probes
    return reread


def test_a_first_delivery_past_the_committed_offset_is_read_again_at_once():
    tracker = DeliveryTracker()
    for offset in (61, 62, 63):  # committed 58: 58..60 were taken and lost
        tracker.deliver(P, offset, committed=58, now=0.0)
    assert rereads(tracker, {P: 64}, in_transit=True, now=0.0) == {P: 58}  # busy or not
    assert rereads(tracker, {P: 64}, in_transit=True, now=0.5) == {}  # the re-read is on its way
    for offset in (58, 59, 60, 61, 62):  # arrives, then the rest again (skipped by scoring)
        tracker.deliver(P, offset, committed=58, now=0.6)
    assert tracker.partitions[P].watermark == 64
    assert tracker.due({P: 64}, in_transit=False, now=10.0) == ({}, {})


def test_a_hole_inside_the_stream_is_read_again_from_its_start():
    tracker = DeliveryTracker()
    for offset in (10, 11, 12, 15, 16):
        tracker.deliver(P, offset, committed=10, now=0.0)
    assert tracker.partitions[P].hole == (13, 15)
    assert rereads(tracker, {P: 17}, in_transit=True, now=0.0) == {P: 13}


def test_a_missing_tail_waits_for_quiet_and_nothing_in_transit():
    tracker = DeliveryTracker(tail_quiet_s=2.0)
    for offset in range(40, 45):
        tracker.deliver(P, offset, committed=40, now=0.0)
    # the fetcher has taken 45..46, the agent has not seen them
    assert rereads(tracker, {P: 47}, in_transit=False, now=1.0) == {}  # may still be on their way
    assert rereads(tracker, {P: 47}, in_transit=True, now=3.0) == {}  # queued in faust
    assert rereads(tracker, {P: 47}, in_transit=False, now=3.0) == {P: 45}
    assert rereads(tracker, {P: 45}, in_transit=False, now=3.5) == {}  # the seek moved the position back


def test_records_still_missing_after_a_read_again_are_probed():
    tracker = DeliveryTracker(retry_s=1.0)
    tracker.deliver(P, 7, committed=7, now=0.0)
    tracker.deliver(P, 9, committed=7, now=0.0)
    assert tracker.due({P: 10}, in_transit=False, now=0.0) == ({P: 8}, {})
    assert tracker.due({P: 10}, in_transit=False, now=0.5) == ({}, {})
    reread, probes = tracker.due({P: 10}, in_transit=False, now=1.0)
    assert reread == {} and probes == {P: Probe(8, 9)}
    assert tracker.due({P: 10}, in_transit=False, now=2.0) == ({}, {})  # one probe at a time
    # 8 holds a record (faust lost it again): read again, and never give up on it
    assert tracker.probed(P, probes[P], 8, now=2.0) == 8
    assert tracker.due({P: 10}, in_transit=False, now=3.0)[1] == {P: Probe(8, 9)}
    assert tracker.probed(P, Probe(8, 9), False, now=3.0) == 8  # the probe failed: read again
    tracker.deliver(P, 8, committed=7, now=3.1)
    assert tracker.partitions[P].watermark == 10


def test_offsets_that_hold_no_record_are_moved_past_once_probed():
    tracker = DeliveryTracker(retry_s=1.0)
    for offset in (7, 9, 12):  # 8 is a transaction marker; 10..11 too, say
        tracker.deliver(P, offset, committed=7, now=0.0)
    tracker.due({P: 13}, in_transit=False, now=0.0)
    _, probes = tracker.due({P: 13}, in_transit=False, now=1.0)
    assert tracker.probed(P, probes[P], None, now=1.0) is None
    assert tracker.partitions[P].watermark == 10 and tracker.empty_offsets == 1
    # the next hole: the probe finds 11 holds a record, 10 none
    assert tracker.due({P: 13}, in_transit=False, now=1.0) == ({P: 10}, {})
    _, probes = tracker.due({P: 13}, in_transit=False, now=2.0)
    assert probes == {P: Probe(10, 12)}
    assert tracker.probed(P, probes[P], 11, now=2.0) == 11
    tracker.deliver(P, 11, committed=7, now=2.1)
    assert tracker.partitions[P].watermark == 13 and tracker.partitions[P].hole is None


def test_a_stale_committed_offset_past_the_first_delivery_is_not_a_hole():
    tracker = DeliveryTracker()
    tracker.deliver(P, 5, committed=30, now=0.0)  # committed from an older assignment
    assert tracker.partitions[P].watermark == 6
    assert tracker.due({P: 6}, in_transit=False, now=5.0) == ({}, {})


def test_an_assigned_partition_with_nothing_delivered_is_tracked_from_the_committed_offset():
    tracker = DeliveryTracker(tail_quiet_s=2.0)
    tracker.begin(P, committed=58, now=0.0)
    tracker.begin(P, committed=99, now=0.5)  # tracked already: unchanged
    assert rereads(tracker, {P: 59}, in_transit=False, now=1.0) == {}
    assert rereads(tracker, {P: 59}, in_transit=False, now=2.5) == {P: 58}  # 58 taken, never delivered
    tracker.begin(("cart", 1), committed=None, now=0.0)  # no commit yet: nothing to compare with
    assert ("cart", 1) not in tracker.partitions


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 120),
    markers=st.sets(st.integers(0, 119), max_size=10),
    losses=st.lists(st.tuples(st.integers(0, 119), st.integers(1, 8)), max_size=6),
    chunk=st.integers(1, 16),
    start=st.integers(0, 5),
)
def test_every_record_reaches_the_agent_whatever_faust_loses(n, markers, losses, chunk, start):
    """A fetcher hands out `chunk` offsets per poll; faust loses the next few records handed
    over (each loss starts once, at its offset, and may also swallow records read again);
    offsets in `markers` hold no record; the probe knows which do. Whatever was lost, every
    record reaches the agent and the watermark reaches the end."""
    end = start + n
    records = {o for o in range(start, end) if o - start not in markers}
    pending_losses = {start + at: length for at, length in losses}
    tracker = DeliveryTracker(retry_s=1.0, tail_quiet_s=2.0)
    tracker.begin(P, committed=start, now=0.0)
    delivered: set[int] = set()
    position, now, drop_left = start, 0.0, 0
    for _ in range(10 * n + 200):
        for offset in range(position, min(position + chunk, end)):
            drop_left = max(drop_left, pending_losses.pop(offset, 0))
            if offset not in records:
                continue
            if drop_left:
                drop_left -= 1
                continue
            delivered.add(offset)
            tracker.deliver(P, offset, committed=start, now=now)
        position = min(position + chunk, end)
        now += 0.5
        reread, probes = tracker.due({P: position}, in_transit=False, now=now)
        for key, probe in probes.items():
            first = min((o for o in records if probe.start <= o < probe.end), default=None)
            offset = tracker.probed(key, probe, first, now)
            if offset is not None:
                reread[key] = offset
        position = reread.get(P, position)
        if position == end and tracker.partitions[P].watermark == end:
            break
    assert delivered == records
    assert tracker.partitions[P].watermark == end


def test_deliveries_before_the_committed_offset_is_known_are_rebased_onto_it():
    # the fetcher starts at the committed offset 17; 17 is lost before anyone knows that
    tracker = DeliveryTracker()
    for offset in (18, 19, 20):
        tracker.deliver(P, offset, committed=None, now=0.0)
    assert tracker.partitions[P].hole is None  # from the first delivery, nothing looks missing
    tracker.expect(P, 17)  # Kafka's answer arrives
    assert tracker.partitions[P].hole == (17, 18)
    assert rereads(tracker, {P: 21}, in_transit=True, now=0.0) == {P: 17}
    # known before any delivery, it is where tracking starts
    other = ("cart", 2)
    tracker.expect(other, 5)
    tracker.deliver(other, 6, committed=None, now=0.0)
    assert tracker.partitions[other].hole == (5, 6)
    tracker.expect(other, 3)  # a later, lower answer for a tracked partition with no gap below: moves back
    assert tracker.partitions[other].watermark == 3


def test_records_read_again_are_told_apart_from_records_never_delivered():
    # found by tests/faults/test_fuzz_input.py: a read again sent malformed records to
    # dead-letter a second time (valid ones are skipped by the user state, dead letters had none)
    tracker = DeliveryTracker()
    for offset in (0, 1, 2, 5, 6):  # 3 and 4 lost: a hole
        tracker.deliver(P, offset, committed=0, now=0.0)
    again = tracker.delivered_before([(P, o) for o in (2, 3, 4, 5, 6, 7)] + [(P, 7), (("cart", 0), 1)])
    assert again == {(P, 2), (P, 5), (P, 6), (P, 7)}  # 7 twice in the batch: the second copy
