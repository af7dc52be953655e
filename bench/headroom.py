"""How far can a ranker that puts the user's own history first get? A bound, not a benchmark.

Under ../shared/EVALUATION.md's split (the same scored events as `seqstream evaluate`), each
scored target is either in the user's history (an earlier target of the same user) or new to
them. The policy measured here ranks the user's distinct history first, in a perfect order
(the target first when it is there), then fills the remaining slots with one simple signal:

- pop: train popularity;
- successor: successor counts of the last target (the item-kNN baseline's scores);
- co-occurrence: successor counts of the user's last ten distinct targets, each normalised.

A new target is found only if the filler ranks it within the slots that the history leaves
free. The printout shows R@20 and MRR@20 of that policy for each filler, with the history in a
perfect order (the bound: no model that keeps the history first beats its best row unless it
finds new targets better than these signals) and most recent first (repeat's order: a
heuristic anyone can deploy).

    python bench/headroom.py [--log ../shared/data/taobao_users.csv] [--format taobao] [--target category]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.datasets.reader import read_events  # noqa: E402
from models.evaluate.baselines import ItemKNNRanker  # noqa: E402
from models.evaluate.data import EventTable, build_eval_data  # noqa: E402
from models.evaluate.metrics import ranks_of_targets  # noqa: E402

DEFAULT_LOG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "taobao_users.csv"
K = 20


def filler_scores(knn: ItemKNNRanker, pop_rank: np.ndarray, history: np.ndarray) -> dict[str, np.ndarray]:
    """Scores over all candidates for each filler: signal x |V| + popularity's dense rank, so
    popularity breaks ties (as in the item-kNN baseline)."""
    n_V = len(pop_rank)
    succ = pop_rank.copy()
    last = history[-1]
    lo, hi = knn.indptr[last], knn.indptr[last + 1]
    succ[knn.dst[lo:hi]] += n_V * knn.counts[lo:hi]
    cooc = pop_rank.copy()
    for a in list(dict.fromkeys(history[::-1].tolist()))[:10]:
        lo, hi = knn.indptr[a], knn.indptr[a + 1]
        if hi > lo:
            cooc[knn.dst[lo:hi]] += n_V * knn.counts[lo:hi] / knn.counts[lo:hi].sum()
    return {"pop": pop_rank, "successor": succ, "co-occurrence": cooc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", default=str(DEFAULT_LOG))
    ap.add_argument("--format", default="taobao")
    ap.add_argument("--target", choices=("item", "category"), default="category")
    args = ap.parse_args()
    if not Path(args.log).exists():
        print(f"headroom: no such log: {args.log}", file=sys.stderr)
        return 2
    data = build_eval_data(EventTable.from_events(read_events(args.log, args.format)), args.target)
    knn = ItemKNNRanker()
    knn.fit(data)
    pop = np.bincount(data.y[data.is_train], minlength=data.n_V)
    pop_rank = np.unique(pop, return_inverse=True)[1].reshape(-1).astype(np.float64)
    scored = data.scored_idx
    fillers = ("history only", "pop", "successor", "co-occurrence")
    # ranks under the two history orders: perfect (the bound) and most recent first (repeat's)
    perfect: dict[str, list[int]] = {f: [] for f in fillers}
    recency: dict[str, list[int]] = {f: [] for f in fillers}
    n_new = 0
    for i in scored:
        history = data.y[data.context(int(i))]
        by_recency = list(dict.fromkeys(history[::-1].tolist()))  # distinct, newest first
        target = int(data.y[i])
        if target in by_recency:
            for f in fillers:
                perfect[f].append(1)
                recency[f].append(by_recency.index(target) + 1)
            continue
        n_new += 1
        perfect["history only"].append(data.n_V + 1)  # never found
        recency["history only"].append(data.n_V + 1)
        seen = np.asarray(by_recency)
        for name, s in filler_scores(knn, pop_rank, history).items():
            s = s.copy()
            s[seen] = -np.inf  # the history already holds the first len(seen) slots
            rank = len(seen) + int(ranks_of_targets(s[None, :], np.array([target]))[0])
            perfect[name].append(rank)
            recency[name].append(rank)
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    print(f"log {args.log}; target {args.target}; scored {len(scored)}; in the user's history "
          f"{len(scored) - n_new}; new to the user {n_new}")
    print(f"| history first, then | new targets in the top {K} | perfect history order: R@{K} / MRR@{K} "
          f"| most recent first: R@{K} / MRR@{K} |")
    print("|---|---|---|---|")
    for f in fillers:
        cells = []
        for r in (perfect[f], recency[f]):
            r_arr = np.asarray(r, dtype=np.float64)
            hit = r_arr <= K
            cells.append(f"{hit.mean():.4f} / {(hit / r_arr).mean():.4f}")
        found = int((np.asarray(perfect[f]) <= K).sum()) - (len(scored) - n_new)
        print(f"| {f} | {found} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
