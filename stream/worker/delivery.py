"""Which offsets of each input partition reached the scoring agent, and when to read again.

faust can take records from the fetcher and never hand them to the agent: a record in flight
when a rebalance suspends the flow is dropped, and records fetched before recovery's seek
can push faust's read offset past the ones the seek fetches again. Kafka does not send such
records again on its own, and faust then commits past them (its commit skips a one-offset gap
at the head). The loss is invisible to lag monitoring: the fetch position is at the end.

The check is deterministic. Within a partition the agent receives records in offset order, so
per partition we keep a *watermark* (every offset below it reached the agent) and the runs of
offsets delivered above it. The agent is missing records when
- a **hole** opens: an offset arrives above the watermark (or the first one after an assignment
  lies past the committed offset), or
- a **tail** is missing: the fetcher's position is past the watermark, nothing is in transit to
  the agent and nothing arrived for this partition for `tail_quiet_s`.
Either way the partition is read again from the watermark at once. If the records are still
missing `retry_s` later, a probe reads that range straight from Kafka (stream/worker/probe.py,
outside faust): offsets that hold no record (a transaction marker, an aborted or compacted
record) are moved past; where records exist, the partition is read again, and again every
`retry_s` until they arrive: a record that exists is never given up on. Records read again that
the user state already holds are skipped by scoring (stream/state.py, is_redelivery), and
malformed records that reached the agent before are not dead-lettered again (`delivered_before`),
so a read again costs time, not duplicates.

Pure bookkeeping: stream/worker/fetch_watch.py feeds it and does the seeking.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Hashable, Iterable

log = logging.getLogger("seqstream.worker")

RETRY_S = 1.0
TAIL_QUIET_S = 2.0


@dataclass
class PartitionDelivery:
    watermark: int  # every offset below it reached the agent (or holds no record)
    start: int  # where tracking began: the committed offset, or the first delivery
    runs: list[list[int]] = field(default_factory=list)  # delivered [lo, hi) above the watermark, sorted
    last_delivery: float = 0.0  # monotonic time
    rereads: int = 0  # reads again from this watermark so far
    last_reread: float = float("-inf")
    probing: bool = False  # a probe of the missing range is out
    empty: list[tuple[int, int]] = field(default_factory=list)  # [lo, hi) a probe found no record in

    def holds_no_record(self, offset: int) -> bool:
        return any(lo <= offset < hi for lo, hi in self.empty)

    def deliver(self, offset: int) -> None:
        if offset < self.watermark:
            return  # read again after a seek; already counted
        if offset == self.watermark:
            self.watermark += 1
        else:
            self._add_run(offset)
        self._absorb_runs()

    def _absorb_runs(self) -> None:
        while self.runs and self.runs[0][0] <= self.watermark:  # the hole is filled
            self.watermark = max(self.watermark, self.runs.pop(0)[1])
            self.rereads = 0

    def _add_run(self, offset: int) -> None:
        runs = self.runs
        if runs and runs[-1][0] <= offset <= runs[-1][1]:  # in order: the usual case
            runs[-1][1] = max(runs[-1][1], offset + 1)
            return
        runs.append([offset, offset + 1])
        runs.sort()
        merged: list[list[int]] = []
        for lo, hi in runs:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.runs = merged

    def has(self, offset: int) -> bool:
        """Whether `offset` reached the agent already (below the watermark or in a run)."""
        return offset < self.watermark or any(lo <= offset < hi for lo, hi in self.runs)

    @property
    def hole(self) -> tuple[int, int] | None:
        """[from, to) missing below the first delivered run, if any."""
        return (self.watermark, self.runs[0][0]) if self.runs else None

    def rebase(self, committed: int) -> None:
        """Tracking began at the first delivery; the committed offset, learnt since, is lower:
        what lies between was taken and lost."""
        if committed < self.start:
            self.runs.insert(0, [self.start, self.watermark])
            self.watermark = self.start = committed
            self._absorb_runs()

    def skip_to(self, offset: int) -> None:
        """The offsets below `offset` hold no record: move the watermark past them."""
        if offset > self.watermark:
            self.empty = self.empty[-7:] + [(self.watermark, offset)]  # the recent ones suffice
            self.watermark = offset
            self.rereads, self.last_reread = 0, float("-inf")
        self._absorb_runs()


@dataclass(frozen=True)
class Probe:
    """A request to look up which offsets in [start, end) hold records."""

    start: int
    end: int


class DeliveryTracker:
    """Per input partition (any hashable key, e.g. faust's TP), what reached the agent."""

    def __init__(self, retry_s: float = RETRY_S, tail_quiet_s: float = TAIL_QUIET_S) -> None:
        self.retry_s, self.tail_quiet_s = retry_s, tail_quiet_s
        self.partitions: dict[Hashable, PartitionDelivery] = {}
        self.expected: dict[Hashable, int] = {}  # committed offsets of partitions not delivered yet
        self.empty_offsets = 0  # offsets a probe found holding no record (markers)

    def expect(self, key: Hashable, committed: int | None) -> None:
        """The group's committed offset for a partition just assigned, read from Kafka: the
        fetcher starts there. Deliveries may have begun already; then tracking moves back to it."""
        if committed is None:
            return
        track = self.partitions.get(key)
        if track is None:
            self.expected[key] = committed
        else:
            track.rebase(committed)

    def begin(self, key: Hashable, committed: int | None, now: float) -> None:
        """Start tracking an assigned partition that has delivered nothing yet, from the offset
        the fetcher starts at."""
        start = self.expected.get(key, committed)
        if start is not None and key not in self.partitions:
            self.partitions[key] = PartitionDelivery(watermark=start, start=start, last_delivery=now)

    def deliver(self, key: Hashable, offset: int, committed: int | None, now: float) -> None:
        """`committed`: faust's view of the committed offset, used when Kafka's (`expect`) is
        not known yet."""
        track = self.partitions.get(key)
        if track is None:
            start = self.expected.pop(key, committed)
            # a committed offset past the first delivery is stale: start from what arrived
            start = start if start is not None and start <= offset else offset
            track = self.partitions[key] = PartitionDelivery(watermark=start, start=start)
        track.deliver(offset)
        track.last_delivery = now

    def delivered_before(self, records: Iterable[tuple[Hashable, int]]) -> set[tuple[Hashable, int]]:
        """Of the (key, offset) pairs of a batch about to be delivered, in order, those that
        reached the agent already (a read again, or twice in the batch). Scoring skips such
        events by the user state; records with no state (dead letters) are skipped by this."""
        again: set[tuple[Hashable, int]] = set()
        fresh: set[tuple[Hashable, int]] = set()
        for key, offset in records:
            track = self.partitions.get(key)
            if (key, offset) in fresh or (track is not None and track.has(offset)):
                again.add((key, offset))
            else:
                fresh.add((key, offset))
        return again

    def holds_no_record(self, key: Hashable, offset: int) -> bool:
        """Whether a probe found that `offset` holds no record (a transaction marker, an
        aborted record): a commit may pass it without its being acked."""
        track = self.partitions.get(key)
        return track is not None and track.holds_no_record(offset)

    def forget(self, key: Hashable) -> None:
        self.partitions.pop(key, None)
        self.expected.pop(key, None)

    def due(self, positions: dict[Hashable, int], in_transit: bool,
            now: float) -> tuple[dict[Hashable, int], dict[Hashable, Probe]]:
        """(partitions to read again now, each with the offset to read from; missing ranges to
        probe, whose answers go to `probed`)."""
        reread: dict[Hashable, int] = {}
        probes: dict[Hashable, Probe] = {}
        for key, track in self.partitions.items():
            missing_to = self._missing_to(track, positions.get(key), in_transit, now)
            if missing_to is None:
                track.rereads = 0
                continue
            if track.probing or now - track.last_reread < self.retry_s:
                continue  # the last read again may still be on its way
            if track.rereads == 0:
                reread[key] = self._reread(track, now)
            else:
                track.probing = True
                probes[key] = Probe(track.watermark, missing_to)
        return reread, probes

    def probed(self, key: Hashable, probe: Probe, first_record: int | None | bool,
               now: float) -> int | None:
        """The probe's answer: the first offset in the range that holds a record, None when
        none does, False when the probe failed. Returns the offset to read again from, if any."""
        track = self.partitions.get(key)
        if track is None or not track.probing:
            return None  # revoked meanwhile
        track.probing = False
        if first_record is None:
            log.info("offsets %d..%d of %s hold no record (transaction markers): moving on",
                     probe.start, probe.end - 1, key)
            self.empty_offsets += probe.end - probe.start
            track.skip_to(probe.end)
            return None
        if first_record is not False:
            track.skip_to(first_record)
        if track.watermark >= probe.end:
            return None  # arrived meanwhile
        return self._reread(track, now)

    @staticmethod
    def _reread(track: PartitionDelivery, now: float) -> int:
        track.rereads += 1
        track.last_reread = now
        return track.watermark

    def _missing_to(self, track: PartitionDelivery, position: int | None, in_transit: bool,
                    now: float) -> int | None:
        """The end of the missing range, or None when nothing is missing."""
        hole = track.hole
        if hole is not None:
            return hole[1]
        if (position is not None and position > track.watermark and not in_transit
                and now - track.last_delivery >= self.tail_quiet_s):
            return position
        return None
