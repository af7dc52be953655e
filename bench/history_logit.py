"""How well can hand-made features order a user's own history? A reference, not a benchmark.

bench/headroom.py bounds R@20 for rankers that put the history first. This script asks about
MRR: it fits a conditional logit (a softmax over the distinct ids of each event's last
`--ring` events) on the train period's revisits, with features like the copy head's
(recency rank, count, age, transitions from the newest id) plus visit-level ones (separate
visits, length of the last visit, the newest id's visit and the time since it), and scores
the evaluation's test events (../shared/EVALUATION.md's split) with new targets counted as
misses. If no feature set lifts MRR@20 much above the model's, ordering the history better
needs other information than the history's shape.

`--all-candidates` also fits the logit over every candidate, not only the history: each
candidate gets the history features (zero when it is new to the user), an in-history flag, and
train-log signals with the user's own train events left out (successor counts of the newest
id, co-occurrence over the last ten distinct ids, popularity, and how often users who had the
history's ids also had the candidate). It is a learned stand-in for `bench/headroom.py`'s
bound: a ranker free to put a new id above an old one, over the same signals. A third row adds
context: popularity at the event's hour of day, co-visitation through the user's recent items,
and the in-history flag crossed with the last action, the history's size, the gap since the
last event and the current visit's length (when to explore rather than revisit).
`--mlp H` fits a one-hidden-layer scorer over the same features instead of the linear logit.

    python bench/history_logit.py [--log ../shared/data/taobao_users.csv] [--format taobao] [--target category]
                                  [--all-candidates [--train-events 2000] [--mlp 16]]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.datasets.reader import read_events  # noqa: E402
from models.evaluate.data import EvalData, EventTable, build_eval_data  # noqa: E402

DEFAULT_LOG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "taobao_users.csv"
RANKS = 10  # one-hot recency ranks 0..9 (9 = 9 or more)
FEATURES = [f"rank={k}" for k in range(RANKS)] + [
    "log rank", "log count", "log minutes since", "log transitions from newest",
    "log visits", "log last visit length",
    "newest: log visits", "newest: log last visit length", "newest: log minutes to the event"]
FEATURE_SETS = {
    "recency only": RANKS + 1,
    "+ count, age, transitions (the copy head's kind)": RANKS + 4,
    "+ visits, last visit length": RANKS + 6,
    "+ the newest id's visit and gap": RANKS + 9,
}


def history_features(d: EvalData, i: int, ring: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Distinct ids of event i's last `ring` context events, newest first, and their features."""
    lo = max(int(d.start[i]), i - ring)
    ids, ts = d.y[lo:i], d.ts[lo:i]
    if len(ids) == 0:
        return None
    newest = ids[-1]
    count: dict[int, int] = {}
    last_ts: dict[int, float] = {}
    visits: dict[int, int] = {}
    last_visit: dict[int, int] = {}
    from_newest: dict[int, int] = {}
    for j, c in enumerate(ids):
        c = int(c)
        count[c] = count.get(c, 0) + 1
        last_ts[c] = float(ts[j])
        if j == 0 or ids[j - 1] != c:
            visits[c] = visits.get(c, 0) + 1
            last_visit[c] = 0
        last_visit[c] += 1
        if j > 0 and ids[j - 1] == newest:
            from_newest[c] = from_newest.get(c, 0) + 1
    order = list(dict.fromkeys(int(c) for c in ids[::-1]))  # newest first
    x = np.zeros((len(order), len(FEATURES)))
    for k, c in enumerate(order):
        x[k, min(k, RANKS - 1)] = 1.0
        x[k, RANKS:RANKS + 6] = [np.log1p(k), np.log1p(count[c]), np.log1p((ts[-1] - last_ts[c]) / 60),
                                 np.log1p(from_newest.get(c, 0)), np.log1p(visits[c]), np.log1p(last_visit[c])]
    x[0, RANKS + 6:] = [np.log1p(visits[order[0]]), np.log1p(last_visit[order[0]]),
                        np.log1p((d.ts[i] - ts[-1]) / 60)]
    return np.array(order), x


def revisit_rows(d: EvalData, events: np.ndarray, ring: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Padded features [N, G, F], mask [N, G] and target slot [N] of the events whose target is
    in their history; also how many events there were in all."""
    rows = []
    for i in events:
        h = history_features(d, int(i), ring)
        if h is not None and (h[0] == d.y[i]).any():
            rows.append((h[1], int(np.flatnonzero(h[0] == d.y[i])[0])))
    g = max((len(x) for x, _ in rows), default=1)
    x = torch.zeros(len(rows), g, len(FEATURES))
    mask = torch.zeros(len(rows), g, dtype=torch.bool)
    for r, (f, _) in enumerate(rows):
        x[r, :len(f)] = torch.from_numpy(f).float()
        mask[r, :len(f)] = True
    return x, mask, torch.tensor([t for _, t in rows], dtype=torch.long), len(events)


def fit_and_score(train, test, n_features: int) -> dict[str, float]:
    x, mask, y, _ = train
    w = torch.zeros(n_features, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = (x[..., :n_features] @ w).masked_fill(~mask, -1e9)
        loss = F.cross_entropy(s, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    x, mask, y, n_all = test
    with torch.no_grad():
        return ranking_metrics((x[..., :n_features] @ w).masked_fill(~mask, -1e9), mask, y, n_all)


def fit_mlp_and_score(train, test, hidden: int, epochs: int = 60) -> dict[str, float]:
    """Like fit_and_score, with a one-hidden-layer scorer on standardised features (Adam)."""
    x, mask, y, _ = train
    mu, sd = x.reshape(-1, x.shape[-1]).mean(0), x.reshape(-1, x.shape[-1]).std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x = (x - mu) / sd
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(256):
            loss = F.cross_entropy(net(x[idx]).squeeze(-1).masked_fill(~mask[idx], -1e9), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    x, mask, y, n_all = test
    with torch.no_grad():
        return ranking_metrics(net((x - mu) / sd).squeeze(-1).masked_fill(~mask, -1e9), mask, y, n_all)


def ranking_metrics(s: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, n_all: int) -> dict[str, float]:
    """R@1, R@20 and MRR@20 over all n_all scored events (rows not given count as misses)."""
    rank = ((s >= s.gather(1, y[:, None])) & mask).sum(1).float()  # ties count against
    rr = torch.where(rank <= 20, 1.0 / rank, torch.zeros_like(rank))
    return {"R@1": float((rank == 1).sum()) / n_all, "R@20": float((rank <= 20).sum()) / n_all,
            "MRR@20": float(rr.sum()) / n_all,
            "in-history MRR@20": float(rr.mean())}


GLOBAL_FEATURES = ["in history", "log successor count", "successor share", "co-occurrence share",
                   "log popularity", "user co-visitation"]
CO_LAST = 10  # distinct ids whose successors the co-occurrence signal sums, as in bench/headroom.py


class TrainSignals:
    """Train-log signals for every candidate, leave-one-user-out: a user's own train events are
    subtracted, so the logit cannot learn from counts that include the row's answer."""

    def __init__(self, d: EvalData) -> None:
        tr = np.flatnonzero(d.is_train)
        a, b = tr[:-1], tr[1:]
        pair = (d.user[a] == d.user[b]) & (d.y[a] != d.y[b])
        self.a, self.b, self.pair_user = d.y[a][pair], d.y[b][pair], d.user[a][pair]
        self.succ = np.zeros((d.n_V, d.n_V))
        np.add.at(self.succ, (self.a, self.b), 1.0)
        self.user_counts = np.zeros((d.n_users, d.n_V))  # user x id: train events
        np.add.at(self.user_counts, (d.user[tr], d.y[tr]), 1.0)
        self.pop = self.user_counts.sum(0)
        self.had = (self.user_counts > 0).astype(np.float64)
        self.covisit = self.had.T @ self.had
        self.d = d

    def features(self, i: int, distinct_newest_first: list[int]) -> np.ndarray:
        d, u = self.d, int(self.d.user[i])
        own = self.pair_user == u
        rows = distinct_newest_first[:CO_LAST]
        succ = self.succ[rows].copy()  # [r, V]
        for k, a in enumerate(rows):  # less the user's own transitions out of a
            np.subtract.at(succ[k], self.b[own & (self.a == a)], 1.0)
        share = succ / np.maximum(succ.sum(1, keepdims=True), 1.0)
        pop = self.pop - self.user_counts[u]
        seen = np.asarray(distinct_newest_first)
        co = self.covisit[seen] - self.had[u, seen, None] * self.had[u]  # others' co-visits
        deg = np.maximum(np.diag(self.covisit)[seen] - self.had[u, seen], 1.0)
        x = np.zeros((d.n_V, len(GLOBAL_FEATURES)))
        x[seen, 0] = 1.0
        x[:, 1] = np.log1p(succ[0])
        x[:, 2] = share[0]
        x[:, 3] = share.sum(0)
        x[:, 4] = np.log1p(pop)
        x[:, 5] = 0.8 ** np.arange(len(seen)) @ (co / deg[:, None])  # newer history ids weigh more
        return x


CONTEXT_FEATURES = ["log popularity at this hour", "item co-visitation", "in history x last action cart/buy",
                    "in history x log distinct ids", "in history x log minutes since the last event",
                    "in history x log current visit length"]
VISIT_GAP = 1800.0  # seconds between events that start a new visit


class ContextSignals:
    """When the event happens and which items led to it, leave-one-user-out like TrainSignals."""

    def __init__(self, d: EvalData, signals: TrainSignals) -> None:
        self.d, self.tr = d, np.flatnonzero(d.is_train)
        self.hour = ((d.ts // 3600) % 24).astype(np.int64)
        self.hour_pop = np.zeros((24, d.n_V))
        np.add.at(self.hour_pop, (self.hour[self.tr], d.y[self.tr]), 1.0)
        # per train item: how many of its users had each id, and how many users it had
        items, item_of_event = np.unique(d.item[self.tr], return_inverse=True)
        self.item_index = {int(it): k for k, it in enumerate(items)}
        self.item_had = np.zeros((len(items), d.n_users))
        self.item_had[item_of_event, d.user[self.tr]] = 1.0
        self.item_cover = self.item_had @ signals.had  # [items, V]
        self.user_had = signals.had

    def features(self, i: int, history_newest_first: list[int]) -> np.ndarray:
        d, u = self.d, int(self.d.user[i])
        own = self.tr[d.user[self.tr] == u]
        hour_pop = self.hour_pop[self.hour[i]].copy()
        np.subtract.at(hour_pop, d.y[own[self.hour[own] == self.hour[i]]], 1.0)
        cover = np.zeros(d.n_V)  # the last ten distinct items' other users, newer items weigh more
        for r, item in enumerate(list(dict.fromkeys(d.item[d.start[i]:i][::-1].tolist()))[:CO_LAST]):
            k = self.item_index.get(int(item))
            if k is None:
                continue
            mine = self.item_had[k, u]
            others = self.item_had[k].sum() - mine
            if others > 0:
                cover += 0.8 ** r * (self.item_cover[k] - mine * self.user_had[u]) / others
        visit = 1
        while i - visit > d.start[i] and d.ts[i - visit] - d.ts[i - visit - 1] < VISIT_GAP:
            visit += 1
        in_history = np.zeros(d.n_V)
        in_history[history_newest_first] = 1.0
        x = np.zeros((d.n_V, len(CONTEXT_FEATURES)))
        x[:, 0] = np.log1p(np.maximum(hour_pop, 0.0))
        x[:, 1] = cover
        x[:, 2] = in_history * (d.action[i - 1] > 0)
        x[:, 3] = in_history * np.log1p(len(history_newest_first))
        x[:, 4] = in_history * np.log1p(max(d.ts[i] - d.ts[i - 1], 0.0) / 60)
        x[:, 5] = in_history * np.log1p(visit)
        return x


def candidate_rows(d: EvalData, events: np.ndarray, ring: int, signals: TrainSignals,
                   context: ContextSignals) -> tuple[torch.Tensor, ...]:
    """Features [N, V, F] over every candidate, an all-true mask and the target [N]."""
    xs, ys = [], []
    n_hist, n_global = len(FEATURES), len(GLOBAL_FEATURES)
    for i in events:
        h = history_features(d, int(i), ring)
        if h is None:
            continue
        order, hx = h
        x = np.zeros((d.n_V, n_hist + n_global + len(CONTEXT_FEATURES)), dtype=np.float32)
        x[order, :n_hist] = hx
        lo = max(int(d.start[i]), int(i) - ring)
        history = list(dict.fromkeys(d.y[lo:int(i)][::-1].tolist()))
        x[:, n_hist:n_hist + n_global] = signals.features(int(i), history)
        x[:, n_hist + n_global:] = context.features(int(i), history)
        xs.append(torch.from_numpy(x))
        ys.append(int(d.y[i]))
    x = torch.stack(xs)
    return x, torch.ones(x.shape[:2], dtype=torch.bool), torch.tensor(ys), len(events)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", default=str(DEFAULT_LOG))
    ap.add_argument("--format", default="taobao")
    ap.add_argument("--target", choices=["item", "category"], default="category")
    ap.add_argument("--ring", type=int, default=200, help="history length per event (the model's ring)")
    ap.add_argument("--all-candidates", action="store_true",
                    help="also fit over every candidate with leave-user-out train signals")
    ap.add_argument("--train-events", type=int, default=2000,
                    help="train rows for --all-candidates (a random sample; memory: rows x candidates)")
    ap.add_argument("--mlp", type=int, default=0, metavar="H",
                    help="with --all-candidates: a scorer with H hidden units instead of the linear logit")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = build_eval_data(EventTable.from_events(read_events(args.log, args.format)), args.target)
    events = np.arange(len(d.y))
    train = revisit_rows(d, events[d.is_train & (events > d.start)], args.ring)
    test = revisit_rows(d, events[d.is_scored], args.ring)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"{args.target}: {len(train[2])} train revisits; {test[3]} scored events, {len(test[2])} in their history")
    print("| features | R@1 | MRR@20 | in-history MRR@20 |\n|---|---|---|---|")
    for name, n in FEATURE_SETS.items():
        m = fit_and_score(train, test, n)
        print(f"| {name} | {m['R@1']:.4f} | {m['MRR@20']:.4f} | {m['in-history MRR@20']:.4f} |")
    if args.all_candidates:
        cells = (args.train_events + test[3]) * d.n_V * (len(FEATURES) + len(GLOBAL_FEATURES) + len(CONTEXT_FEATURES))
        if cells > 5e8:
            print(f"--all-candidates: {d.n_V} candidates x {args.train_events + test[3]} rows needs "
                  f"{cells * 4 / 2**30:.0f} GB of features; it is meant for logs of taobao_users' size",
                  file=sys.stderr)
            return 2
        signals = TrainSignals(d)
        context = ContextSignals(d, signals)
        pool = events[d.is_train & (events > d.start)]
        sample = np.sort(np.random.default_rng(0).choice(pool, min(args.train_events, len(pool)), replace=False))
        train_all = candidate_rows(d, sample, args.ring, signals, context)
        test_all = candidate_rows(d, events[d.is_scored], args.ring, signals, context)
        n_hist, n_global = len(FEATURES), len(GLOBAL_FEATURES)
        ranker = f"a {args.mlp}-unit MLP" if args.mlp else "the linear logit"
        print(f"\nover every candidate ({d.n_V}), {len(sample)} train rows, {ranker}:")
        print("| features | R@1 | R@20 | MRR@20 |\n|---|---|---|---|")
        for name, cols in (("history features + in-history flag", list(range(n_hist + 1))),
                           ("+ train-log signals (successors, co-occurrence, popularity, co-visitation)",
                            list(range(n_hist + n_global))),
                           ("+ context (hour of day, item co-visitation, when to explore)",
                            list(range(n_hist + n_global + len(CONTEXT_FEATURES))))):
            train_cols = tuple(t[..., cols] if k == 0 else t for k, t in enumerate(train_all))
            test_cols = tuple(t[..., cols] if k == 0 else t for k, t in enumerate(test_all))
            torch.manual_seed(0)
            m = (fit_mlp_and_score(train_cols, test_cols, args.mlp) if args.mlp
                 else fit_and_score(train_cols, test_cols, len(cols)))
            print(f"| {name} | {m['R@1']:.4f} | {m['R@20']:.4f} | {m['MRR@20']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
