"""Cost of the churn sweep with a million users on one worker.

The sweep never scans the table: it pops due users from a per-partition heap (stream/churn.py
DueIndex), so a sweep costs O(due users · log n) and an idle sweep is near free. Measures, for
--users users over --partitions partitions: the index update per event (done for every scored
event), an idle sweep, a sweep that finds 1% of users due, and the index's memory.

    python bench/bench_churn_sweep.py [--users 1000000] [--partitions 8] [--repeat 5]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.churn import DueIndex  # noqa: E402

DAY = 24 * 3600 * 1000


def build(users: int, partitions: int, seed: int) -> tuple[DueIndex, float]:
    rng = random.Random(seed)
    idx = DueIndex()
    t0 = time.perf_counter()
    for u in range(users):
        idx.update(u % partitions, u, rng.randrange(30 * DAY))
    return idx, (time.perf_counter() - t0) / users


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    update_us, idle_ms, due_ms = [], [], []
    for r in range(args.repeat):
        idx, per_update = build(args.users, args.partitions, r)
        update_us.append(per_update * 1e6)
        t0 = time.perf_counter()
        for part in range(args.partitions):
            idx.pop_due(part, -1)  # nothing due
        idle_ms.append((time.perf_counter() - t0) * 1000)
        cutoff = int(0.01 * 30 * DAY)  # about 1% of users due
        t0 = time.perf_counter()
        n_due = sum(len(idx.pop_due(part, cutoff)) for part in range(args.partitions))
        due_ms.append((time.perf_counter() - t0) * 1000)
    tracemalloc.start()
    idx, _ = build(args.users, args.partitions, 99)
    mem_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    print(f"command: python bench/bench_churn_sweep.py {' '.join(sys.argv[1:])}")
    print(f"{args.users:,} users over {args.partitions} partitions, medians of {args.repeat}\n")
    print("| measure | value |\n|---|---|")
    print(f"| index update per scored event | {statistics.median(update_us):.2f} µs |")
    print(f"| idle sweep (nobody due) | {statistics.median(idle_ms):.3f} ms |")
    print(f"| sweep finding {n_due:,} due users (~1%) | {statistics.median(due_ms):.1f} ms |")
    print(f"| index memory | {mem_mb:.0f} MiB ({mem_mb * 2**20 / args.users:.0f} B/user) |")


if __name__ == "__main__":
    main()
