"""Drift: a frozen model vs online fine-tuning on the same generated stream (no Kafka needed).

    python bench/bench_drift.py [--users 1000] [--events 150000] [--trending-share 0.5] [--chunk 2000] [--seed 0]

1. `models.synthetic.generate(..., drift=True)`: at `drift_at` (60%) of the timeline brand-new
   items start trending and users' category interests shift.
2. Offline training (models/train/) on the first `--train-frac` of the timeline. The item
   vocabulary is the shop's whole catalogue (every item id, including the ones that trend after
   the drift but have no interactions before it): online versions keep the serving checkpoint's
   vocabulary, so items outside it could never be learned online (a documented limitation).
3. The rest of the log is replayed through per-user rings of L events, exactly as the worker
   keeps them; every in-order event gives one training sample (`stream.online.capture.sample_from_state`
   shape: context = ring[:-1], target = ring[-1]).
4. In chunks of `--chunk` samples, prequentially (test, then train):
   - frozen: the offline model, evaluated on each chunk;
   - online: `models.online.learner.OnlineLearner.learn_many(chunk)` -- the code the trainer agent runs --
     whose *serving* version is evaluated on the chunk before it trains on it (what the workers
     would have served), then the promotion gate, then training.
   Metrics: HR@20 and MRR@20 of the next item with full ranking over the vocabulary.
5. Prints a markdown table (for BENCHMARKS.md), the number of events the online model needs after
   the drift to get back to 90% of its pre-drift HR@20 (rolling mean over 3 chunks), and writes
   bench/drift.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.online.learner import OnlineConfig, OnlineLearner  # noqa: E402
from models.online.samples import Sample  # noqa: E402
from models.synthetic import DAY_MS, GeneratorConfig, generate  # noqa: E402
from models.train.config import TrainConfig  # noqa: E402
from models.train.fit import fit_model  # noqa: E402
from models.train.run import build_model  # noqa: E402
from models.train.sequences import make_seqdata  # noqa: E402


def ring_samples(log, start_ts: int, ring: int) -> tuple[list[Sample], np.ndarray]:
    """Replay the whole log through per-user rings; samples for events at ts >= start_ts."""
    rings: dict[int, list[tuple[int, int, int, int]]] = {}
    out: list[Sample] = []
    ts_out: list[int] = []
    for u, i, a, t, c in zip(log.user_id.tolist(), log.item_id.tolist(), log.action.tolist(),
                             log.ts_ms.tolist(), log.category_id.tolist()):
        r = rings.setdefault(u, [])
        r.append((i, c, a, t))
        if len(r) > ring:
            del r[0]
        if t >= start_ts and len(r) >= 2:
            out.append(Sample(u, tuple(e[0] for e in r), tuple(e[1] for e in r),
                              tuple(e[2] for e in r), tuple(e[3] for e in r)))
            ts_out.append(t)
    return out, np.asarray(ts_out, dtype=np.int64)


def train_offline(log, end_ts: int, args) -> tuple:
    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, emb=args.hidden, ring=args.ring,
                      progress=False, seed=args.seed, device=args.device, dropout=0.1,
                      threads=args.threads)
    tr = log.ts_ms < end_ts
    catalogue = np.concatenate([np.arange(1, log.config.items + 1), log.trending_items])
    items_for_vocab = np.concatenate([log.item_id[tr], catalogue])  # frequent first, then the rest
    model, iv, cv = build_model(items_for_vocab, log.category_id, cfg)
    model.to(torch.device(args.device) if args.device else model.device)
    data = make_seqdata(log.user_id[tr], iv.index(log.item_id[tr]), cv.index(log.category_id[tr]),
                        log.action[tr].astype(np.int64), log.ts_ms[tr] / 1000.0)
    t0 = time.perf_counter()
    fit_model(model, data, cfg, data_end=end_ts / 1000.0)
    print(f"offline training: {int(tr.sum())} events, {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return model.eval(), iv, cv


def rolling(x: np.ndarray, w: int) -> np.ndarray:
    return np.array([x[max(0, i - w + 1): i + 1].mean() for i in range(len(x))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--categories", type=int, default=60)
    ap.add_argument("--trending-share", type=float, default=0.5,
                    help="share of fresh item draws that go to the new trending items after the drift")
    ap.add_argument("--interest-shift", type=float, default=GeneratorConfig.drift_interest_shift,
                    help="share of category draws from the users' new interests after the drift")
    ap.add_argument("--train-frac", type=float, default=0.45, help="offline training: this share of the timeline")
    ap.add_argument("--chunk", type=int, default=2000, help="samples per online round")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--ring", type=int, default=50)
    ap.add_argument("--lr", type=float, default=OnlineConfig.lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: oversubscribing a busy 2-core host costs 10x+)")
    ap.add_argument("--out", default=str(REPO / "bench" / "drift.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    gcfg = GeneratorConfig(users=args.users, events=args.events, items=args.items,
                           categories=args.categories, seed=args.seed, drift=True,
                           drift_trending_share=args.trending_share,
                           drift_interest_shift=args.interest_shift)
    log = generate(gcfg)
    t_start = gcfg.start_ts_ms
    train_end = t_start + int(args.train_frac * gcfg.days * DAY_MS)
    drift_ts = log.drift_ts
    model, iv, cv = train_offline(log, train_end, args)

    samples, ts = ring_samples(log, train_end, args.ring)
    print(f"stream: {len(samples)} samples after {args.train_frac:.0%} of the timeline; "
          f"drift at {(drift_ts - t_start) / DAY_MS:.1f} days", file=sys.stderr)
    device = args.device
    frozen = OnlineLearner(model, iv, cv, version=1, config=OnlineConfig(train=False, device=device))
    online = OnlineLearner(model, iv, cv, version=1,
                           config=OnlineConfig(lr=args.lr, device=device, seed=args.seed))
    rows = []
    t0 = time.perf_counter()
    for lo in range(0, len(samples), args.chunk):
        chunk = samples[lo: lo + args.chunk]
        if len(chunk) < args.chunk // 4:
            break
        f = frozen.evaluate(chunk)
        rep = online.learn_many(chunk)
        rows.append({"ts": int(np.median(ts[lo: lo + args.chunk])), "end": lo + len(chunk),
                     "f_hr": f["hr@20"], "f_mrr": f["mrr@20"], "o_hr": rep.serving["hr@20"],
                     "o_mrr": rep.serving["mrr@20"], "decision": rep.decision, "version": rep.version})
        print(f"{(rows[-1]['ts'] - t_start) / DAY_MS:6.2f}d frozen hr={f['hr@20']:.3f} "
              f"online hr={rep.serving['hr@20']:.3f} v{rep.version} {rep.decision}", file=sys.stderr)
    online_s = time.perf_counter() - t0

    day = np.array([(r["ts"] - t_start) / DAY_MS for r in rows])
    f_hr, o_hr = np.array([r["f_hr"] for r in rows]), np.array([r["o_hr"] for r in rows])
    f_mrr, o_mrr = np.array([r["f_mrr"] for r in rows]), np.array([r["o_mrr"] for r in rows])
    ts_rows = np.array([r["ts"] for r in rows])
    pre = ts_rows < drift_ts
    post = ~pre
    pre_o, pre_f = o_hr[pre].mean(), f_hr[pre].mean()
    # recovery: first post-drift chunk whose rolling (3) online HR@20 >= 90% of pre-drift
    o_roll, f_roll = rolling(o_hr, 3), rolling(f_hr, 3)
    drift_idx = int(np.argmax(post))
    first_post_sample = int(np.searchsorted(ts, drift_ts))
    rec_o = next((i for i in range(drift_idx + 2, len(rows)) if o_roll[i] >= 0.9 * pre_o), None)
    rec_f = next((i for i in range(drift_idx + 2, len(rows)) if f_roll[i] >= 0.9 * pre_f), None)
    n_post = int(post.sum())
    early = np.zeros(len(rows), bool)
    early[drift_idx: drift_idx + max(1, n_post // 5)] = True
    late = np.zeros(len(rows), bool)
    late[len(rows) - max(1, n_post // 5):] = True

    def cell(x, m):
        return f"{x[m].mean():.4f}"

    print()
    print(f"Drift benchmark: {args.users} users, {len(log)} events, {args.items} items "
          f"(+{len(log.trending_items)} trending after the drift), chunks of {args.chunk} samples, "
          f"HR@20/MRR@20 full ranking over {len(iv) - 2} items, prequential (test, then train).")
    print()
    print("| phase | samples | frozen HR@20 | online HR@20 | frozen MRR@20 | online MRR@20 |")
    print("|---|---|---|---|---|---|")
    for name, m in (("before drift", pre), ("first 20% after drift", early), ("last 20% after drift", late),
                    ("all after drift", post)):
        n = int(sum(min(args.chunk, len(samples) - i * args.chunk) for i in np.flatnonzero(m)))
        print(f"| {name} | {n} | {cell(f_hr, m)} | {cell(o_hr, m)} | {cell(f_mrr, m)} | {cell(o_mrr, m)} |")
    print()

    def recovery(idx, pre_hr, name):
        if idx is None:
            return f"{name}: does not recover to 90% of its pre-drift HR@20 ({pre_hr:.4f})"
        return (f"{name}: back to 90% of its pre-drift HR@20 ({pre_hr:.4f}) after "
                f"{rows[idx]['end'] - first_post_sample} events past the drift "
                f"({(rows[idx]['ts'] - drift_ts) / DAY_MS:.2f} days of event time)")

    print(recovery(rec_o, pre_o, "online"))
    print(recovery(rec_f, pre_f, "frozen"))
    promoted = sum(r["decision"] == "promoted" for r in rows)
    rejected = sum(r["decision"] == "rejected" for r in rows)
    print(f"online: {len(rows)} rounds, {promoted} promoted, {rejected} rejected, final version "
          f"v{rows[-1]['version']}; {len(samples) / online_s:.0f} samples/s (frozen eval + online "
          f"round, {'cuda' if online.device.type == 'cuda' else 'cpu'}, {torch.get_num_threads()} threads)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, f, o, name in ((axes[0], f_hr, o_hr, "HR@20"), (axes[1], f_mrr, o_mrr, "MRR@20")):
        ax.plot(day, f, color="tab:gray", alpha=0.35)
        ax.plot(day, o, color="tab:blue", alpha=0.35)
        ax.plot(day, rolling(f, 3), color="tab:gray", label="frozen")
        ax.plot(day, rolling(o, 3), color="tab:blue", label="online fine-tuning")
        ax.axvline((drift_ts - t_start) / DAY_MS, color="tab:red", ls="--", label="drift")
        ax.set_xlabel("event time (days)")
        ax.set_ylabel(name)
        ax.set_title(f"prequential next-item {name}")
        ax.grid(alpha=0.3)
    if rec_o is not None:
        axes[0].axvline(day[rec_o], color="tab:green", ls=":", label="online recovered (90%)")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
