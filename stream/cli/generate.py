"""`seqstream generate`: a synthetic log to a file (.jsonl or .msgpack) and/or straight to Kafka
(see stream/generate.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stream.cli.common import add_common, settings_from
from stream.config import ConfigError
from stream.generate import WRITERS, send_log, truth_path, write_log
from stream.kafka import kafka_client_options, resolve_bootstrap
from stream.replay.options import ReplayError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate a realistic synthetic log (file and/or Kafka)")
    p.add_argument("--users", type=int, required=True, help="number of users")
    p.add_argument("--events", type=int, required=True, help="total events (at least --users)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same log)")
    p.add_argument("--items", type=int, default=10_000, help="catalogue size (default 10000)")
    p.add_argument("--categories", type=int, default=None,
                   help="categories (default 200, or --items when smaller)")
    p.add_argument("--days", type=float, default=30.0, help="timeline length (default 30)")
    p.add_argument("--churn-fraction", type=float, default=0.2, help="users who go silent (0.2)")
    p.add_argument("--drift", action="store_true",
                   help="at --drift-at of the timeline new items trend and interests shift")
    p.add_argument("--drift-at", type=float, default=0.6, help="fraction of the timeline (0.6)")
    p.add_argument("--anomalies", type=int, default=0, metavar="N",
                   help="add N labelled abnormal users per kind (bot, brushing, burst; default 0)")
    p.add_argument("--out", type=Path, default=None, help="FILE.jsonl or FILE.msgpack")
    p.add_argument("--truth", type=Path, default=None,
                   help="ground-truth JSON (default FILE.truth.json beside --out)")
    p.add_argument("--to-kafka", action="store_true", help="produce to the input topics at max speed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.synthetic import GeneratorConfig, generate
    from models.synthetic_anomalies import inject_anomalies

    def fail(message: str) -> int:
        print(f"seqstream generate: {message}", file=sys.stderr)
        return 2

    if args.out is None and not args.to_kafka:
        return fail("nothing to do: give --out FILE and/or --to-kafka")
    if args.out is not None and args.out.suffix not in WRITERS:
        return fail(f"--out must end in .jsonl or .msgpack, got {args.out.name!r}")
    if args.out is not None and not args.out.parent.is_dir():
        return fail(f"directory {args.out.parent} does not exist")
    try:
        cfg = GeneratorConfig(users=args.users, events=args.events, items=args.items,
                              categories=args.categories or min(200, args.items), seed=args.seed, days=args.days,
                              churn_fraction=args.churn_fraction, drift=args.drift,
                              drift_at=args.drift_at).validate()
    except ValueError as exc:
        return fail(str(exc))
    if args.anomalies < 0:
        return fail(f"--anomalies must be at least 0, got {args.anomalies}")
    log = inject_anomalies(generate(cfg), args.anomalies)
    progress = not args.no_progress
    truth = args.truth or (truth_path(args.out) if args.out is not None else None)
    if args.out is not None:
        n = write_log(log, args.out, progress)
        extra = f", {len(log.anomalies['users'])} abnormal" if log.anomalies else ""
        print(f"wrote {n} events ({cfg.users} users, {len(log.churners)} churners{extra}) "
              f"to {args.out}")
    if truth is not None:
        log.write_truth(truth)
        print(f"ground truth in {truth}")
    if args.to_kafka:
        settings = settings_from(args)
        try:
            summary = send_log(log, resolve_bootstrap(args.broker), settings.prefix, progress,
                               kafka_client_options(settings))
        except (ReplayError, ConfigError) as exc:  # ConfigError: no broker at --broker / embedded
            print(f"seqstream generate: {exc}", file=sys.stderr)
            return 1
        print(summary.line())
        if summary.interrupted:
            return 130
    return 0
