"""`seqstream trainer`: the online trainer alone (no serving); run workers with
SEQSTREAM_ONLINE_TRAINER=external."""
from __future__ import annotations

import argparse
from typing import Any

from stream.cli.common import add_common, settings_from
from stream.cli.worker import add_worker_flags
from stream.online.settings import OnlineSettings
from stream.worker.run import run_trainer


def _online_flags(p: argparse.ArgumentParser) -> None:
    d = OnlineSettings()
    p.add_argument("--every-n", type=int, default=None, help=f"round after N samples (default {d.every_n})")
    p.add_argument("--every-s", type=float, default=None, help=f"...or T seconds (default {d.every_s:g})")
    p.add_argument("--min-samples", type=int, default=None, help=f"fewest samples for a timed round ({d.min_samples})")
    p.add_argument("--lr", type=float, default=None, help=f"online learning rate ({d.lr:g})")
    p.add_argument("--margin", type=float, default=None,
                   help=f"promote unless worse than serving by this relative margin ({d.margin:g})")
    p.add_argument("--keep-versions", type=int, default=None, help=f"versions keeping weights ({d.keep_versions})")


def _online_from(args: argparse.Namespace, settings: Any) -> OnlineSettings:
    return OnlineSettings.from_settings(settings, every_n=args.every_n, every_s=args.every_s,
                                        min_samples=args.min_samples, lr=args.lr, margin=args.margin,
                                        keep_versions=args.keep_versions)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    return run_trainer(settings, _online_from(args, settings))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("trainer", help="run the online trainer alone (no serving); "
                                       "run workers with SEQSTREAM_ONLINE_TRAINER=external")
    add_worker_flags(p)
    _online_flags(p)
    add_common(p)
    p.set_defaults(func=run)
