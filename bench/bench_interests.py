"""Interest profiles: hit rates by half-life and blend, and how often the worker publishes.

    python bench/bench_interests.py [--log ../shared/data/taobao_users.csv] [--format taobao] [--seed 0]

1. The category task of the evaluation protocol (models/evaluate): one GRU fitted on the train
   split (GRURanker, defaults, `--seed`), then the interests metric (models/evaluate/interests.py:
   next event's category in the top-1 / top-5 interests built from the events before it) for
   each half-life and blend; blend 0 is the plain decayed-count profile.
2. The whole log replayed in event-time order through the worker's Scorer (stream/scoring.py)
   with that model, in micro-batches of `--batch` events: the share of predictions that also
   send a `profiles` message, for each publish threshold; and the replay's events/s with the
   model blend on (default 0.3: one category_logits per wave) and off (blend 0), median of 3.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.datasets.reader import read_events  # noqa: E402
from models.evaluate.data import EventTable, build_eval_data  # noqa: E402
from models.evaluate.interests import evaluate_interests  # noqa: E402
from models.interests import DAY_MS, InterestPolicy  # noqa: E402
from models.train.ranker import GRURanker  # noqa: E402
from stream.events import Event  # noqa: E402
from stream.scoring import Scorer, ScoringModel  # noqa: E402

HALF_LIVES_MS = {"1 h": 3_600_000, "1 day": DAY_MS, "3 days": 3 * DAY_MS, "7 days": 7 * DAY_MS}
BLENDS = (0.0, 0.1, 0.3, 0.5, 1.0)
THRESHOLDS = (0.05, 0.1, 0.2)


def replay(ranker: GRURanker, events: list, policy: InterestPolicy, batch: int) -> tuple[float, int, float]:
    """(profiles per prediction, predictions, seconds in score_batch)."""
    scoring = ScoringModel(ranker.model.eval(), ranker.item_vocab, ranker.cat_vocab, 1, torch.device("cpu"))
    scorer = Scorer(scoring, ring_size=ranker.model.cfg.ring, top_k=20, interests=policy)
    stream = [Event(e.user_id, e.item_id, e.action, e.ts_ms, e.category_id, topic=e.action, offset=i)
              for i, e in enumerate(sorted(events, key=lambda e: (e.ts_ms, e.row)))]
    states: dict = {}
    preds = []
    started = time.perf_counter()
    for s in range(0, len(stream), batch):
        preds += scorer.score_batch(states, stream[s:s + batch])
    took = time.perf_counter() - started
    return sum(p.profile is not None for p in preds) / len(preds), len(preds), took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", default=str(REPO.parent.parent / "shared" / "data" / "taobao_users.csv"))
    ap.add_argument("--format", default="taobao")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    events = list(read_events(args.log, args.format))
    data = build_eval_data(EventTable.from_events(events), "category")
    ranker = GRURanker(seed=args.seed)
    ranker.fit(data)
    print(f"{args.log}: category task, n scored = {len(data.scored_idx)}, GRU seed {args.seed}\n")
    print("| half-life | " + " | ".join(f"blend {b:g} top-1 / top-5" for b in BLENDS) + " |")
    print("|---|" + "---|" * len(BLENDS))
    for label, hl in HALF_LIVES_MS.items():
        cells = []
        for b in BLENDS:
            res = evaluate_interests(data, {"gru": ranker}, half_life_ms=hl, blend=b)
            m = res["models"]["gru"]
            cells.append(f"{m['top1']:.3f} / {m['top5']:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| publish threshold | profiles per prediction | predictions |\n|---|---|---|")
    for t in THRESHOLDS:
        rate, n, _ = replay(ranker, events, InterestPolicy(publish_threshold=t), args.batch)
        print(f"| {t:g} | {rate:.3f} | {n} |")
    print("\n| model blend | replay events/s (median of 3) |\n|---|---|")
    for b in (0.0, 0.3):
        rates = [n / took for _, n, took in (replay(ranker, events, InterestPolicy(blend=b), args.batch)
                                             for _ in range(3))]
        print(f"| {b:g} | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    main()
