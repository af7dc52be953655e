"""Precision and recall of churn alerts against the generator's ground truth, through a worker.

1. train a model on one generated log (seed S+1), churn horizon = the alert inactivity;
2. replay a different log (seed S, same distribution) at max speed through a real worker;
3. compare the open alerts at the end (alerted, never returned) with the ground-truth churners
   that had been quiet for the inactivity window by the end of the log.

    python bench/bench_churn_alerts.py [--users 1500] [--events 45000] [--inactivity-days 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.gru import save_checkpoint  # noqa: E402
from models.synthetic import GeneratorConfig, generate  # noqa: E402
from models.train import TrainConfig, train_model  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.replay import Replayer, replay_events  # noqa: E402
from stream.topics import create_topics, delete_topics  # noqa: E402
from tests.integration.workers import WorkerProcess, consume_until  # noqa: E402

DAY_MS = 24 * 3600 * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--events", type=int, default=45_000)
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--inactivity-days", type=float, default=3)
    p.add_argument("--risk", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    inactivity = int(args.inactivity_days * DAY_MS)
    cfg = dict(users=args.users, events=args.events, days=args.days, items=5000, categories=100)
    train_log = generate(GeneratorConfig(seed=args.seed + 1, **cfg))
    test_log = generate(GeneratorConfig(seed=args.seed, **cfg))
    work = Path(tempfile.mkdtemp(prefix="seqstream-churn-"))
    ckpt = train_model(train_log.events(), TrainConfig(epochs=args.epochs, horizon_s=inactivity / 1000,
                                                      seed=args.seed))
    model = work / "model.pt"
    save_checkpoint(model, ckpt.model, ckpt.item_vocab, ckpt.category_vocab, version=1, meta={})

    bootstrap = os.environ.get("SEQSTREAM_BROKER")
    if not bootstrap:
        from stream.broker import EmbeddedBroker

        broker = EmbeddedBroker()
        broker.start()
        bootstrap = broker.bootstrap
    tag = uuid.uuid4().hex[:6]
    settings = Settings(prefix=f"churn{tag}.", app_id=f"churn-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, 4)
    worker = WorkerProcess(settings, model, work / "state", work / "worker.log",
                           "--churn-inactivity-ms", str(inactivity), "--churn-risk-threshold",
                           str(args.risk), "--churn-sweep-s", "1", "--allowed-lateness-ms", "0",
                           "--batch-max", "512")
    try:
        worker.wait_ready(120)
        t0 = time.monotonic()
        replayer = Replayer(bootstrap, prefix=settings.prefix)
        replay_events(test_log.events(), replayer, speed=None, progress=False)
        replayer.close()
        preds = consume_until(bootstrap, settings.predictions_topic, len(test_log), 900, [worker])
        elapsed = time.monotonic() - t0
        alerts = [msgpack.unpackb(r.value, raw=False) for r in
                  consume_until(bootstrap, settings.churn_alerts_topic, 10**9, 8, [worker], settle_s=0)]
    finally:
        worker.stop()
        delete_topics(bootstrap, settings)
    end_ts = int(test_log.ts_ms.max())
    last = {}
    for u, ts in zip(test_log.user_id.tolist(), test_log.ts_ms.tolist()):
        last[u] = ts
    truth = {u for u in test_log.churners if last[u] + inactivity <= end_ts}
    quiet = {u for u, ts in last.items() if ts + inactivity <= end_ts}
    # an alert is still open when the user's last message is the alert (no `returned` after it)
    last_msg = {}
    for m in sorted(alerts, key=lambda m: m.get("alert_ts") or m.get("returned_ts")):
        last_msg[m["user_id"]] = m["type"]
    open_alerts = {u for u, t in last_msg.items() if t == "churn"}
    tp = len(open_alerts & truth)
    precision = tp / max(len(open_alerts), 1)
    recall = tp / max(len(truth), 1)
    returned = sum(m["type"] == "returned" for m in alerts)
    print(f"command: python bench/bench_churn_alerts.py {' '.join(sys.argv[1:])}")
    print(f"{len(test_log)} events, {len(last)} users, {len(preds)} predictions in {elapsed:.0f}s; "
          f"inactivity {args.inactivity_days} days, risk threshold {args.risk}\n")
    print("| measure | value |\n|---|---|")
    print(f"| ground-truth churners quiet ≥ {args.inactivity_days} d at the end | {len(truth)} |")
    print(f"| all users quiet that long (churners or not) | {len(quiet)} |")
    print(f"| open alerts at the end | {len(open_alerts)} |")
    print(f"| precision vs churners | {precision:.3f} |")
    print(f"| recall vs churners | {recall:.3f} |")
    print(f"| alerts closed by a `returned` message | {returned} |")


if __name__ == "__main__":
    main()
