"""End-to-end benchmark of the streaming spine through the real broker.

For each pipeline (the faust worker, and a bare aiokafka loop doing the same work as a ceiling):
- max rate: pre-load N events into the input topics, start the pipeline, and time the span from
  its first prediction to its N-th (startup excluded);
- fixed rate: offer R events/s with event time = send time, and take the latency from the event
  time to the prediction's arrival at an independent consumer (p50/p99);
- CPU per event: user + system time of the pipeline process (all threads) and of the local
  broker JVM between the first and the last prediction of the max-rate phase. Unlike events/s it
  hardly moves when the machine's speed drifts, and 2 cores / (CPU per event) bounds the rate.

    python bench/bench_pipeline.py [--events 60000] [--rate 2000] [--seconds 20] [--repeat 3]
                                   [--producer-linger-ms 10] [--worker-args=--no-online]

Uses SEQSTREAM_BROKER if set, else starts the embedded broker. A 10,000-item catalogue, top-20,
H=64. Prints a markdown table; medians over --repeat runs.
"""
from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import msgpack
import numpy as np
import torch
from kafka import KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.checkpoint import save_checkpoint  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.gru import SeqModel  # noqa: E402
from models.vocab import Vocab  # noqa: E402
from models.schema import ACTIONS, LogEvent  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.events import encode_value, input_topic, user_key  # noqa: E402
from stream.topics import create_topics, delete_topics  # noqa: E402

N_ITEMS = 10_000
N_USERS = 20_000


def make_model(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=N_ITEMS + 2, n_categories=202, hidden=64, emb=64, dropout=0.0)
    model = SeqModel(cfg).eval()
    items, cats = Vocab(np.arange(N_ITEMS), N_ITEMS + 2), Vocab(np.arange(200), 202)
    model.set_valid(len(items), len(cats))
    save_checkpoint(path, model, items, cats, version=1, meta={"bench": True})
    return path


def event_stream(seed: int):
    rng = random.Random(seed)
    weights = [0.92, 0.055, 0.025]
    while True:
        u = rng.randrange(N_USERS)
        yield LogEvent(u, int(rng.paretovariate(1.2)) % N_ITEMS, rng.choices(ACTIONS, weights)[0],
                       0, category_id=rng.randrange(200))


def produce(bootstrap: str, settings: Settings, n: int, rate: float | None, seed: int,
            linger_ms: int = 10) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=256 * 1024)
    start = time.monotonic()
    for i, ev in enumerate(event_stream(seed)):
        if i >= n:
            break
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ev = LogEvent(ev.user_id, ev.item_id, ev.action, int(time.time() * 1000), ev.category_id)
        producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                      value=encode_value(ev))
    producer.flush(60)
    producer.close()


def start_pipeline(kind: str, bootstrap: str, settings: Settings, model: Path, workdir: Path,
                   worker_args: str = ""):
    if kind == "faust":
        cmd = [sys.executable, "-m", "stream.cli", "worker", "--broker", bootstrap, "--prefix",
               settings.prefix, "--app-id", settings.app_id, "--model", str(model),
               "--data-dir", str(workdir / "state"), "--log-level", "warning",
               *shlex.split(worker_args)]
    else:
        cmd = [sys.executable, str(REPO / "bench" / "plain_loop.py"), "--broker", bootstrap,
               "--prefix", settings.prefix, "--model", str(model), "--data-dir", str(workdir / "plain")]
    log = open(workdir / f"{kind}.log", "wb")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def stop_pipeline(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """Local Kafka broker JVMs (the embedded one, or a dev broker on this machine)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"kafka.Kafka" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


class Collector:
    """An independent consumer of the predictions topic, started before anything is offered so
    that its own start-up (connect, metadata, first fetch) is not counted as latency."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                      enable_auto_commit=False, group_id=None,
                                      fetch_max_bytes=16 * 2**20)

    def take(self, want: int, timeout_s: float,
             on_first: Callable[[], None] | None = None) -> list[tuple[float, int]]:
        """(arrival wall time, event ts) for the next `want` predictions, or fewer at timeout.
        `on_first` is called when the first of them arrives."""
        out: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=100, max_records=5000).values():
                now = time.time()
                if not out and on_first is not None:
                    on_first()
                for r in records:
                    out.append((now, msgpack.unpackb(r.value, raw=False)["event"]["ts"]))
        return out

    def close(self) -> None:
        self.consumer.close()


def one_run(kind: str, bootstrap: str, model: Path, args: argparse.Namespace, seed: int) -> dict:
    tag = uuid.uuid4().hex[:6]
    settings = Settings(prefix=f"bench{tag}.", app_id=f"bench-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, args.partitions)
    work = Path(tempfile.mkdtemp(prefix="seqstream-bench-"))
    try:
        # max rate: everything is waiting in the topics before the pipeline starts
        produce(bootstrap, settings, args.events, None, seed)
        collector = Collector(bootstrap, settings.predictions_topic)
        proc = start_pipeline(kind, bootstrap, settings, model, work, args.worker_args)
        try:
            # CPU per event while draining the backlog: robust to other load on the machine,
            # and it says what 2 cores can sustain at best
            brokers = broker_pids()
            cpu0: list[float] = []
            got = collector.take(args.events, args.timeout, on_first=lambda: cpu0.extend(
                (cpu_seconds([proc.pid]), cpu_seconds(brokers))))
            cpu1 = (cpu_seconds([proc.pid]), cpu_seconds(brokers))
            arrivals = sorted(t for t, _ in got)
            throughput = ((len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9)
                          if len(arrivals) > 1 else 0.0)
            # fixed rate: offered load with event time = send time, measured by the same
            # (already running) collector
            n_fixed = int(args.rate * args.seconds)
            t = threading.Thread(target=produce, args=(bootstrap, settings, n_fixed, args.rate, seed + 1,
                                                         args.producer_linger_ms))
            t.start()
            fixed = collector.take(n_fixed, args.seconds + args.timeout)
            t.join()
        finally:
            collector.close()
            stop_pipeline(proc)
        lat = np.array([1000 * arr - ts for arr, ts in fixed]) if fixed else np.array([np.nan])
        per_event = 1000.0 / max(len(got) - 1, 1)
        return {"kind": kind, "throughput": throughput, "max_done": len(got),
                "cpu_ms": (cpu1[0] - cpu0[0]) * per_event if cpu0 else float("nan"),
                "broker_cpu_ms": (cpu1[1] - cpu0[1]) * per_event if cpu0 else float("nan"),
                "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                "fixed_done": len(fixed), "fixed_sent": n_fixed}
    finally:
        delete_topics(bootstrap, settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=60_000, help="events for the max-rate phase")
    p.add_argument("--rate", type=float, default=2000.0, help="offered events/s for latency")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the fixed-rate phase")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--kinds", default="faust,plain")
    p.add_argument("--producer-linger-ms", type=int, default=10,
                   help="the fixed-rate producer's linger: part of the measured latency (0: a "
                        "latency-minded producer)")
    p.add_argument("--worker-args", default="",
                   help="extra `seqstream worker` arguments, e.g. --worker-args=--no-online")
    args = p.parse_args()
    from stream.kafka import resolve_bootstrap

    bootstrap = resolve_bootstrap()  # SEQSTREAM_BROKER, else the embedded broker (started)
    model = make_model(Path(tempfile.mkdtemp()) / "bench-model.pt")
    results: dict[str, list[dict]] = {}
    for r in range(args.repeat):
        for kind in args.kinds.split(","):  # alternate kinds so drift on the machine hits both
            res = one_run(kind, bootstrap, model, args, seed=r)
            print(f"run {r} {kind}: {res}", flush=True)
            results.setdefault(kind, []).append(res)
    print(f"\ncommand: python bench/bench_pipeline.py {' '.join(sys.argv[1:])}")
    print(f"{args.events} events max rate, {args.rate:.0f}/s offered for {args.seconds:.0f}s, "
          f"{args.partitions} partitions, {N_ITEMS} items, top-20, H=64; medians of {args.repeat}\n")
    print("| pipeline | max rate (events/s) | p50 latency at offered rate (ms) | p99 (ms) | delivered at offered rate |")
    print("|---|---|---|---|---|")
    med = {}
    for kind, runs in results.items():
        med[kind] = {k: statistics.median(r[k] for r in runs)
                     for k in ("throughput", "p50", "p99", "cpu_ms", "broker_cpu_ms")}
        done = f"{min(r['fixed_done'] for r in runs)}/{runs[0]['fixed_sent']}"
        print(f"| {kind} | {med[kind]['throughput']:.0f} | {med[kind]['p50']:.0f} | "
              f"{med[kind]['p99']:.0f} | {done} |")
    print("\nCPU per event at max rate (ms of one core; pipeline process, all threads / broker):")
    for kind in med:
        print(f"- {kind}: {med[kind]['cpu_ms']:.3f} / {med[kind]['broker_cpu_ms']:.3f}")
    if "faust" in med and "plain" in med:
        print(f"\nfaust / plain-loop throughput ratio: "
              f"{med['faust']['throughput'] / max(med['plain']['throughput'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
