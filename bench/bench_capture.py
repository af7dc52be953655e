"""What training-sample capture costs the serving path, measured end to end on the real broker.

    python bench/bench_capture.py [--events 30000] [--repeat 3]

One run = fresh topics pre-loaded with the same N events, one worker process
(`python -m stream.cli worker`), throughput = N / (time between the first and the N-th
prediction, by the predictions' broker timestamps; startup excluded). Modes, interleaved in the
same invocation (off, on, off, on, ...) so that machine noise hits both alike:
- off: SEQSTREAM_ONLINE=0 (serving only; still follows model-updates);
- capture: one sample per in-order prediction to training-samples, trainer elsewhere
       (SEQSTREAM_ONLINE_TRAINER=external): the cost of the hook itself, not of training;
- trainer: capture plus the trainer agent inside the worker (the default deployment), taking a
       round every 2000 samples: serving throughput while the model learns.
Also reported from the worker's own counters: the hook's share of batch time. Uses
SEQSTREAM_BROKER if set, else the embedded broker. 10,000-item catalogue, H=64, top-20.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.schema import ACTIONS, LogEvent  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.events import encode_value, input_topic, user_key  # noqa: E402
from stream.topics import create_topics, delete_topics  # noqa: E402

from bench_pipeline import N_ITEMS, make_model  # noqa: E402  (same 10,000-item model)

N_USERS = 2_000


def events(n: int, seed: int) -> list[LogEvent]:
    rng = random.Random(seed)
    clock = {u: 1_700_000_000_000 + u for u in range(N_USERS)}
    out = []
    for _ in range(n):
        u = rng.randrange(N_USERS)
        clock[u] += rng.randint(1, 600) * 1000
        item = rng.randrange(N_ITEMS)
        out.append(LogEvent(u, item, rng.choices(ACTIONS, (0.92, 0.055, 0.025))[0], clock[u],
                            category_id=item % 200))
    return out


MODES = {"off": {"SEQSTREAM_ONLINE": "0"},
         "capture": {"SEQSTREAM_ONLINE": "1", "SEQSTREAM_ONLINE_TRAINER": "external"},
         "trainer": {"SEQSTREAM_ONLINE": "1", "SEQSTREAM_ONLINE_TRAINER": "worker",
                     "SEQSTREAM_ONLINE_EVERY_N": "2000"}}


def one_run(bootstrap: str, model: Path, evs: list[LogEvent], mode: str, workdir: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(prefix=f"bc{tag}.", app_id=f"bc-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, partitions=4)
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
        for ev in evs:
            producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev))
        producer.flush(60)
        producer.close()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **MODES[mode]}
        log = workdir / f"worker-{tag}.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker", "--broker", bootstrap, "--prefix",
                 settings.prefix, "--app-id", settings.app_id, "--model", str(model), "--data-dir",
                 str(workdir / tag), "--device", "cpu"], cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, env=env)
            try:
                consumer = KafkaConsumer(settings.predictions_topic, bootstrap_servers=bootstrap,
                                         auto_offset_reset="earliest", group_id=None,
                                         enable_auto_commit=False)
                stamps: list[int] = []
                deadline = time.monotonic() + 600
                while len(stamps) < len(evs) and time.monotonic() < deadline:
                    for records in consumer.poll(timeout_ms=500).values():
                        stamps.extend(r.timestamp for r in records)
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
                consumer.close()
                time.sleep(11)  # one more metrics line with the final counters
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        text = log.read_text(errors="replace")
        span = (max(stamps) - min(stamps)) / 1000.0
        batch_s = re.findall(r"'batches': (\d+), 'mean_batch_ms': ([\d.]+)", text)
        cap = re.findall(r"capture=\{'samples': (\d+), 'skipped': (\d+), 'seconds': ([\d.e-]+)\}", text)
        out = {"eps": len(stamps) / max(span, 1e-9), "n": len(stamps)}
        if batch_s:
            nb, ms = batch_s[-1]
            out["batch_s"] = int(nb) * float(ms) / 1000.0
        if cap:
            out["samples"], out["capture_s"] = int(cap[-1][0]), float(cap[-1][2])
        return out
    finally:
        delete_topics(bootstrap, settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from stream.kafka import resolve_bootstrap
    bootstrap = resolve_bootstrap()  # SEQSTREAM_BROKER, else the embedded broker
    evs = events(args.events, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_model(work / "model.pt")
        res: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(args.repeat):
            for mode in MODES:  # interleaved, so machine noise hits every mode alike
                out = one_run(bootstrap, model, evs, mode, work)
                res[mode].append(out)
                print(f"run {r + 1} {mode}: {out}", file=sys.stderr)
    eps = {m: statistics.median(x["eps"] for x in runs) for m, runs in res.items()}
    print()
    print(f"command: python bench/bench_capture.py {' '.join(sys.argv[1:])}")
    print(f"{args.events} events pre-loaded, 4 partitions, one worker, median of {args.repeat} "
          "interleaved runs:")
    print()
    print("| online learning | events/s | samples sent | hook time / batch time | vs off |")
    print("|---|---|---|---|---|")
    for mode, runs in res.items():
        share = [x["capture_s"] / x["batch_s"] for x in runs if x.get("batch_s") and "capture_s" in x]
        samples = statistics.median(x.get("samples", 0) for x in runs)
        print(f"| {mode} | {eps[mode]:.0f} | {samples:.0f} | "
              f"{statistics.median(share) * 100 if share else float('nan'):.1f}% | "
              f"{100 * eps[mode] / eps['off']:.0f}% |")
    print()
    print(f"capture: {100 * (eps['capture'] - eps['off']) / eps['off']:+.1f}% (target: no worse than -10%); "
          f"trainer in the worker: {100 * eps['trainer'] / eps['off']:.0f}% of serving-only throughput "
          "(target: at least 80%)")


if __name__ == "__main__":
    main()
