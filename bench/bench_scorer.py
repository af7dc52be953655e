"""The serving fast path against the full mixture, in one run (same model, same inputs).

`SeqModel.predict_top_items` returns exactly `topk(predict(...).item_logits)` (a unit test holds
them equal) without building the [B, V] mixture. Reports rows/s of both at batch B over a V-item
catalogue, medians of --repeat timings.

    python bench/bench_scorer.py [--batch 512] [--items 10000] [--ring 50] [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.config import ModelConfig  # noqa: E402
from models.gru import SeqModel  # noqa: E402
from models.ring import Recent  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--ring", type=int, default=50)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = SeqModel(ModelConfig(n_items=args.items + 2, n_categories=202, dropout=0.0,
                                 ring=args.ring)).eval()
    B, L = args.batch, args.ring
    recent = Recent(torch.randint(2, args.items + 2, (B, L)), torch.randint(2, 202, (B, L)),
                    torch.randint(0, 3, (B, L)), torch.randint(2, 40, (B, L)),
                    torch.ones(B, L, dtype=torch.bool))
    h = torch.randn(B, model.cfg.hidden)

    def full() -> None:
        out = model.predict(h, recent)
        out.item_logits.topk(20, -1)

    def fast() -> None:
        model.predict_top_items(h, recent, 20)

    times: dict[str, list[float]] = {"full mixture + topk": [], "predict_top_items": []}
    with torch.no_grad():
        full(), fast()  # warm up
        for _ in range(args.repeat):  # interleaved
            for name, fn in (("full mixture + topk", full), ("predict_top_items", fast)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    print(f"command: python bench/bench_scorer.py {' '.join(sys.argv[1:])}")
    print(f"batch {B}, {args.items} items, ring {L}, H={model.cfg.hidden}, top-20; medians of "
          f"{args.repeat}\n")
    print("| path | ms per batch | rows/s |\n|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"| {name} | {t * 1000:.1f} | {B / t:,.0f} |")
    print(f"\nspeed-up: {med['full mixture + topk'] / med['predict_top_items']:.1f}x")


if __name__ == "__main__":
    main()
