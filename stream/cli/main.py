"""`seqstream COMMAND ...`: one entry point for operators, data teams and the demo.

Every command lives in its own module of this package and registers itself with
`add_parser(subparsers)`. They are imported here, plainly: a command that fails to import is a
loud failure, never a silently missing command. Nothing outside this package imports it.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from stream.cli import (broker, demo, evaluate, generate, model, replay, topics, train, trainer,
                        worker)
from stream.cli.common import OneLineParser
from stream.config import ConfigError
from stream.topics import TopicError

COMMANDS = (broker, topics, worker, demo, generate, replay, train, evaluate, trainer, model)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="seqstream",
                           description="Streaming next-item, next-action and churn prediction on Kafka.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):  # client chatter drowns the operator's lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, TopicError) as exc:
        print(f"seqstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # operators get one line; the traceback is for --log-level debug
        logging.getLogger("seqstream").debug("failed", exc_info=True)
        print(f"seqstream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
