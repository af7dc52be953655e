"""The worker's counters and histograms: plain numbers the hot path bumps once per batch.

Logged every 10 s (`snapshot`) and exported at scrape time by stream/worker/exporter.py (the
Prometheus collector reads these fields; nothing Prometheus-specific runs per event).
Histograms are cumulative bucket counts kept in numpy, observed a batch at a time.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# seconds: 1 ms .. 2 min (latency of a healthy worker is tens of ms; backfills go further)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0)
# event time -> prediction: live traffic is sub-second, a replay or backlog hours to days
EVENT_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0,
                     86400.0, 7 * 86400.0)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_EVENTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STATE_BYTES_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class BatchHistogram:
    """A Prometheus-style histogram (upper bounds, +Inf implied) fed a batch at a time."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # per bucket, last = +Inf
        self.sum = 0.0
        self.count = 0

    def observe_many(self, values: Any) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bucket (le = less or equal)
        idx = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.sum += float(values.sum())
        self.count += int(values.size)

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.bounds, value, side="left"))] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus exposes them, +Inf last."""
        cum = np.cumsum(self.counts)
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        return list(zip(les, (int(c) for c in cum)))

    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass
class WorkerMetrics:
    events_in: int = 0
    events_by_topic: Counter = field(default_factory=Counter)  # input records received, per topic
    predictions: int = 0
    dead_letter: Counter = field(default_factory=Counter)
    late: int = 0  # arrived after a later event of the same user
    churn_alerts: int = 0
    churn_returns: int = 0
    anomaly_alerts: int = 0  # messages sent to the anomalies topic
    profiles: int = 0  # interest profiles sent (published on a material change)
    sweeps: int = 0
    buffered: int = 0  # events waiting in the reorder buffer (gauge)
    redeliveries: int = 0  # events the state already held (at-least-once redelivery)
    forced_releases: int = 0
    sweep_seconds: float = 0.0
    batches: int = 0
    batch_seconds: float = 0.0
    state_bytes: int = 0  # sum of encoded state sizes written (for bytes/user)
    state_writes: int = 0
    started: float = field(default_factory=time.monotonic)
    latency: BatchHistogram = field(default_factory=lambda: BatchHistogram(LATENCY_BUCKETS))
    event_time_lag: BatchHistogram = field(default_factory=lambda: BatchHistogram(EVENT_LAG_BUCKETS))
    batch_time: BatchHistogram = field(default_factory=lambda: BatchHistogram(BATCH_SECONDS_BUCKETS))
    batch_events: BatchHistogram = field(default_factory=lambda: BatchHistogram(BATCH_EVENTS_BUCKETS))
    state_size: BatchHistogram = field(default_factory=lambda: BatchHistogram(STATE_BYTES_BUCKETS))

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "events_in": self.events_in,
            "predictions": self.predictions,
            "dead_letter": dict(self.dead_letter),
            "late": self.late,
            "churn_alerts": self.churn_alerts,
            "churn_returns": self.churn_returns,
            "anomaly_alerts": self.anomaly_alerts,
            "profiles": self.profiles,
            "mean_sweep_ms": round(1000 * self.sweep_seconds / max(self.sweeps, 1), 3),
            "buffered": self.buffered,
            "redeliveries_skipped": self.redeliveries,
            "forced_releases": self.forced_releases,
            "batches": self.batches,
            "mean_batch_ms": round(1000 * self.batch_seconds / max(self.batches, 1), 2),
            "mean_latency_ms": round(1000 * self.latency.mean(), 2),
            "mean_state_bytes": round(self.state_bytes / max(self.state_writes, 1), 1),
            "events_per_s": round(self.events_in / elapsed, 1),
        }
