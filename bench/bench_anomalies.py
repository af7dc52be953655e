"""Abnormal-behaviour alerts on the generator's labelled anomalies, offline (no broker).

Per seed: generate a log, inject N bots, N brushing users and N bursts
(models/synthetic_anomalies.py), run models.anomaly.observe over it in event-time order at the
default thresholds, and score the alerts per kind against the labels:

- precision: alerted users of kind K who are labelled K / alerted users of kind K (a burst alert
  counts only inside the labelled burst, from its start to its end plus one minute);
- recall: labelled K users with a kind-K alert / labelled K users;
- normal flagged: unlabelled users with any burst/bot/brushing alert / unlabelled users.

Surprise needs a model's NLL: here an online item-popularity model (-log of the Laplace-smoothed
share of the item among all events so far), a stand-in for the GRU's next-item NLL; it is
reported apart, as no injected kind is defined by it. The baseline: an alert when a user has
at least T events in the last 60 s (one per episode, re-armed below T/2); its precision and
normal-flagged rate are over all kinds at once, as it cannot tell them apart.

    python bench/bench_anomalies.py [--seeds 0,1,2,3,4] [--users 2000] [--events 100000]
        [--anomalies 20] [--per-min 20]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.anomaly import AnomalyPolicy, AnomalyStats, Population, observe  # noqa: E402
from models.synthetic import GeneratorConfig, generate  # noqa: E402
from models.synthetic_anomalies import inject_anomalies  # noqa: E402

LABELLED = ("bot", "brushing", "burst")
BURST_SLACK_MS = 60_000


def run_seed(seed: int, args: argparse.Namespace, policy: AnomalyPolicy) -> dict:
    cfg = GeneratorConfig(users=args.users, events=args.events, items=args.items,
                          categories=min(200, args.items), seed=seed)
    log = inject_anomalies(generate(cfg), args.anomalies)
    labels = {int(u): k for u, k in log.anomalies["users"].items()}
    bursts = {e["user_id"]: (e["start_ts"], e["end_ts"] + BURST_SLACK_MS)
              for e in log.anomalies["episodes"] if e["kind"] == "burst"}
    stats: dict[int, AnomalyStats] = {}
    pop = Population()
    counts: dict[int, int] = {}
    total = 0
    recent: dict[int, deque] = {}
    base_open: set[int] = set()
    alerts: list[tuple[int, str, int]] = []  # user, kind, ts
    base_alerts: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    cols = zip(log.user_id.tolist(), log.item_id.tolist(), log.action.tolist(), log.ts_ms.tolist())
    for u, item, action, ts in cols:
        c = counts.get(item, 0)
        nll = -math.log((c + 1) / (total + len(counts) + 1))
        counts[item] = c + 1
        total += 1
        st = stats.get(u)
        if st is None:
            st = stats[u] = AnomalyStats()
        for a in observe(st, u, ts, item, action, nll, pop, policy):
            alerts.append((u, a.kind, ts))
        q = recent.setdefault(u, deque())
        q.append(ts)
        while q[0] <= ts - 60_000:
            q.popleft()
        if u in base_open:
            if len(q) < args.per_min / 2:
                base_open.discard(u)
        elif len(q) >= args.per_min:
            base_open.add(u)
            base_alerts.append((u, ts))
    elapsed = time.perf_counter() - t0

    def hit(u: int, kind: str, ts: int) -> bool:
        if labels.get(u) != kind:
            return False
        return kind != "burst" or bursts[u][0] <= ts <= bursts[u][1]

    normal = [u for u in stats if u not in labels]
    out: dict = {"events": len(log), "us_per_event": 1e6 * elapsed / len(log)}
    for kind in LABELLED:
        alerted = {u for u, k, _ in alerts if k == kind}
        good = {u for u, k, ts in alerts if k == kind and hit(u, kind, ts)}
        truth = [u for u, k in labels.items() if k == kind]
        out[f"{kind}_precision"] = len(good) / max(len(alerted), 1)
        out[f"{kind}_recall"] = len(good) / max(len(truth), 1)
        out[f"{kind}_alerted"] = len(alerted)
        base_good = {u for u, ts in base_alerts if hit(u, kind, ts)}
        out[f"base_{kind}_recall"] = len(base_good) / max(len(truth), 1)
        surprise = {u for u, k, _ in alerts if k == "surprise" and labels.get(u) == kind}
        out[f"surprise_{kind}_recall"] = len(surprise) / max(len(truth), 1)
    flagged = {u for u, k, _ in alerts if k in LABELLED and u not in labels}
    out["normal_flagged"] = len(flagged) / len(normal)
    surprised = {u for u, k, _ in alerts if k == "surprise" and u not in labels}
    out["surprise_normal_flagged"] = len(surprised) / len(normal)
    out["any_normal_flagged"] = len(flagged | surprised) / len(normal)
    base_users = {u for u, _ in base_alerts}
    base_good = {u for u, ts in base_alerts if u in labels and hit(u, labels[u], ts)}
    out["base_precision"] = len(base_good) / max(len(base_users), 1)
    out["base_normal_flagged"] = len(base_users - set(labels)) / len(normal)
    out["normal_users"] = len(normal)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--anomalies", type=int, default=20, help="abnormal users per kind")
    p.add_argument("--per-min", type=float, default=20, help="baseline: events in 60 s")
    args = p.parse_args()
    policy = AnomalyPolicy()
    runs = [run_seed(int(s), args, policy) for s in args.seeds.split(",")]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"command: python bench/bench_anomalies.py {' '.join(sys.argv[1:])}")
    print(f"seeds {args.seeds}; {args.users} users, {args.events} events (+ injected: "
          f"{int(med('events')) - args.events}), {args.anomalies} abnormal users per kind; "
          f"{med('normal_users'):.0f} normal users; detector {med('us_per_event'):.0f} us/event; "
          f"medians over {len(runs)} seeds\n")
    print("| detector | kind | precision | recall | normal users flagged |\n|---|---|---|---|---|")
    for kind in LABELLED:
        print(f"| models.anomaly (defaults) | {kind} | {med(f'{kind}_precision'):.2f} | "
              f"{med(f'{kind}_recall'):.2f} | |")
    print(f"| models.anomaly (defaults) | all three | | | {100 * med('normal_flagged'):.2f}% |")
    for kind in LABELLED:
        print(f"| >= {args.per_min:g} events/min baseline | {kind} | | "
              f"{med(f'base_{kind}_recall'):.2f} | |")
    print(f"| >= {args.per_min:g} events/min baseline | any | {med('base_precision'):.2f} | | "
          f"{100 * med('base_normal_flagged'):.2f}% |")
    print(f"| surprise (popularity NLL, z >= {policy.surprise_z:g}) | recall on bot / brushing / "
          f"burst: {med('surprise_bot_recall'):.2f} / {med('surprise_brushing_recall'):.2f} / "
          f"{med('surprise_burst_recall'):.2f} | | | {100 * med('surprise_normal_flagged'):.2f}% |")
    print(f"| models.anomaly, all four kinds | | | | {100 * med('any_normal_flagged'):.2f}% |")
    print("\nper seed: " + "; ".join(
        f"bot {r['bot_recall']:.2f} brushing {r['brushing_recall']:.2f} burst {r['burst_recall']:.2f} "
        f"normal {100 * r['normal_flagged']:.2f}%" for r in runs))


if __name__ == "__main__":
    main()
