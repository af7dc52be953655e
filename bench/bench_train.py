"""Training throughput of models/train/ (events/s), printed with the command line.

    python bench/bench_train.py                       # ../shared/data/taobao_users.csv if present
    python bench/bench_train.py --generated 20000     # synthetic events instead
Prints per-epoch events/s and their median. A figure, never a timed assertion."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from models.schema import ACTIONS, LogEvent
from models.train.config import TrainConfig
from models.train.run import train_model

DEFAULT_LOG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "taobao_users.csv"


def generated(n: int, seed: int = 0) -> list[LogEvent]:
    """Taobao-like: ~90 events per user, Zipf items, revisits."""
    rng = np.random.default_rng(seed)
    out, t = [], 1_600_000_000_000
    users = max(1, n // 90)
    for i in range(n):
        u = int(rng.integers(0, users))
        item = int(rng.zipf(1.3)) % 20000
        t += int(rng.integers(0, 20_000))
        out.append(LogEvent(u, item, ACTIONS[int(rng.choice(3, p=[0.9, 0.07, 0.03]))], t,
                            category_id=item % 500, row=i))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", default=str(DEFAULT_LOG))
    ap.add_argument("--format", default="taobao")
    ap.add_argument("--generated", type=int, default=0, help="use N synthetic events instead of --log")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--emb", type=int, default=TrainConfig.emb, help="item/category embedding width")
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--batch-events", type=int, default=TrainConfig.batch_events)
    ap.add_argument("--ring", type=int, default=TrainConfig.ring)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.generated or not Path(args.log).exists():
        events, source = generated(args.generated or 20000), f"generated ({args.generated or 20000} events)"
    else:
        from models.datasets.reader import read_events
        events, source = list(read_events(args.log, args.format)), args.log
    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, emb=args.emb, batch=args.batch, batch_events=args.batch_events,
                      ring=args.ring, threads=args.threads, progress=False, vocab_cutoff=None)
    ck = train_model(events, cfg)
    rates = ck.meta["events_per_s"]
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    print(f"data: {source}; device {ck.meta['train']['device']}; threads {args.threads}; hidden {args.hidden}; emb {args.emb}; "
          f"batch {args.batch} users (event budget {args.batch_events}); ring {args.ring}")
    print("events/s per epoch:", ", ".join(f"{r:.0f}" for r in rates))
    print(f"median events/s: {np.median(rates[1:] if len(rates) > 1 else rates):.0f} (first epoch excluded: warm-up)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
