"""Real `seqstream worker` processes and topic readers for integration tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.schema import LogEvent
from stream.config import Settings
from stream.events import encode_value, input_topic, user_key

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, settings: Settings, model: Path, data_dir: Path, log: Path,
                 *extra: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "stream.cli", "worker", "--broker", settings.broker,
               "--prefix", settings.prefix, "--app-id", settings.app_id, "--model", str(model),
               "--data-dir", str(data_dir), "--batch-wait-ms", "20", "--batch-max", "64", *extra]
        self.log = log
        self._logf = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                pytest.fail(f"worker exited early:\n{self.tail()}")
            if "Ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        pytest.fail(f"worker not ready in {timeout_s}s:\n{self.tail()}")


def consume_until(bootstrap: str, topic: str, want: int, timeout_s: float,
                  workers: list[WorkerProcess] = (), settle_s: float = 1.0) -> list:
    """Read `topic` from the start until `want` records arrived (or timeout), then a little more
    so that duplicates arriving after the expected count are caught too."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
            for w in workers:
                if not w.alive():
                    pytest.fail(f"worker exited early:\n{w.tail()}")
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
    finally:
        consumer.close()
    return got


def untrained_checkpoint(path: Path, n_items: int, n_categories: int, *, hidden: int = 32,
                         emb: int = 16, version: int = 1) -> Path:
    """A small untrained model whose vocabulary is items 0..n_items-1 and categories
    0..n_categories-1: enough for pipeline tests, which check plumbing, not quality."""
    import numpy as np
    import torch

    from models.checkpoint import save_checkpoint
    from models.config import ModelConfig
    from models.gru import SeqModel
    from models.vocab import Vocab

    torch.manual_seed(0)
    cfg = ModelConfig(n_items=n_items + 2, n_categories=n_categories + 2, hidden=hidden, emb=emb,
                      dropout=0.0)
    model = SeqModel(cfg).eval()
    items = Vocab(np.arange(n_items), n_items + 2)
    cats = Vocab(np.arange(n_categories), n_categories + 2)
    model.set_valid(len(items), len(cats))
    save_checkpoint(path, model, items, cats, version=version, meta={"test": True})
    return path


def send_events(bootstrap: str, settings: Settings, events: list[LogEvent]) -> None:
    """Produce events to their input topics with kafka-python, as a shop would."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sent = [producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev)) for ev in events]
    producer.flush(30)
    for future in sent:  # a failed send raises here, not as a missing prediction much later
        future.get(timeout=30)
    producer.close()
