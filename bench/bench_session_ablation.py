"""Training-setting ablations under ../shared/EVALUATION.md's protocol (frozen mode), as
`seqstream evaluate --train` scores the model: one TrainConfig override per run, several seeds.

    python bench/bench_session_ablation.py NAME --seeds 0,1,2 --set '{"hidden": 100, "emb": 100}'
        [--log ../shared/data/yoochoose_tr.jsonl --format jsonl --target item]

Prints one line per seed and a summary line (mean ± population sd of R@20 and MRR@20, seconds
per seed). BENCHMARKS.md, "Session clicks", holds the table it produced.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.datasets.reader import read_events  # noqa: E402
from models.evaluate.data import EventTable, build_eval_data  # noqa: E402
from models.evaluate.protocol import evaluate_data  # noqa: E402
from models.train.config import TrainConfig  # noqa: E402
from models.train.ranker import GRURanker  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", default="{}", help="TrainConfig overrides as JSON")
    p.add_argument("--log", default=str(REPO.parent / "shared" / "data" / "yoochoose_tr.jsonl"))
    p.add_argument("--format", default="jsonl")
    p.add_argument("--target", default="item")
    args = p.parse_args()
    try:
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.set).items()}
        seeds = [int(s) for s in args.seeds.split(",")]
        base = asdict(TrainConfig())
        unknown = sorted(set(overrides) - set(base))
        if unknown:
            raise ValueError(f"not TrainConfig fields: {', '.join(unknown)}")
    except ValueError as err:
        p.error(str(err))
    if not Path(args.log).is_file():
        p.error(f"no such log: {args.log}")
    data = build_eval_data(EventTable.from_events(read_events(args.log, args.format)), args.target)
    rows = []
    for seed in seeds:
        cfg = TrainConfig(**{**base, **overrides, "seed": seed, "progress": False, "threads": 1})
        t0 = time.time()
        report = evaluate_data(data, {"model": GRURanker(cfg)}, "frozen", include_baselines=False,
                               progress=False, churn_horizon_s=None)
        m = report["models"]["model"]
        rows.append((m["R@20"], m["MRR@20"], time.time() - t0))
        print(f"{args.name} seed {seed}: R@20 {rows[-1][0]:.4f} MRR@20 {rows[-1][1]:.4f} "
              f"{rows[-1][2]:.0f} s", flush=True)
    a = np.array(rows)
    print(f"{args.name}\t{json.dumps(overrides)}\tseeds={len(seeds)}\t"
          f"R@20={a[:, 0].mean():.4f}±{a[:, 0].std():.4f}\tMRR@20={a[:, 1].mean():.4f}±{a[:, 1].std():.4f}\t"
          f"{a[:, 2].mean():.0f} s per seed\t{Path(args.log).name}:{args.target}")


if __name__ == "__main__":
    main()
