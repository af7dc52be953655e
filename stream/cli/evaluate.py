"""`seqstream evaluate`: the evaluation protocol (../shared/EVALUATION.md) on a log, the GRU beside
the baselines."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from models.datasets.common import BadRow, ErrorReport
from models.datasets.reader import FORMATS, read_events
from models.evaluate.churn import DEFAULT_CHURN_HORIZON_S
from models.evaluate.data import EventTable, Mode, Target
from models.evaluate.protocol import evaluate_runs
from models.evaluate.report import format_table, write_report
from models.jsonable import to_jsonable
from models.trending import DEFAULT_HALF_LIFE_S


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate under ../shared/EVALUATION.md, beside baselines")
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_command)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `seqstream evaluate LOG --format FMT ...`."""
    parser.add_argument("log", metavar="LOG", help="the log file to evaluate on")
    parser.add_argument("--format", required=True, choices=FORMATS, help="log format")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="PATH", help="evaluate a trained GRU checkpoint (not refit)")
    model.add_argument("--train", action="store_true", help="train the GRU on the train split, then evaluate")
    parser.add_argument("--mode", choices=("frozen", "online", "both"), default="frozen",
                        help="frozen (references' mode), online (test-then-train), or both")
    parser.add_argument("--target", choices=("item", "category", "both"), default="item")
    parser.add_argument("--json", action="store_true", help="print JSON (a list when several runs)")
    parser.add_argument("--report", metavar="DIR", help="write report.md and PNG plots to DIR")
    parser.add_argument("--seeds", type=int, default=3,
                        help="with --train: fit S models (seeds 0..S-1) and report mean ± std (default 3: "
                             "the shared samples are small)")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="skip", help="bad rows: skip or stop")
    parser.add_argument("--churn-horizon-h", type=float, default=DEFAULT_CHURN_HORIZON_S / 3600,
                        help="churn horizon H in hours (default 24)")
    parser.add_argument("--trending-half-life-h", type=float, default=DEFAULT_HALF_LIFE_S / 3600,
                        help="half-life in hours of the trending baseline's event-time decay (default 24)")
    parser.add_argument("--chunk-size", type=int, default=512,
                        help="test events per step; online mode learns after each step (the worker "
                             "trains every 200-2,000 samples), so a test period shorter than one "
                             "chunk scores as in frozen mode")
    return parser


def _model_factory(args: argparse.Namespace) -> tuple[Any, bool] | None:
    """(factory(seed) -> Ranker, trains?) for the GRU, or None for baselines only. A checkpoint
    is still "fitted" (GRURanker.fit loads it, never retrains), but one seed is enough."""
    if not (args.train or args.model):
        return None
    try:
        from models.train.ranker import GRURanker  # lazy: torch is only needed with a model
    except ImportError as e:
        print(f"warning: models.train.ranker.GRURanker is not importable ({e}); evaluating baselines only",
              file=sys.stderr)
        return None
    if args.train:
        return (lambda seed: GRURanker(seed=seed)), True
    path = args.model
    return (lambda seed: GRURanker(checkpoint=path, seed=seed)), False


def run_evaluate_command(args: argparse.Namespace) -> int:
    """`seqstream evaluate`: returns the process exit code."""
    checks = [(args.seeds >= 1, "--seeds must be >= 1"), (args.chunk_size >= 1, "--chunk-size must be >= 1"),
              (args.churn_horizon_h > 0, "--churn-horizon-h must be > 0"),
              (args.trending_half_life_h > 0, "--trending-half-life-h must be > 0")]
    for ok, msg in checks:
        if not ok:
            print(f"seqstream evaluate: error: {msg}", file=sys.stderr)
            return 2
    errors = ErrorReport()
    try:
        table = EventTable.from_events(read_events(args.log, args.format, on_error=args.on_error, errors=errors),
                                       progress=True)
    except BadRow as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if errors.count:
        print(f"{args.log}: {errors.summary()}", file=sys.stderr)
    if len(table) == 0:
        print("error: no events read", file=sys.stderr)
        return 2

    targets: list[Target] = ["item", "category"] if args.target == "both" else [args.target]
    if "category" in targets and not table.has_category:
        if args.target == "category":
            print(f"error: {args.log} has no categories (format {args.format}); use --target item", file=sys.stderr)
            return 2
        print(f"warning: format {args.format} has no categories; skipping the category task", file=sys.stderr)
        targets = ["item"]
    modes: list[Mode] = ["frozen", "online"] if args.mode == "both" else [args.mode]
    factory = _model_factory(args)
    seeds = args.seeds if factory and factory[1] else 1
    horizon = args.churn_horizon_h * 3600.0

    make = factory[0] if factory is not None else None
    results = evaluate_runs(table, targets, modes, make, fit=True, seeds=seeds, chunk_size=args.chunk_size,
                            churn_horizon_s=horizon, trending_half_life_s=args.trending_half_life_h * 3600.0)

    if args.json:
        print(json.dumps(to_jsonable(results[0] if len(results) == 1 else results), indent=2))
    else:
        print("\n\n".join(format_table(r) for r in results))
    if args.report:
        path = write_report(results, args.report, source=str(args.log))
        print(f"report written to {path}", file=sys.stderr)
    return 0

