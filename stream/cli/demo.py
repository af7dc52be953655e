"""`seqstream demo`: everything on this machine, with a live view of the predictions (stream/demo.py)."""
from __future__ import annotations

import argparse

from stream.demo import run_demo


def run(args: argparse.Namespace) -> int:
    return run_demo(duration=args.duration, rate=args.rate, partitions=args.partitions,
                    seed=args.seed, keep=args.keep, keep_broker=args.keep_broker,
                    broker=args.broker, web_port=args.web_port, open_browser=args.open)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run everything on this machine and watch predictions flow")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the demo's topics and state")
    p.add_argument("--keep-broker", action="store_true", help="leave the embedded broker running")
    p.add_argument("--broker", default=None, help="bootstrap host:port of an existing cluster")
    p.add_argument("--web-port", type=int, default=6066,
                   help="the worker's web port: its live dashboard at http://127.0.0.1:PORT/ "
                        "(default 6066, another free port if taken; 0: off)")
    p.add_argument("--open", action="store_true", help="open the dashboard in a web browser")
    p.set_defaults(func=run)
