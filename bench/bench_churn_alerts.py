"""Churn on the generator's ground truth, through a real worker.

1. train a model on one generated log (seed S+1), churn horizon = the alert inactivity;
2. replay a different log (seed S, same distribution) at max speed through a worker whose alert
   risk threshold is 0, so every quiet user is alerted and each alert carries its risk;
3. precision and recall of the open alerts at the end against the ground-truth churners, at
   several risk thresholds (an alert is kept when its risk >= the threshold);
4. churn ROC-AUC / PR-AUC at each user's last event: the model's churn risk against a
   recency/frequency logistic regression fitted on the training log.

    python bench/bench_churn_alerts.py [--users 1500] [--events 45000] [--inactivity-days 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from models.evaluate.churn import LogisticRegression  # noqa: E402
from models.evaluate.metrics import average_precision, roc_auc  # noqa: E402
from models.checkpoint import save_checkpoint  # noqa: E402
from models.synthetic import GeneratorConfig, generate  # noqa: E402
from models.train.config import TrainConfig  # noqa: E402
from models.train.run import train_model  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.kafka import explicit_bootstrap  # noqa: E402
from stream.replay.loop import replay_events  # noqa: E402
from stream.replay.producer import Replayer  # noqa: E402
from stream.topics import create_topics, delete_topics  # noqa: E402
from tests.integration.workers import WorkerProcess, consume_until  # noqa: E402

DAY_MS = 24 * 3600 * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--events", type=int, default=45_000)
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--inactivity-days", type=float, default=3)
    p.add_argument("--thresholds", default="0,0.1,0.2,0.3,0.5")
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

    bootstrap = explicit_bootstrap()
    if not bootstrap:
        from stream.broker.embedded import EmbeddedBroker

        broker = EmbeddedBroker()
        broker.start()
        bootstrap = broker.bootstrap
    tag = uuid.uuid4().hex[:6]
    settings = Settings(prefix=f"churn{tag}.", app_id=f"churn-{tag}", broker=bootstrap)
    create_topics(bootstrap, settings, 4)
    worker = WorkerProcess(settings, model, work / "state", work / "worker.log",
                           "--churn-inactivity-ms", str(inactivity), "--churn-risk-threshold",
                           "0", "--churn-sweep-s", "1", "--allowed-lateness-ms", "0",
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
    last_msg: dict[int, dict] = {}
    for m in sorted(alerts, key=lambda m: m.get("alert_ts") or m.get("returned_ts")):
        last_msg[m["user_id"]] = m
    open_alerts = {u: m["risk"] for u, m in last_msg.items() if m["type"] == "churn"}
    returned = sum(m["type"] == "returned" for m in alerts)

    # churn scores at each user's last event: the model's risk vs recency/frequency
    risk_at_last: dict[int, tuple[int, float]] = {}
    for r in preds:
        m = msgpack.unpackb(r.value, raw=False)
        u, ts = m["user_id"], m["event"]["ts"]
        if ts >= risk_at_last.get(u, (-1, 0.0))[0]:
            risk_at_last[u] = (ts, m["churn_risk"])

    def rf_features(log) -> tuple[list[int], np.ndarray]:
        prev: dict[int, int] = {}
        gap: dict[int, float] = {}
        count: dict[int, int] = {}
        for u, ts in zip(log.user_id.tolist(), log.ts_ms.tolist()):
            gap[u] = (ts - prev[u]) / 1000.0 if u in prev else 0.0
            prev[u] = ts
            count[u] = count.get(u, 0) + 1
        users = sorted(count)
        return users, np.array([[np.log1p(gap[u]), np.log(count[u])] for u in users])

    tr_users, tr_x = rf_features(train_log)
    baseline = LogisticRegression().fit(tr_x, [u in train_log.churners for u in tr_users])
    te_users, te_x = rf_features(test_log)
    labels = np.array([u in test_log.churners for u in te_users])
    model_scores = np.array([risk_at_last[u][1] for u in te_users])
    base_scores = baseline.predict_proba(te_x)

    print(f"command: python bench/bench_churn_alerts.py {' '.join(sys.argv[1:])}")
    print(f"{len(test_log)} events, {len(last)} users ({len(test_log.churners)} churners), "
          f"{len(preds)} predictions in {elapsed:.0f}s; inactivity {args.inactivity_days} days; "
          f"{len(truth)} churners quiet that long by the end, {len(quiet)} users quiet that long "
          f"in all, {returned} alerts closed by `returned`\n")
    print("| alert risk threshold | open alerts | precision | recall |\n|---|---|---|---|")
    for t in (float(x) for x in args.thresholds.split(",")):
        kept = {u for u, risk in open_alerts.items() if risk >= t}
        tp = len(kept & truth)
        print(f"| {t:g} | {len(kept)} | {tp / max(len(kept), 1):.3f} | {tp / max(len(truth), 1):.3f} |")
    print("\n| churn score at each user's last event | ROC-AUC | PR-AUC |\n|---|---|---|")
    print(f"| model churn head | {roc_auc(model_scores, labels):.3f} | "
          f"{average_precision(model_scores, labels):.3f} |")
    print(f"| recency/frequency logistic regression | {roc_auc(base_scores, labels):.3f} | "
          f"{average_precision(base_scores, labels):.3f} |")


if __name__ == "__main__":
    main()
