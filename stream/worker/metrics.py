"""The worker's counters (logged every few seconds, and served on /seqstream/metrics)."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerMetrics:
    events_in: int = 0
    predictions: int = 0
    dead_letter: Counter = field(default_factory=Counter)
    late: int = 0  # arrived after a later event of the same user
    churn_alerts: int = 0
    churn_returns: int = 0
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

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "events_in": self.events_in,
            "predictions": self.predictions,
            "dead_letter": dict(self.dead_letter),
            "late": self.late,
            "churn_alerts": self.churn_alerts,
            "churn_returns": self.churn_returns,
            "mean_sweep_ms": round(1000 * self.sweep_seconds / max(self.sweeps, 1), 3),
            "buffered": self.buffered,
            "redeliveries_skipped": self.redeliveries,
            "forced_releases": self.forced_releases,
            "batches": self.batches,
            "mean_batch_ms": round(1000 * self.batch_seconds / max(self.batches, 1), 2),
            "mean_state_bytes": round(self.state_bytes / max(self.state_writes, 1), 1),
            "events_per_s": round(self.events_in / elapsed, 1),
        }
