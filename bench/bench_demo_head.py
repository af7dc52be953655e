"""Does the demo model's next-action head follow carts? Train a model on the demo's generated
history (as stream/demo.py does, with TrainConfig overrides), then read its P(next action) after
each of the first events of the demo's live log, grouped by that event's action, beside what
followed.

    python bench/bench_demo_head.py ['{"epochs": 3, "w_action": 2.0}'] [--events 30000] [--live 40000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from models.checkpoint import save_checkpoint
from models.evaluate.data import EventTable, build_eval_data
from models.schema import ACTIONS
from models.synthetic import GeneratorConfig, generate
from models.train.config import TrainConfig
from models.train.ranker import GRURanker
from models.train.run import train_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="?", default='{"epochs": 3, "w_action": 2.0}',
                    help="TrainConfig overrides, JSON (default: the demo's)")
    ap.add_argument("--events", type=int, default=30_000, help="history events (the demo's 30000)")
    ap.add_argument("--live", type=int, default=40_000, help="live-log events to read")
    ap.add_argument("--seed", type=int, default=7, help="the demo's --seed")
    args = ap.parse_args()
    kw = json.loads(args.overrides)
    t = time.time()
    log = generate(GeneratorConfig(users=1000, events=args.events, seed=args.seed))
    ck = train_model(log.events(), TrainConfig(**{"epochs": 1, "ring": 50, "cutoff_views": (),
                                                  "seed": args.seed, **kw}))
    path = Path(tempfile.mkdtemp(prefix="bench-demo-head-")) / "model.pt"
    save_checkpoint(path, ck.model, ck.item_vocab, ck.category_vocab, version=1, meta={})
    print(f"trained in {time.time() - t:.0f} s with {kw} on {args.events} events")
    live = generate(GeneratorConfig(users=2000, events=200_000, seed=args.seed + 1))
    data = build_eval_data(EventTable.from_events(live.events(0, args.live)), "item")
    ranker = GRURanker(checkpoint=str(path))
    ranker.fit(data)
    idx = np.flatnonzero(np.arange(data.n_events) > data.start)
    p = ranker.action_probs(data, idx)
    last, y = data.action[idx - 1], data.action[idx]
    for k, a in enumerate(ACTIONS):
        m = last == k
        print(f"after a {a}: n {m.sum()}, P(purchase) {p[m, 2].mean():.3f} (seen {(y[m] == 2).mean():.3f}), "
              f"P(cart) {p[m, 1].mean():.3f} (seen {(y[m] == 1).mean():.3f})")


if __name__ == "__main__":
    main()
