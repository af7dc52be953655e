"""Online learning end to end on the real broker, with real `seqstream worker` processes
(they learn online by default):

1. two workers learn online from their own predictions' samples; the trainer (inside one of
   them) promotes versions to model-updates and BOTH workers end up serving the same version; a
   worker that starts later serves that version before its first prediction; `model rollback`
   republishes an older version under a new number and both workers converge on it.
2. a deliberately harmful trainer (absurd learning rate) plus corrupted sample bytes: no candidate
   is ever promoted, the workers keep serving the checkpoint, the bad samples are counted.
"""
from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer

from models.checkpoint import save_checkpoint
from models.config import ModelConfig
from models.gru import SeqModel
from models.vocab import Vocab
from models.online.learner import OnlineConfig, OnlineLearner
from models.online.samples import decode_sample, encode_sample
from models.schema import LogEvent
from stream.config import Settings
from stream.online.follower import read_store
from tests.integration.workers import WorkerProcess, send_events

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000
N_USERS, N_ITEMS, HOT = 60, 60, range(50, 55)
ONLINE_ENV = {"SEQSTREAM_ONLINE_EVERY_N": "150", "SEQSTREAM_ONLINE_EVERY_S": "2",
              "SEQSTREAM_ONLINE_MIN_SAMPLES": "40", "SEQSTREAM_ONLINE_MIN_EVAL": "20",
              "SEQSTREAM_ONLINE_LR": "0.01", "SEQSTREAM_ONLINE_MARGIN": "0.05"}


def make_events(n: int, seed: int) -> list[LogEvent]:
    """Browsing of items 0..39, and half of the events are one of 5 hot items: learnable."""
    rng = random.Random(seed)
    clock = {u: T0 + u * 1000 for u in range(N_USERS)}
    out = []
    for _ in range(n):
        u = rng.randrange(N_USERS)
        clock[u] += rng.randint(5, 120) * 1000
        item = rng.choice(HOT) if rng.random() < 0.5 else rng.randrange(40)
        out.append(LogEvent(u, item, "click", clock[u], category_id=item % 6))
    return out


def base_model(trained: bool) -> tuple[SeqModel, Vocab, Vocab]:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=N_ITEMS + 2, n_categories=8, hidden=16, emb=16, ring=20, attn=16, dropout=0.0)
    model = SeqModel(cfg).eval()
    items, cats = Vocab(np.arange(N_ITEMS), N_ITEMS + 2), Vocab(np.arange(6), 8)
    model.set_valid(len(items), len(cats))
    if trained:  # a decent serving model: a few rounds of the learner on the same pattern
        learner = OnlineLearner(model, items, cats, version=3,
                                config=OnlineConfig(lr=1e-2, batch=64, max_steps=10, negatives=32,
                                                    min_eval=10, margin=0.5, device="cpu"))
        rng = random.Random(5)
        for _ in range(6):
            samples = []
            for _ in range(200):
                L = rng.randint(2, 10)
                its = [rng.choice(HOT) if rng.random() < 0.5 else rng.randrange(40) for _ in range(L)]
                samples.append(decode_sample(encode_sample(0, its, [i % 6 for i in its], [0] * L,
                                                           [T0 + 1000 * k for k in range(L)])))
            learner.learn_many(samples)
        model = learner.serving.cpu()
    return model, items, cats


def write_checkpoint(path: Path, trained: bool) -> Path:
    model, items, cats = base_model(trained)
    save_checkpoint(path, model, items, cats, version=3, meta={"test": True})
    return path


class Worker(WorkerProcess):
    def __init__(self, settings: Settings, model: Path, data_dir: Path, log: Path, env: dict) -> None:
        super().__init__(settings, model, data_dir, log, "--device", "cpu", env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def served(self) -> list[int]:
        """Versions this worker switched to, in order (startup load and hot swaps)."""
        return [int(v) for v in re.findall(r"(?:now serving model version|serving version) (\d+)", self.text())]

    def ready(self) -> bool:
        return "Worker ready" in self.text()


def wait_for(cond, timeout_s: float, what: str, workers=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f"worker exited early:\n{w.text()[-3000:]}")
        time.sleep(0.5)
    tails = "\n---\n".join(w.text()[-2500:] for w in workers)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def latest_versions_by_partition(bootstrap: str, topic: str, since_ts: int, timeout_s: float = 20):
    """model_version of the newest prediction per partition among events with ts >= since_ts."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    out: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < 2:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    m = msgpack.unpackb(r.value, raw=False)
                    if m["event"]["ts"] >= since_ts:
                        out[tp.partition] = m["model_version"]
    finally:
        consumer.close()
    return out


def run_cli(settings: Settings, *args: str) -> str:
    cmd = [sys.executable, "-m", "stream.cli", "model", *args, "--broker", settings.broker,
           "--prefix", settings.prefix]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_workers_converge_on_online_versions_and_rollback(kafka_bootstrap, deployment, tmp_path):
    settings = deployment
    ckpt = write_checkpoint(tmp_path / "model.pt", trained=False)
    a = Worker(settings, ckpt, tmp_path / "a", tmp_path / "a.log", ONLINE_ENV)
    b = Worker(settings, ckpt, tmp_path / "b", tmp_path / "b.log", ONLINE_ENV)
    c = None
    try:
        wait_for(lambda: a.ready() and b.ready(), 60, "both workers ready", (a, b))
        send_events(kafka_bootstrap, settings, make_events(1500, seed=1))
        # the trainer (one of the two) promotes at least one online version
        store = wait_for(lambda: (s := read_store(kafka_bootstrap, settings.model_updates_topic))
                         and any(m.get("source") == "online" for m in s.manifests.values()) and s,
                         60, "an online version on model-updates", (a, b))
        assert store.manifests[3]["source"] == "checkpoint"  # the base, kept as a rollback target

        def quiet_head():  # no new version for 3 s: the trainer has caught up
            s1 = read_store(kafka_bootstrap, settings.model_updates_topic)
            time.sleep(3)
            s2 = read_store(kafka_bootstrap, settings.model_updates_topic)
            return s2.max_version if s1.max_version == s2.max_version else None

        head = wait_for(quiet_head, 40, "the trainer to settle", (a, b))
        assert head > 3
        online = read_store(kafka_bootstrap, settings.model_updates_topic).manifests[head]
        # the gate's own rule (margin 0.05); manifests round metrics to 6 decimals, and a tie at
        # the margin (19/30 against 0.95 * 20/30) must not fail on that rounding
        assert online["metrics"]["candidate"]["hr@20"] >= online["metrics"]["serving"]["hr@20"] * 0.95 - 1e-6
        # BOTH workers swap to the newest version at their next micro-batch: probe them with the
        # first events of new users (no context: no training samples, so no new round)
        probe_ts = T0 + 10**10
        probes = [LogEvent(1000 + u, 1, "click", probe_ts + u, category_id=1) for u in range(N_USERS)]
        send_events(kafka_bootstrap, settings, probes)
        assert latest_versions_by_partition(kafka_bootstrap, settings.predictions_topic, probe_ts) == \
            {0: head, 1: head}
        assert a.served()[-1] == head and b.served()[-1] == head

        # a worker that starts now loads the newest version before it serves anything (b's
        # partitions move: at-least-once replays may feed the trainer a round, so head may grow)
        b.stop()
        c = Worker(settings, ckpt, tmp_path / "c", tmp_path / "c.log", ONLINE_ENV)
        wait_for(c.ready, 60, "worker c ready", (a, c))
        text = c.text()
        loaded = re.search(r"serving version (\d+) from model-updates", text)
        assert loaded and int(loaded.group(1)) >= head, text[-2000:]
        assert loaded.start() < text.index("Worker ready")

        # rollback: version 3 republished as a new number (parent 3); every worker converges on it
        out = run_cli(settings, "rollback", "3")
        rolled = int(re.search(r"published version (\d+)", out).group(1))
        assert rolled > int(loaded.group(1))
        time.sleep(2)
        probe2 = probe_ts + 10**6
        send_events(kafka_bootstrap, settings, [LogEvent(2000 + u, 2, "click", probe2 + u, category_id=1)
                                                for u in range(N_USERS)])
        wait_for(lambda: rolled in a.served() and rolled in c.served(), 30,
                 "both workers on the rollback version", (a, c))
        versions = latest_versions_by_partition(kafka_bootstrap, settings.predictions_topic, probe2)
        assert set(versions) == {0, 1} and len(set(versions.values())) == 1, versions
        assert min(versions.values()) >= rolled
        listing = run_cli(settings, "list")
        assert re.search(rf"^\s+{rolled}\s+3\s+rollback", listing, re.M), listing
        assert re.search(r"^\s+3\s+-\s+checkpoint", listing, re.M), listing
    finally:
        for w in (a, b, c):
            if w is not None:
                w.stop()


def test_harmful_updates_are_not_promoted(kafka_bootstrap, deployment, tmp_path):
    settings = deployment
    ckpt = write_checkpoint(tmp_path / "model.pt", trained=True)
    env = {**ONLINE_ENV, "SEQSTREAM_ONLINE_LR": "30"}  # a deliberately destructive trainer
    w = Worker(settings, ckpt, tmp_path / "w", tmp_path / "w.log", env)
    try:
        wait_for(w.ready, 60, "worker ready", (w,))
        # corrupted sample bytes straight into training-samples: dropped and counted
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i in range(25):
            producer.send(settings.topic("training-samples"), key=b"1", value=b"\xc1garbage%d" % i)
        producer.flush(10)
        producer.close()
        send_events(kafka_bootstrap, settings, make_events(1200, seed=2))

        def rounds_done():
            s = read_store(kafka_bootstrap, settings.model_updates_topic)
            st = s.status or {}
            return s if st.get("samples_in", 0) >= 1000 and st.get("bad_samples") == 25 else None

        store = wait_for(rounds_done, 60, "the trainer to see every sample", (w,))
        assert {m["source"] for m in store.manifests.values()} == {"checkpoint"}, store.manifests
        decisions = re.findall(r"trainer round \d+: \d+ samples, (\w+)", w.text())
        assert "rejected" in decisions and "promoted" not in decisions, decisions
        assert set(w.served()) <= {3}
    finally:
        w.stop()
