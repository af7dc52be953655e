"""`seqstream topics create|check`: create the topics, or check they are co-partitioned."""
from __future__ import annotations

import argparse
import sys

from stream.cli.common import add_common, settings_from
from stream.kafka import resolve_bootstrap
from stream.topics import (HISTORICAL_TIME_ADVICE, check_copartitioned, create_topics,
                           historical_time_topics)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    bootstrap = resolve_bootstrap(settings.broker)
    if args.action == "create":
        created = create_topics(bootstrap, settings, args.partitions, args.replication_factor)
        print(f"created {len(created)} topics on {bootstrap}: {', '.join(created) or '(all existed)'}")
    n = check_copartitioned(bootstrap, settings)
    print(f"inputs {', '.join(settings.input_topics)} are co-partitioned with {n} partitions")
    stale = historical_time_topics(bootstrap, settings)
    if stale:
        print(f"warning: {', '.join(stale)} {HISTORICAL_TIME_ADVICE}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("topics", help="create or check the input, output and internal topics")
    p.add_argument("action", choices=["create", "check"])
    p.add_argument("--partitions", type=int, default=4, help="partitions per keyed topic (default 4)")
    p.add_argument("--replication-factor", type=int, default=1,
                   help="copies of every topic (default 1, for one broker; 3 on a production cluster)")
    p.add_argument("--app-id", default=None, help="app id whose state changelog to create")
    add_common(p)
    p.set_defaults(func=run)
