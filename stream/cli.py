"""`seqstream ...`: one entry point for operators, data teams and the demo."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Sequence

from stream.config import ConfigError, Settings


class OneLineParser(argparse.ArgumentParser):
    """A bad argument gets one line that says what is wrong, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=None,
                   help="prepended verbatim to every topic name (env SEQSTREAM_PREFIX)")
    p.add_argument("--broker", default=None,
                   help="bootstrap host:port of an existing cluster (env SEQSTREAM_BROKER); "
                        "default: the embedded broker")


def settings_from(args: argparse.Namespace) -> Settings:
    keys = ("prefix", "broker", "app_id", "data_dir", "model", "device", "batch_max",
            "batch_wait_ms", "top_k", "ring", "processing_guarantee", "web_port", "log_level",
            "allowed_lateness_ms", "order_grace_ms", "churn_inactivity_ms", "churn_risk_threshold",
            "churn_sweep_s", "online")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    import os

    if "broker" not in overrides and os.environ.get("SEQSTREAM_BROKER"):
        overrides["broker"] = os.environ["SEQSTREAM_BROKER"]
    return Settings.from_env(**overrides).validate()


# -- topics --------------------------------------------------------------------------------------

def cmd_topics(args: argparse.Namespace) -> int:
    from stream.topics import check_copartitioned, create_topics
    from stream.worker import resolve_bootstrap

    settings = settings_from(args)
    bootstrap = resolve_bootstrap(settings)
    if args.action == "create":
        created = create_topics(bootstrap, settings, args.partitions)
        print(f"created {len(created)} topics on {bootstrap}: {', '.join(created) or '(all existed)'}")
    n = check_copartitioned(bootstrap, settings)
    print(f"inputs {', '.join(settings.input_topics)} are co-partitioned with {n} partitions")
    return 0


def add_topics(sub) -> None:
    p = sub.add_parser("topics", help="create or check the input, output and internal topics")
    p.add_argument("action", choices=["create", "check"])
    p.add_argument("--partitions", type=int, default=4, help="partitions per keyed topic (default 4)")
    p.add_argument("--app-id", default=None, help="app id whose state changelog to create")
    add_common(p)
    p.set_defaults(func=cmd_topics)


# -- worker --------------------------------------------------------------------------------------

def add_worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app-id", default=None, help="faust app id and consumer group (default seqstream)")
    p.add_argument("--data-dir", default=None, help="RocksDB state directory")
    p.add_argument("--model", default=None, help="checkpoint from `seqstream train`")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-max", type=int, default=None, help="micro-batch size (default 512)")
    p.add_argument("--batch-wait-ms", type=int, default=None, help="micro-batch wait (default 20)")
    p.add_argument("--top-k", type=int, default=None, help="next items per prediction (default 20)")
    p.add_argument("--ring", type=int, default=None,
                   help="events kept per user (default: the ring the model was trained with)")
    p.add_argument("--processing-guarantee", default=None,
                   choices=["at_least_once", "exactly_once"])
    p.add_argument("--web-port", type=int, default=None, help="faust web/metrics port (0: off)")
    p.add_argument("--allowed-lateness-ms", type=int, default=None,
                   help="the event-time clock trails the newest event by this (default 60000)")
    p.add_argument("--order-grace-ms", type=int, default=None,
                   help="hold events until a fetch this much newer shows the other input topics "
                        "caught up (default 0; a few hundred ms for byte-identical replays)")
    p.add_argument("--churn-inactivity-ms", type=int, default=None,
                   help="alert after this much event-time inactivity (default 2 days)")
    p.add_argument("--churn-risk-threshold", type=float, default=None,
                   help="...if the last churn risk is at least this (default 0: any user)")
    p.add_argument("--churn-sweep-s", type=float, default=None,
                   help="how often the churn sweep runs, wall seconds (default 5)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-online", dest="online", action="store_const", const="0", default=None,
                   help="do not learn online (env SEQSTREAM_ONLINE=0); model versions are still followed")


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.worker import run_worker

    return run_worker(settings_from(args))


def add_worker(sub) -> None:
    p = sub.add_parser("worker", help="run a faust worker: consume events, publish predictions")
    add_worker_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_worker)


# -- everything else is registered by the module that owns it --------------------------------------

def _optional(module: str, sub) -> None:
    import importlib

    try:
        importlib.import_module(module).add_cli(sub)
    except ImportError as exc:  # a missing optional piece must not break the other commands
        logging.getLogger("seqstream").debug("%s unavailable: %s", module, exc)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="seqstream",
                           description="Streaming next-item, next-action and churn prediction on Kafka.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    _optional("stream.broker", sub)
    add_topics(sub)
    add_worker(sub)
    for module in ("stream.demo", "stream.generate_cli", "stream.replay", "stream.model_cli",
                   "stream.online"):
        _optional(module, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):  # client chatter drowns the operator's lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"seqstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # operators get one line; the traceback is for --log-level debug
        from stream.topics import TopicError

        if isinstance(exc, TopicError):
            print(f"seqstream {args.command}: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("seqstream").debug("failed", exc_info=True)
        print(f"seqstream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
