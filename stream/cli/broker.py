"""`seqstream broker start|stop|status`: the embedded single-node Kafka broker (stream/broker/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stream.broker.embedded import DEFAULT_PORT, EmbeddedBroker
from stream.broker.install import BrokerError


def _broker_from_args(args: argparse.Namespace) -> EmbeddedBroker:
    kwargs: dict[str, Any] = {}
    if args.port is not None:
        kwargs["port"] = args.port
    if args.data_dir is not None:
        kwargs["data_dir"] = Path(args.data_dir)
    return EmbeddedBroker(**kwargs)


def _fail(err: BrokerError) -> SystemExit:
    return SystemExit(f"seqstream broker: {err}")


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        broker = _broker_from_args(args)
        st = broker.start(timeout_s=args.timeout or 60.0)
    except BrokerError as e:
        raise _fail(e) from None
    what = "already running" if st.already_running else "started"
    print(f"broker {what}: {st.bootstrap} (pid {st.pid}, data {st.data_dir})", file=sys.stderr)
    print(st.bootstrap)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        broker = _broker_from_args(args)
        stopped = broker.stop(timeout_s=args.timeout or 30.0)
    except BrokerError as e:
        raise _fail(e) from None
    print(f"broker {'stopped' if stopped else 'was not running'}: {broker.bootstrap}", file=sys.stderr)
    print(broker.bootstrap)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        st = _broker_from_args(args).status()
    except BrokerError as e:
        raise _fail(e) from None
    if st.running and st.ready:
        state = "running"
    elif st.running:
        state = "starting (or not answering)"
    else:
        state = "not running"
    pid = f", pid {st.pid}" if st.pid else ""
    print(f"broker {state}: {st.bootstrap}{pid} (data {st.data_dir})", file=sys.stderr)
    print(st.bootstrap)
    return 0 if st.running and st.ready else 1


def add_parser(subparsers: Any) -> None:
    """Add `broker start|stop|status [--port N] [--data-dir DIR] [--timeout S]`.

    Each action sets args.func(args) -> int exit code and prints the bootstrap address
    on stdout (human detail on stderr); `status` exits 1 when the broker is not up.
    """
    p = subparsers.add_parser("broker", help="embedded single-node Kafka broker (KRaft)")
    actions = p.add_subparsers(dest="broker_action", metavar="{start,stop,status}", required=True)
    for name, func, hlp in (("start", _cmd_start, "start it (idempotent) and wait until it answers"),
                            ("stop", _cmd_stop, "stop it (controlled shutdown)"),
                            ("status", _cmd_status, "exit 0 if it is up, 1 if not")):
        a = actions.add_parser(name, help=hlp)
        a.add_argument("--port", type=int, default=None,
                       help=f"PLAINTEXT port (default $SEQSTREAM_BROKER_PORT or {DEFAULT_PORT})")
        a.add_argument("--data-dir", default=None,
                       help="state dir (default $SEQSTREAM_BROKER_DIR or ~/.cache/seqstream/broker/<port>)")
        a.add_argument("--timeout", type=float, default=None, help="seconds to wait (start 60, stop 30)")
        a.set_defaults(func=func)
