"""`seqstream generate`: a synthetic log to a file (.jsonl or .msgpack) and/or straight to Kafka.

The ground truth (churners, their last event time, drift time, trending items) goes to
FILE.truth.json beside the log (or to --truth when only --to-kafka is given).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from models.schema import LogEvent

WRITERS = (".jsonl", ".msgpack")


def _progress(events: Iterable[LogEvent], total: int, desc: str, enabled: bool) -> Iterator[LogEvent]:
    from tqdm import tqdm

    with tqdm(total=total, unit="ev", unit_scale=True, desc=desc, file=sys.stderr,
              disable=not enabled, mininterval=0.5) as bar:
        pending = 0
        for ev in events:
            yield ev
            pending += 1
            if pending == 8192:  # per-event bar updates would cost more than the writing
                bar.update(pending)
                pending = 0
        bar.update(pending)


def truth_path(out: Path) -> Path:
    return out.with_name(out.name + ".truth.json")


def add_cli(sub: Any) -> None:
    from stream.replay import add_kafka_arguments

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
    p.add_argument("--out", type=Path, default=None, help="FILE.jsonl or FILE.msgpack")
    p.add_argument("--truth", type=Path, default=None,
                   help="ground-truth JSON (default FILE.truth.json beside --out)")
    p.add_argument("--to-kafka", action="store_true", help="produce to the input topics at max speed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_kafka_arguments(p)
    p.set_defaults(func=run_generate_command)


def run_generate_command(args: argparse.Namespace) -> int:
    from models.synthetic import GeneratorConfig, generate

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
    log = generate(cfg)
    progress = not args.no_progress
    truth = args.truth or (truth_path(args.out) if args.out is not None else None)
    if args.out is not None:
        from models.datasets import write_jsonl, write_msgpack

        writer = write_jsonl if args.out.suffix == ".jsonl" else write_msgpack
        n = writer(_progress(log.events(), len(log), "write", progress), args.out)
        print(f"wrote {n} events ({cfg.users} users, {len(log.churners)} churners) to {args.out}")
    if truth is not None:
        log.write_truth(truth)
        print(f"ground truth in {truth}")
    if args.to_kafka:
        from stream.replay import ReplayError, Replayer, replay_events, resolve_bootstrap

        try:
            replayer = Replayer(resolve_bootstrap(args.bootstrap), prefix=args.prefix)
            try:
                summary = replay_events(log.events(), replayer, progress=progress, total=len(log))
            finally:
                replayer.close()
        except ReplayError as exc:
            print(f"seqstream generate: {exc}", file=sys.stderr)
            return 1
        print(summary.line())
        if summary.interrupted:
            return 130
    return 0
