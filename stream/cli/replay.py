"""`seqstream replay FILE`: a historical log into the input topics (see stream/replay/)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.cli.common import add_common, settings_from
from stream.config import ConfigError
from stream.kafka import check_login, kafka_client_options, resolve_bootstrap
from stream.replay.checkpoint import CHECKPOINT_SUFFIX
from stream.replay.file import replay_file
from stream.replay.options import (
    DEFAULT_CHECKPOINT_EVERY, FORMATS, ReplayError, ReplayOptions, default_producers, lanes_apply,
    parse_speed, parse_ts,
)
from stream.replay.producer import Replayer


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = fn.__name__
    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a historical log into the input topics")
    p.add_argument("file", type=Path, help="the log file (.gz is read on the fly)")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS)
    p.add_argument("--speed", type=_type(parse_speed), default=None,
                   help="'max' (default) or an event-time speed-up factor, e.g. 60")
    p.add_argument("--from", dest="from_ts", type=_type(parse_ts), default=None,
                   help="first event time to send (ms since epoch or ISO 8601, inclusive)")
    p.add_argument("--to", dest="to_ts", type=_type(parse_ts), default=None,
                   help="event time to stop at (exclusive)")
    p.add_argument("--resume", action="store_true", help="continue after the checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint file (default FILE{CHECKPOINT_SUFFIX})")
    p.add_argument("--checkpoint-every", type=_positive_int, default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"events between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="bad rows: count and skip them (default), or stop at the first")
    p.add_argument("--limit", type=_positive_int, default=None, help="send at most N events")
    p.add_argument("--producers", type=_positive_int, default=None, metavar="N",
                   help="producer processes at --speed max (default: 2 with --speed max on 2+ "
                        "CPUs, else 1); producer k sends the partitions p with p %% N == k, so "
                        "each user's order is kept. A paced --speed or --limit uses one producer; "
                        "--resume from a checkpoint written by several uses their number")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.from_ts is not None and args.to_ts is not None and args.from_ts >= args.to_ts:
        print("seqstream replay: --from must be before --to", file=sys.stderr)
        return 2
    settings = settings_from(args)
    producers = args.producers
    if producers is None:
        producers = default_producers(args.speed, args.limit)
    elif producers > 1 and not lanes_apply(args.speed, args.limit):
        print(f"seqstream replay: note: --producers {producers} applies to --speed max without "
              f"--limit; using one producer", file=sys.stderr)
        producers = 1
    opts = ReplayOptions(path=args.file, fmt=args.fmt, speed=args.speed, prefix=settings.prefix,
                         from_ts=args.from_ts, to_ts=args.to_ts, resume=args.resume,
                         on_error=args.on_error, limit=args.limit, checkpoint=args.checkpoint,
                         checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                         producers=producers)
    try:
        if not opts.path.is_file():
            raise ReplayError(f"no such file: {opts.path}")
        bootstrap = resolve_bootstrap(args.broker)
        options = kafka_client_options(settings)
        check_login(bootstrap, options)  # before the lanes fork: a refused login is one line
        # A factory, not a producer: with several producers each lane makes its own after the
        # fork; with one, replay_file makes it and closes it.
        summary = replay_file(opts, lambda: Replayer(bootstrap, prefix=opts.prefix, options=options))
    except (ReplayError, ConfigError) as exc:  # ConfigError: no broker at --broker / embedded
        print(f"seqstream replay: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 130 if summary.interrupted else 0
