"""`seqstream train`: train the GRU offline from a historical log and write a checkpoint."""
from __future__ import annotations

import argparse
import sys

from models.checkpoint import save_checkpoint
from models.datasets.common import BadRow
from models.datasets.reader import FORMATS
from models.train.config import TrainConfig
from models.train.run import train_log, train_summary


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the GRU offline from a historical log")
    add_train_arguments(p)
    p.set_defaults(func=run_train_command)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `seqstream train LOG --format FMT --out model.pt ...`."""
    d = TrainConfig()
    parser.add_argument("log", help="behaviour log to train on")
    parser.add_argument("--format", required=True, choices=FORMATS, help="log format")
    parser.add_argument("--out", required=True, help="checkpoint path to write (e.g. model.pt)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--hidden", type=int, default=d.hidden)
    parser.add_argument("--emb", type=int, default=d.emb)
    parser.add_argument("--ring", type=int, default=d.ring, help="recent events the copy path sees")
    parser.add_argument("--batch", type=int, default=d.batch, help="users per mini-batch, at least")
    parser.add_argument("--batch-events", type=int, default=d.batch_events,
                        help="add users to a mini-batch while users x chunk length stays within this "
                             "(short sessions train in larger batches; 0: exactly --batch users)")
    parser.add_argument("--bptt", type=int, default=d.bptt)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--negatives", type=int, default=d.negatives)
    parser.add_argument("--alpha", type=float, default=d.alpha, help="negatives ∝ popularity^alpha")
    parser.add_argument("--horizon-hours", type=float, default=d.horizon_s / 3600, help="churn horizon")
    parser.add_argument("--max-items", type=int, default=d.max_items, help="item vocabulary capacity")
    parser.add_argument("--calibrate-frac", type=float, default=d.calibrate_frac,
                        help="last share of the log's time held out to calibrate the copy/explore "
                             "mixture (0: no hold-out)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--version", type=int, default=1, help="model version stored in the checkpoint")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="skip", help="bad log rows")
    parser.add_argument("--no-progress", action="store_true")


def run_train_command(args: argparse.Namespace) -> int:
    """Train from a log and write a checkpoint. Returns the exit status; errors are one line."""
    checks = [(args.epochs >= 1, "--epochs must be >= 1"), (args.hidden >= 1, "--hidden must be >= 1"),
              (args.ring >= 1, "--ring must be >= 1"), (args.batch >= 1, "--batch must be >= 1"),
              (args.batch_events >= 0, "--batch-events must be >= 0"),
              (args.bptt >= 1, "--bptt must be >= 1"), (args.lr > 0, "--lr must be > 0"),
              (args.negatives >= 1, "--negatives must be >= 1"),
              (args.horizon_hours > 0, "--horizon-hours must be > 0"),
              (args.max_items >= 3, "--max-items must be >= 3"),
              (0 <= args.calibrate_frac < 1, "--calibrate-frac must be in [0, 1)")]
    for ok, msg in checks:
        if not ok:
            print(f"seqstream train: error: {msg}", file=sys.stderr)
            return 2
    cfg = TrainConfig(epochs=args.epochs, hidden=args.hidden, emb=args.emb, ring=args.ring, batch=args.batch,
                      batch_events=args.batch_events,
                      bptt=args.bptt, lr=args.lr, negatives=args.negatives, alpha=args.alpha,
                      horizon_s=args.horizon_hours * 3600, max_items=args.max_items,
                      calibrate_frac=args.calibrate_frac, seed=args.seed,
                      device=args.device, progress=not args.no_progress)
    try:
        ck, report = train_log(args.log, args.format, cfg, on_error=args.on_error)
    except FileNotFoundError:
        print(f"seqstream train: error: no such file: {args.log}", file=sys.stderr)
        return 2
    except (BadRow, ValueError) as e:
        print(f"seqstream train: error: {e}", file=sys.stderr)
        return 1
    save_checkpoint(args.out, ck.model, ck.item_vocab, ck.category_vocab, version=args.version, meta=ck.meta)
    for line in train_summary(ck, args.out, report.count):
        print(line, file=sys.stderr)
    return 0
