"""Online learning on the stream: training-sample capture, the trainer agent, and model-updates.

    workers ── after_batch hook ──► training-samples (1 partition, key = user)
                                          │
                      trainer agent (exactly one owner: the consumer group of the 1 partition)
                      OnlineLearner.learn_many in an executor: test, promote?, train
                                          │ promoted versions
                                          ▼
    every worker ◄── follower thread ── model-updates (1 partition, compacted)
       pipeline.request_swap(...)  (between two micro-batches)

**Capture**: for every prediction of an in-order event, the user's ring up to and including that
event is one sample (`sample_from_state`): context ring[:-1], target ring[-1]. Late events are
not captured (their "next" event is already known to the model).

**Trainer**: by default an agent of the worker's own faust app on the 1-partition
`training-samples` topic, so exactly one worker of the consumer group owns it and it fails over
with the group; `seqstream trainer` runs the same agent in its own process (its own group
`<app-id>-trainer`; then run the workers with SEQSTREAM_ONLINE_TRAINER=external). A round runs
when N samples have arrived or T seconds have passed (SEQSTREAM_ONLINE_EVERY_N / _EVERY_S), off
the event loop. The learner's state (candidate, replay buffer) is in memory: after a failover
the new owner starts from the newest published version with an empty replay buffer.

**model-updates** (compacted, one partition). Keys are designed for compaction:

    v/<version:010d>/chunk/<i:06d>   weights: the checkpoint bytes (models/gru.py format) in
                                     slices of at most CHUNK_BYTES (messages stay < 512 KiB)
    v/<version:010d>/manifest        version, parent, source, metrics, n_chunks, size, sha256
                                     (written after its chunks: a version is complete when its
                                     manifest and all its chunks are there and the hash matches)
    head                             {"version": newest published}
    trainer/status                   the trainer's last round (decision, metrics)

Every version has its own keys, so publishing v+1 can never damage v: the latest complete version
always survives compaction, even if a publisher dies half-way. Manifests are tiny and kept (the
history `seqstream model list` shows); the chunks of versions older than the newest
`keep_versions` (default 5) online versions are deleted with tombstones, so the topic stays
bounded and those versions show as "weights: gone" (rollback needs weights); offline checkpoints
(the trainer publishes its base before its first promotion) keep their weights.

**Followers**: each worker reads model-updates with its own group-less consumer (kafka-python,
assign + seek to the beginning) in a thread. At startup it reads to the end *before* the agents
start and serves the newest complete version if it is newer than its --model checkpoint; later
versions are loaded in the thread and handed to `pipeline.request_swap`, which swaps between two
micro-batches. Version numbers only grow (a rollback republishes old weights under a new
number), so "newest" is "highest number". Hidden states of another version are re-folded from
the ring lazily by the Scorer. Vocabulary: online versions keep the vocabulary of the checkpoint
they descend from; items outside it stay unknown until an offline retrain (`seqstream model
publish NEW.pt`).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Sequence

import msgpack

from models.online import (OnlineConfig, OnlineLearner, RoundReport, Sample, checkpoint_bytes,
                           checkpoint_from_bytes, decode_sample, encode_sample)
from stream.state import RingEntry, UserState

log = logging.getLogger("seqstream.online")

CHUNK_BYTES = 480 * 1024  # + msgpack framing: every message stays below 512 KiB
MAX_MESSAGE_BYTES = 512 * 1024
HEAD_KEY = b"head"
STATUS_KEY = b"trainer/status"
__all__ = ["sample_from_state", "decode_sample", "SampleCapture", "VersionStore", "Follower",
           "Publisher", "Trainer", "OnlineSettings", "register_online", "add_cli"]


# ============================================================================ settings


def _flag(raw: Any, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    return str(raw).strip().lower() not in ("0", "false", "no", "off")


@dataclass
class OnlineSettings:
    """Online-learning knobs: `Settings.online_<name>` if the lead adds it, else SEQSTREAM_ONLINE_<NAME>."""

    enabled: bool = True  # SEQSTREAM_ONLINE=0 / --no-online: no capture, no trainer (still follows)
    trainer: str = "worker"  # worker: the trainer agent runs in the workers; external: `seqstream trainer`
    every_n: int = 2000  # a round after this many samples...
    every_s: float = 60.0  # ...or this many seconds (with at least min_samples)
    min_samples: int = 200
    lr: float = OnlineConfig.lr
    margin: float = OnlineConfig.margin
    min_eval: int = OnlineConfig.min_eval
    replay: int = OnlineConfig.replay_size
    max_steps: int = OnlineConfig.max_steps
    keep_versions: int = 5  # versions whose weights stay on model-updates (rollback targets)

    @classmethod
    def from_settings(cls, settings: Any = None, env: dict[str, str] | None = None,
                      **overrides: Any) -> "OnlineSettings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = getattr(settings, "online" if f.name == "enabled" else f"online_{f.name}", None)
            if raw is None:
                raw = env.get("SEQSTREAM_ONLINE" if f.name == "enabled" else f"SEQSTREAM_ONLINE_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            values[f.name] = _flag(raw, True) if kind is bool else kind(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        out = cls(**values)
        if out.trainer not in ("worker", "external"):
            raise ValueError(f"online trainer must be worker or external, got {out.trainer!r}")
        return out

    def learner_config(self, device: str | None = None) -> OnlineConfig:
        return OnlineConfig(lr=self.lr, margin=self.margin, min_eval=self.min_eval,
                            replay_size=self.replay, max_steps=self.max_steps, device=device)


# ============================================================================ capture


def sample_from_state(st: UserState, upto: int | None = None) -> bytes | None:
    """The training sample of the event at ring position `upto` (default: the newest).

    Context ring[:upto], target ring[upto]; None without context. At most L events."""
    ring = st.ring if upto is None else st.ring[: upto + 1]
    if len(ring) < 2:
        return None
    return encode_sample(st.user_id, [e.item for e in ring], [e.category for e in ring],
                         [e.action for e in ring], [e.ts for e in ring], st.model_version)


def _ring_position(ring: list[RingEntry], ev: Any, used: set[int]) -> int | None:
    from models.schema import ACTION_INDEX

    action = ACTION_INDEX.get(ev.action, -1)
    for i in range(len(ring) - 1, -1, -1):
        e = ring[i]
        if e.ts == ev.ts and e.item == ev.item_id and e.action == action and i not in used:
            return i
        if e.ts < ev.ts:
            break
    return None


@dataclass
class CaptureMetrics:
    samples: int = 0
    skipped: int = 0  # late events, first events, evicted within the batch
    seconds: float = 0.0


class SampleCapture:
    """after_batch hook: one sample per in-order prediction to training-samples (key = user)."""

    def __init__(self, send: Callable[..., Any]) -> None:
        self.send = send  # async send(key=..., value=...)
        self.metrics = CaptureMetrics()

    def samples(self, states: dict[int, UserState], predictions: Sequence[Any]) -> list[tuple[bytes, bytes]]:
        from stream.events import user_key

        out: list[tuple[bytes, bytes]] = []
        used: dict[int, set[int]] = {}
        for p in predictions:
            st = states.get(p.user_id)
            if p.late or st is None:
                self.metrics.skipped += 1
                continue
            mine = used.setdefault(p.user_id, set())
            pos = _ring_position(st.ring, p.event, mine)
            data = sample_from_state(st, pos) if pos is not None else None
            if data is None:
                self.metrics.skipped += 1
                continue
            mine.add(pos)  # type: ignore[arg-type]
            out.append((user_key(p.user_id), data))
        return out

    async def __call__(self, states: dict[int, UserState], predictions: Sequence[Any]) -> None:
        started = time.perf_counter()
        send = self.send
        pairs = self.samples(states, predictions)
        for key, value in pairs:
            await send(key=key, value=value)
        self.metrics.samples += len(pairs)
        self.metrics.seconds += time.perf_counter() - started


# ============================================================================ model-updates protocol


def _vkey(version: int, rest: str) -> bytes:
    return f"v/{version:010d}/{rest}".encode()


def version_messages(version: int, blob: bytes, manifest: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(key, value) messages of one version: chunks first, then the manifest, then head."""
    chunks = [blob[i: i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    out = [(_vkey(version, f"chunk/{i:06d}"),
            msgpack.packb({"version": version, "i": i, "data": c}, use_bin_type=True))
           for i, c in enumerate(chunks)]
    man = {**manifest, "type": "manifest", "version": int(version), "n_chunks": len(chunks),
           "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    man.setdefault("created_ms", int(time.time() * 1000))
    out.append((_vkey(version, "manifest"), msgpack.packb(man, use_bin_type=True)))
    out.append((HEAD_KEY, msgpack.packb({"version": int(version)}, use_bin_type=True)))
    assert all(len(v) <= MAX_MESSAGE_BYTES for _, v in out)
    return out


class VersionStore:
    """What model-updates says, folded message by message (the compacted topic's view)."""

    def __init__(self, keep_data: bool = True) -> None:
        self.manifests: dict[int, dict[str, Any]] = {}
        self.chunks: dict[int, dict[int, bytes]] = {}
        self.head: int | None = None
        self.status: dict[str, Any] | None = None
        self.keep_data = keep_data
        self.bad = 0

    @property
    def max_version(self) -> int | None:
        return max(self.manifests) if self.manifests else None

    def apply(self, key: bytes | None, value: bytes | None) -> int | None:
        """Fold one message; returns the version it touched (if any)."""
        if not key:
            return None
        k = key.decode(errors="replace")
        try:
            if k == "head":
                if value is not None:
                    self.head = int(msgpack.unpackb(value, raw=False)["version"])
                return None
            if k == "trainer/status":
                self.status = msgpack.unpackb(value, raw=False) if value is not None else None
                return None
            parts = k.split("/")
            if len(parts) < 3 or parts[0] != "v":
                return None
            version = int(parts[1])
            if parts[2] == "manifest":
                if value is None:
                    self.manifests.pop(version, None)
                else:
                    self.manifests[version] = msgpack.unpackb(value, raw=False)
            elif parts[2] == "chunk" and len(parts) == 4:
                i = int(parts[3])
                if value is None:
                    self.chunks.get(version, {}).pop(i, None)
                else:
                    self.chunks.setdefault(version, {})[i] = msgpack.unpackb(value, raw=False)["data"]
            return version
        except Exception:  # a malformed message must not stop the follower
            self.bad += 1
            log.warning("ignoring a malformed model-updates message %r", k)
            return None

    def has_weights(self, version: int) -> bool:
        m = self.manifests.get(version)
        return m is not None and len(self.chunks.get(version, {})) >= int(m["n_chunks"])

    def assemble(self, version: int) -> bytes | None:
        """The checkpoint bytes of a complete version (hash checked), else None."""
        if not self.has_weights(version):
            return None
        m = self.manifests[version]
        got = self.chunks[version]
        blob = b"".join(got[i] for i in range(int(m["n_chunks"])))
        if len(blob) != int(m["size"]) or hashlib.sha256(blob).hexdigest() != m["sha256"]:
            return None
        return blob

    def latest_complete(self, above: int | None = None) -> int | None:
        for v in sorted(self.manifests, reverse=True):
            if above is not None and v <= above:
                return None
            if self.assemble(v) is not None:
                return v
        return None

    def forget_below(self, version: int) -> None:
        """Drop chunk bytes of versions below `version` (followers keep memory bounded)."""
        for v in [v for v in self.chunks if v < version]:
            del self.chunks[v]


def _consumer(bootstrap: str, topic: str):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             client_id="seqstream-model-follower", fetch_max_bytes=8 * 1024 * 1024,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    tp = TopicPartition(topic, 0)
    if not consumer.partitions_for_topic(topic):
        consumer.close()
        raise RuntimeError(f"topic {topic} does not exist (run: seqstream topics create)")
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    return consumer, tp


def read_store(bootstrap: str, topic: str, timeout_s: float = 30.0) -> VersionStore:
    """model-updates read to its end (what `seqstream model list` shows)."""
    consumer, tp = _consumer(bootstrap, topic)
    store = VersionStore()
    try:
        _read_to_end(consumer, tp, store, timeout_s)
    finally:
        consumer.close()
    return store


def _read_to_end(consumer: Any, tp: Any, store: VersionStore, timeout_s: float) -> None:
    end = consumer.end_offsets([tp])[tp]
    deadline = time.monotonic() + timeout_s
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"model-updates: not at the end ({end}) after {timeout_s}s")
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                store.apply(r.key, r.value)


class Follower:
    """A worker's view of model-updates: catch up at startup, then follow in a thread."""

    def __init__(self, bootstrap: str, topic: str, *, device: Any = None) -> None:
        self.bootstrap, self.topic, self.device = bootstrap, topic, device
        self.store = VersionStore()
        self.current: int | None = None  # the version this process serves
        self.listeners: list[Callable[[int, Any, dict], None]] = []  # (version, ckpt, manifest)
        self._consumer: Any = None
        self._tp: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self, current: int, timeout_s: float = 60.0) -> Any | None:
        """Read to the end; the newest complete version above `current` as a Checkpoint, or None."""
        self.current = current
        self._consumer, self._tp = _consumer(self.bootstrap, self.topic)
        _read_to_end(self._consumer, self._tp, self.store, timeout_s)
        return self._load_newest()

    def _load_newest(self) -> Any | None:
        v = self.store.latest_complete(above=self.current)
        if v is None:
            return None
        try:
            ckpt = checkpoint_from_bytes(self.store.assemble(v), device=self.device)  # type: ignore[arg-type]
        except Exception:
            log.exception("model-updates: version %d does not load; skipped", v)
            self.store.manifests.pop(v, None)
            return None
        ckpt.version = v  # the manifest's number wins (a rollback republishes old weights)
        self.current = v
        self.store.forget_below(v + 1)
        return ckpt

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="seqstream-model-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._consumer.poll(timeout_ms=500)
                touched = False
                for records in batch.values():
                    for r in records:
                        if self.store.apply(r.key, r.value) is not None:
                            touched = True
                if touched:
                    ckpt = self._load_newest()
                    if ckpt is not None:
                        manifest = self.store.manifests.get(ckpt.version, {})
                        log.info("model-updates: version %d complete (parent %s, %s)", ckpt.version,
                                 manifest.get("parent"), manifest.get("source"))
                        for fn in list(self.listeners):
                            fn(ckpt.version, ckpt, manifest)
            except Exception:  # keep following; a broker hiccup must not end model updates
                log.exception("model-updates follower error; retrying")
                time.sleep(1.0)
        try:
            self._consumer.close()
        except Exception:
            pass


class Publisher:
    """Writes versions to model-updates (kafka-python; blocking: call it off the event loop)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                      max_request_size=1024 * 1024, client_id="seqstream-model-publisher")
        self.retired: set[int] = set()

    def publish(self, version: int, blob: bytes, manifest: dict[str, Any]) -> None:
        for key, value in version_messages(version, blob, manifest):
            self.producer.send(self.topic, key=key, value=value, partition=0)
        self.producer.flush(60)

    def status(self, status: dict[str, Any]) -> None:
        self.producer.send(self.topic, key=STATUS_KEY, partition=0,
                           value=msgpack.packb(_jsonable(status), use_bin_type=True))
        self.producer.flush(30)

    def retire(self, manifests: dict[int, dict[str, Any]], keep: int) -> list[int]:
        """Tombstone the chunks of online versions older than the newest `keep`; returns those
        retired. Offline checkpoints (source "checkpoint") keep their weights: the safe fallback."""
        online = sorted(v for v, m in manifests.items() if m.get("source") != "checkpoint")
        old = online[:-keep] if keep > 0 else online
        done = []
        for v in old:
            if v in self.retired:
                continue
            for i in range(int(manifests[v].get("n_chunks", 0))):
                self.producer.send(self.topic, key=_vkey(v, f"chunk/{i:06d}"), value=None, partition=0)
            self.retired.add(v)
            done.append(v)
        if done:
            self.producer.flush(30)
        return done

    def close(self) -> None:
        self.producer.close(5)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return None if x != x else round(x, 6)
    return x


def blob_of(model: Any, items: Any, categories: Any, version: int, meta: dict[str, Any]) -> bytes:
    return checkpoint_bytes(model, items, categories, version=version, meta=meta)


# ============================================================================ trainer


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
            self.publisher.publish(lr.version, blob, _jsonable(meta))
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


# ============================================================================ wiring


def _bootstrap_of(app: Any) -> str:
    url = app.conf.broker[0]
    return f"{url.host}:{url.port}"


def _register_trainer(app: Any, settings: Any, trainer: Trainer, agent_name: str) -> None:
    samples = app.topic(settings.topic("training-samples"), key_serializer="raw", value_serializer="raw")
    within = max(0.05, min(1.0, trainer.online.every_s))

    @app.agent(samples, name=agent_name)
    async def online_trainer(stream):  # noqa: ANN001 - faust's stream type
        async for batch in stream.take_events(max(1, trainer.online.every_n), within=within):
            try:
                trainer.add(ev.message.value for ev in batch)
                await trainer.maybe_round()
            except Exception:
                log.exception("trainer round failed; its samples are dropped")

    @app.timer(interval=max(1.0, min(trainer.online.every_s, 5.0)))
    async def online_trainer_tick() -> None:  # a quiet topic still gets its T-second round
        try:
            await trainer.maybe_round()
        except Exception:
            log.exception("trainer round failed")


def _make_follower(app: Any, settings: Any, device: Any) -> Follower:
    return Follower(_bootstrap_of(app), settings.model_updates_topic, device=device)


def register_online(wiring: Any, pipeline: Any, settings: Any) -> None:
    """Call after `register_agents`, before faust starts. Serves the newest published version
    first (read to the end of model-updates), then follows it; captures samples and runs the
    trainer agent unless online learning is off."""
    if getattr(pipeline, "_online_registered", False):
        return
    pipeline._online_registered = True
    online = OnlineSettings.from_settings(settings)
    app = wiring.app
    scoring = pipeline.scorer.scoring
    follower = _make_follower(app, settings, scoring.device)
    try:
        ckpt = follower.catch_up(scoring.version)
    except Exception as exc:
        log.warning("model-updates unavailable (%s): serving version %d, not following",
                    exc, scoring.version)
        return
    if ckpt is not None:
        from stream.scoring import ScoringModel

        pipeline.scorer.swap(ScoringModel.from_checkpoint(ckpt))
        log.info("serving version %d from model-updates (checkpoint had %d)", ckpt.version, scoring.version)
    pipeline.online_follower = follower

    def on_version(version: int, ckpt: Any, manifest: dict) -> None:
        from stream.scoring import ScoringModel

        loop = getattr(pipeline, "_online_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(pipeline.request_swap, ScoringModel.from_checkpoint(ckpt))

    follower.listeners.append(on_version)

    @app.task
    async def start_model_follower() -> None:
        pipeline._online_loop = asyncio.get_running_loop()
        follower.start()

    if not online.enabled:
        log.info("online learning off: serving and following model-updates only")
        return
    capture = SampleCapture(_sample_sender(app, settings))
    pipeline.after_batch.append(capture)
    pipeline.online_capture = capture
    if online.trainer == "worker":
        trainer = make_trainer(app, settings, online, pipeline.scorer.scoring, follower)
        pipeline.online_trainer = trainer
        _register_trainer(app, settings, trainer, f"{settings.app_id}-online-trainer")

    @app.timer(interval=10.0)
    async def online_report() -> None:
        t = getattr(pipeline, "online_trainer", None)
        log.info("seqstream online capture=%s trainer=%s", capture.metrics.__dict__,
                 None if t is None else {k: v for k, v in t.metrics.__dict__.items() if k != "last"})


def _sample_sender(app: Any, settings: Any) -> Callable[..., Any]:
    """The cheapest way to put one sample on training-samples.

    at_least_once: straight to faust's producer (enqueue only; about half the per-message cost
    of Topic.send). exactly_once: Topic.send, so that samples join the worker's transactions."""
    name = settings.topic("training-samples")
    topic = app.topic(name, key_serializer="raw", value_serializer="raw")
    if settings.processing_guarantee == "exactly_once":
        return topic.send
    producer = app.producer

    async def send(*, key: bytes, value: bytes) -> Any:
        return await producer.send(name, key, value, None, None, None)

    return send


def make_trainer(app: Any, settings: Any, online: OnlineSettings, scoring: Any,
                 follower: Follower) -> Trainer:
    learner = OnlineLearner(scoring.model, scoring.items, scoring.categories, version=scoring.version,
                            config=online.learner_config(device=None if settings.device == "auto"
                                                         else settings.device))
    publisher = Publisher(_bootstrap_of(app), settings.model_updates_topic)
    return Trainer(learner, publisher, follower, online)


# ============================================================================ `seqstream trainer`


def run_trainer(settings: Any, online: OnlineSettings) -> int:
    """The trainer agent alone, in its own faust app (group <app-id>-trainer); no serving."""
    import faust

    from stream.worker import load_scoring_model, resolve_bootstrap

    settings.validate()
    bootstrap = resolve_bootstrap(settings)
    scoring = load_scoring_model(settings)
    group = f"{settings.app_id}-trainer"
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=str(settings.data_dir / "trainer"), consumer_auto_offset_reset="earliest",
                    topic_allow_declare=False, web_enabled=False, broker_session_timeout=30.0,
                    broker_heartbeat_interval=3.0)
    follower = Follower(bootstrap, settings.model_updates_topic, device=scoring.device)
    ckpt = follower.catch_up(scoring.version)
    if ckpt is not None:
        from stream.scoring import ScoringModel

        scoring = ScoringModel.from_checkpoint(ckpt)
    trainer = make_trainer(app, settings, online, scoring, follower)
    _register_trainer(app, settings, trainer, f"{group}-agent")

    @app.task
    async def start_follower() -> None:
        follower.start()

    log.info("trainer %s on %s: base version %d on %s, round every %d samples or %.0fs", group,
             bootstrap, scoring.version, trainer.learner.device, online.every_n, online.every_s)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0


# ============================================================================ CLI


def _online_flags(p: argparse.ArgumentParser) -> None:
    d = OnlineSettings()
    p.add_argument("--every-n", type=int, default=None, help=f"round after N samples (default {d.every_n})")
    p.add_argument("--every-s", type=float, default=None, help=f"...or T seconds (default {d.every_s:g})")
    p.add_argument("--min-samples", type=int, default=None, help=f"fewest samples for a timed round ({d.min_samples})")
    p.add_argument("--lr", type=float, default=None, help=f"online learning rate ({d.lr:g})")
    p.add_argument("--margin", type=float, default=None,
                   help=f"promote unless worse than serving by this relative margin ({d.margin:g})")
    p.add_argument("--keep-versions", type=int, default=None, help=f"versions keeping weights ({d.keep_versions})")


def _online_from(args: argparse.Namespace, settings: Any) -> OnlineSettings:
    return OnlineSettings.from_settings(settings, every_n=args.every_n, every_s=args.every_s,
                                        min_samples=args.min_samples, lr=args.lr, margin=args.margin,
                                        keep_versions=args.keep_versions)


def cmd_trainer(args: argparse.Namespace) -> int:
    from stream.cli.common import settings_from

    settings = settings_from(args)
    return run_trainer(settings, _online_from(args, settings))


def _fmt_metric(m: dict | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "-"
    return f"{m[key]:.4f}"


def cmd_model(args: argparse.Namespace) -> int:
    from stream.cli.common import settings_from
    from stream.worker import resolve_bootstrap

    settings = settings_from(args)
    bootstrap = resolve_bootstrap(settings)
    topic = settings.model_updates_topic
    store = read_store(bootstrap, topic)
    if args.action == "list":
        rows = []
        for v in sorted(store.manifests):
            m = store.manifests[v]
            met = m.get("metrics") or {}
            rows.append({"version": v, "parent": m.get("parent"), "source": m.get("source"),
                         "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.get("created_ms", 0) / 1000)),
                         "candidate": met.get("candidate"), "serving_before": met.get("serving"),
                         "trained_samples": m.get("trained_samples"), "size": m.get("size"),
                         "weights": store.has_weights(v), "head": v == store.head})
        if args.json:
            print(json.dumps({"versions": rows, "head": store.head, "trainer": store.status}, indent=1))
            return 0
        if not rows:
            print(f"no versions on {topic}")
            return 0
        print(f"{'version':>8} {'parent':>6} {'source':<10} {'created (UTC)':<19} {'HR@20':>7} "
              f"{'MRR@20':>7} {'act-LL':>7} {'was HR@20':>9} {'n_eval':>6} {'weights':<7}")
        for r in rows:
            c, s = r["candidate"], r["serving_before"]
            print(f"{r['version']:>8} {str(r['parent'] if r['parent'] is not None else '-'):>6} "
                  f"{str(r['source']):<10} {r['created']:<19} {_fmt_metric(c, 'hr@20'):>7} "
                  f"{_fmt_metric(c, 'mrr@20'):>7} {_fmt_metric(c, 'action_logloss'):>7} "
                  f"{_fmt_metric(s, 'hr@20'):>9} {str((c or {}).get('n_items', '-')):>6} "
                  f"{'yes' if r['weights'] else 'gone':<7}{'  <- newest' if r['head'] else ''}")
        if store.status:
            st = store.status
            print(f"trainer: last round {st.get('decision')} ({st.get('reason')}), serving v{st.get('version')}, "
                  f"samples in {st.get('samples_in')}, bad {st.get('bad_samples')}")
        return 0
    if args.action == "rollback":
        target = args.version
        blob = store.assemble(target) if target is not None else None
        if blob is None:
            known = ", ".join(str(v) for v in sorted(store.manifests) if store.has_weights(v)) or "none"
            print(f"seqstream model rollback: version {target} has no complete weights on {topic} "
                  f"(versions with weights: {known})", file=sys.stderr)
            return 2
        ckpt = checkpoint_from_bytes(blob, device="cpu")
        meta = {"source": "rollback", "parent": target, "created_ms": int(time.time() * 1000),
                "metrics": store.manifests[target].get("metrics")}
        return _publish_checkpoint(bootstrap, topic, store, ckpt, meta)
    if args.action == "publish":
        from models.gru import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint, device="cpu")
        meta = {"source": "checkpoint", "parent": None, "created_ms": int(time.time() * 1000),
                "path": str(args.checkpoint), "checkpoint_version": ckpt.version}
        return _publish_checkpoint(bootstrap, topic, store, ckpt, meta, at_least=ckpt.version)
    return 2


def _publish_checkpoint(bootstrap: str, topic: str, store: VersionStore, ckpt: Any,
                        meta: dict[str, Any], at_least: int = 0) -> int:
    new = max(store.max_version or 0, store.head or 0, at_least - 1) + 1
    blob = blob_of(ckpt.model, ckpt.item_vocab, ckpt.category_vocab, new, {"online": meta})
    pub = Publisher(bootstrap, topic)
    try:
        pub.publish(new, blob, _jsonable(meta))
    finally:
        pub.close()
    print(f"published version {new} ({meta['source']}, parent {meta.get('parent')}) to {topic}: "
          f"every worker switches to it between two micro-batches")
    return 0


def add_cli(sub: Any) -> None:
    from stream.cli.common import add_common
    from stream.cli.worker import add_worker_flags

    p = sub.add_parser("trainer", help="run the online trainer alone (no serving); "
                                       "run workers with SEQSTREAM_ONLINE_TRAINER=external")
    add_worker_flags(p)
    _online_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("model", help="model versions on model-updates: list, rollback, publish")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    msub.required = True
    for name, help_ in (("list", "versions with their metrics"),
                        ("rollback", "republish VERSION as the newest version"),
                        ("publish", "publish a checkpoint (e.g. a new offline model) as the newest version")):
        q = msub.add_parser(name, help=help_)
        if name == "list":
            q.add_argument("--json", action="store_true")
        if name == "rollback":
            q.add_argument("version", type=int)
        if name == "publish":
            q.add_argument("checkpoint")
        q.add_argument("--app-id", default=None)
        add_common(q)
        q.set_defaults(func=cmd_model)


# ============================================================================ stand-alone entry


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stream.online ...` is `seqstream ...` (kept for scripts written before the
    CLI wired this module in)."""
    from stream.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
