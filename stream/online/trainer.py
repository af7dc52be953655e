"""The trainer: the single owner of updates. It accumulates samples, runs learner rounds off the
event loop, and publishes promoted versions.

**Trainer**: by default an agent of the worker's own faust app on the 1-partition
`training-samples` topic, so exactly one worker of the consumer group owns it and it fails over
with the group; `seqstream trainer` runs the same agent in its own process (its own group
`<app-id>-trainer`; then run the workers with SEQSTREAM_ONLINE_TRAINER=external). A round runs
when N samples have arrived or T seconds have passed (SEQSTREAM_ONLINE_EVERY_N / _EVERY_S), off
the event loop. The learner's state (candidate, replay buffer) is in memory: after a failover
the new owner starts from the newest published version with an empty replay buffer.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from models.jsonable import to_jsonable
from models.online.learner import OnlineLearner, RoundReport
from models.online.samples import Sample, decode_sample
from stream.online.follower import Follower
from stream.online.publisher import Publisher, blob_of
from stream.online.settings import OnlineSettings

log = logging.getLogger("seqstream.online")


@dataclass
class TrainerMetrics:
    samples_in: int = 0
    bad_samples: int = 0
    rounds: int = 0
    promoted: int = 0
    rejected: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """The single owner of updates: accumulate samples, run learner rounds, publish promotions."""

    def __init__(self, learner: OnlineLearner, publisher: Publisher, follower: Follower,
                 online: OnlineSettings) -> None:
        self.learner = learner
        self.publisher = publisher
        self.follower = follower
        self.online = online
        self.metrics = TrainerMetrics()
        self.pending: list[Sample] = []
        self.last_round = time.monotonic()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqstream-train")
        self._published: set[int] = set()
        self._rebase_to: Any = None  # a version published by someone else: adopt it next round
        self._lock = threading.Lock()
        if follower.store.max_version is not None:
            learner.observe_version(follower.store.max_version)
        follower.listeners.append(self._on_version)

    def _on_version(self, version: int, ckpt: Any, manifest: dict) -> None:
        self.learner.observe_version(version)
        if version not in self._published and version > self.learner.version:
            with self._lock:
                self._rebase_to = ckpt

    def add(self, values: Iterable[bytes | None]) -> None:
        for v in values:
            self.metrics.samples_in += 1
            try:
                self.pending.append(decode_sample(v))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                self.metrics.bad_samples += 1

    def due(self) -> bool:
        n = len(self.pending)
        return n >= self.online.every_n or (
            n >= self.online.min_samples and time.monotonic() - self.last_round >= self.online.every_s)

    async def maybe_round(self) -> RoundReport | None:
        if not self.due():
            return None
        samples, self.pending = self.pending, []
        self.last_round = time.monotonic()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.round, samples)

    def round(self, samples: list[Sample]) -> RoundReport:
        """One learner round plus publishing (blocking: runs in the trainer's executor)."""
        with self._lock:
            ckpt, self._rebase_to = self._rebase_to, None
        if ckpt is not None and ckpt.version > self.learner.version:
            log.info("trainer: adopting version %d published elsewhere", ckpt.version)
            self.learner.rebase(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, ckpt.version)
        parent = self.learner.version
        if parent not in self.follower.store.manifests and parent not in self._published:
            self._publish_serving(source="checkpoint", parent=None, report=None)  # rollback target
        report = self.learner.learn_many(samples)
        m = self.metrics
        m.rounds += 1
        m.promoted += report.promoted
        m.rejected += report.decision == "rejected"
        m.last = report.to_dict()
        if report.promoted:
            self._publish_serving(source="online", parent=report.parent, report=report)
        try:
            self.publisher.status({**report.to_dict(), "type": "status", "host": socket.gethostname(),
                                   "pid": os.getpid(), "at_ms": int(time.time() * 1000),
                                   "samples_in": m.samples_in, "bad_samples": m.bad_samples})
        except Exception:
            log.exception("trainer: could not publish its status")
        log.info("trainer round %d: %d samples, %s (%s), serving v%d, cand %s serv %s, %d steps %.2fs",
                 m.rounds, report.n_samples, report.decision, report.reason, report.version,
                 _short(report.candidate), _short(report.serving), report.steps, report.seconds)
        return report

    def _publish_serving(self, *, source: str, parent: int | None, report: RoundReport | None) -> None:
        lr = self.learner
        meta: dict[str, Any] = {"source": source, "parent": parent, "producer": socket.gethostname(),
                                "created_ms": int(time.time() * 1000)}
        if report is not None:
            meta.update(metrics={"candidate": report.candidate, "serving": report.serving},
                        trained_samples=report.trained_samples, round=self.metrics.rounds)
        try:
            blob = blob_of(lr.serving, lr.items, lr.categories, lr.version, {"online": meta})
            self._published.add(lr.version)
            self.publisher.publish(lr.version, blob, to_jsonable(meta, 6))
            log.info("trainer: published version %d (parent %s, %s, %d bytes)", lr.version, parent,
                     source, len(blob))
            manifests = dict(self.follower.store.manifests)
            manifests.setdefault(lr.version, {"n_chunks": 0, "source": source})
            retired = self.publisher.retire(manifests, self.online.keep_versions)
            if retired:
                log.info("trainer: deleted the weights of old versions %s", retired)
        except Exception:
            log.exception("trainer: publishing version %d failed", lr.version)


def _short(m: dict[str, Any]) -> str:
    if not m:
        return "-"
    return "hr@20=%.3f mrr@20=%.3f ll=%.3f n=%d" % (m.get("hr@20", 0), m.get("mrr@20", 0),
                                                   m.get("action_logloss", 0), m.get("n_items", 0))
