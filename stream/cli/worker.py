"""`seqstream worker`: consume events, publish predictions (one per host, same --app-id to scale)."""
from __future__ import annotations

import argparse

from stream.cli.common import add_common, settings_from
from stream.worker.run import run_worker


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app-id", default=None, help="faust app id and consumer group (default seqstream)")
    p.add_argument("--data-dir", default=None, help="RocksDB state directory")
    p.add_argument("--model", default=None, help="checkpoint from `seqstream train`")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-max", type=int, default=None, help="micro-batch size (default 512)")
    p.add_argument("--batch-wait-ms", type=int, default=None,
                   help="longest wait after a micro-batch's first event (default 20)")
    p.add_argument("--batch-idle-ms", type=int, default=None,
                   help="close a micro-batch once nothing new came for this long (default 1)")
    p.add_argument("--producer-linger-ms", type=int, default=None,
                   help="how long output and changelog sends are batched (default 5)")
    p.add_argument("--top-k", type=int, default=None, help="next items per prediction (default 20)")
    p.add_argument("--retrieval", default=None, choices=["exact", "ann", "auto"],
                   help="explore-path top-k: exact, ann (HNSW index), auto (ann on the CPU from 100k items; default)")
    p.add_argument("--ring", type=int, default=None,
                   help="events kept per user (default: the ring the model was trained with)")
    p.add_argument("--processing-guarantee", default=None,
                   choices=["at_least_once", "exactly_once"])
    p.add_argument("--web-port", type=int, default=None,
                   help="web server port: /metrics, /healthz, /readyz, the dashboard (0: off)")
    p.add_argument("--web-host", default=None,
                   help="web server bind address (default 127.0.0.1; any other needs SEQSTREAM_WEB_TOKEN)")
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
    p.add_argument("--no-anomaly-alerts", dest="anomaly_alerts", action="store_const", const="0",
                   default=None, help="no bursts/bots/brushing alerts on the anomalies topic "
                                      "(env SEQSTREAM_ANOMALY_ALERTS=0)")
    p.add_argument("--interests-half-life-ms", type=int, default=None,
                   help="interest profiles: category counts halve per this much event time (default 3 days)")
    p.add_argument("--interests-blend", type=float, default=None,
                   help="share of each interest weight from the model's category predictions (default 0.3; 0: history only)")
    p.add_argument("--profiles-threshold", type=float, default=None,
                   help="republish a profile when some category's weight moved by more than this (default 0.2)")
    p.add_argument("--session-timeout-s", type=float, default=None,
                   help="a worker that stops heartbeating loses its partitions after this long: the "
                        "recovery time after a crash (default 10; 6..300)")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-online", dest="online", action="store_const", const="0", default=None,
                   help="do not learn online (env SEQSTREAM_ONLINE=0); model versions are still followed")


def run(args: argparse.Namespace) -> int:
    return run_worker(settings_from(args))


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="run a faust worker: consume events, publish predictions")
    add_worker_flags(p)
    add_common(p)
    p.set_defaults(func=run)
