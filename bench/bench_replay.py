"""Replay throughput: N generated events -> the embedded broker at --speed max.

    python bench/bench_replay.py [--events 200000] [--users 20000] [--runs 3] [--format msgpack]
                                 [--partitions 4] [--bootstrap HOST:PORT] [--acks all|1]
                                 [--producers N]

Generates a synthetic log once (models.synthetic), writes it as jsonl/msgpack, then replays the
file `--runs` times (each into fresh topics with a unique prefix, so runs do not share state)
through the same path as `seqstream replay FILE --speed max`: file reader -> encode -> producer,
checkpoints included, with `--producers` producer processes (default as the CLI's: 2 on 2+ CPUs).
Events/s count from the first lane's first send to the last lane's final flush. Prints events/s per run and the median. A figure, not a test: the target
is >= 50,000 events/s on a laptop-class machine with the broker on the same host.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.datasets.dump import write_jsonl, write_msgpack  # noqa: E402
from models.schema import ACTIONS  # noqa: E402
from models.synthetic import GeneratorConfig, generate  # noqa: E402
from stream.kafka import resolve_bootstrap  # noqa: E402
from stream.replay.file import replay_file  # noqa: E402
from stream.replay.options import ReplayOptions, default_producers  # noqa: E402
from stream.replay.producer import Replayer  # noqa: E402


def create_topics(bootstrap: str, prefix: str, partitions: int) -> list[str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    names = [f"{prefix}{a}" for a in ACTIONS]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="seqstream-bench")
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()
    return names


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="seqstream-bench")
    try:
        admin.delete_topics(names)
    except Exception as exc:  # cleanup only
        print(f"  (could not delete {names}: {exc})", file=sys.stderr)
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--format", choices=("jsonl", "msgpack"), default="msgpack")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--bootstrap", default=None, help="default: $SEQSTREAM_BROKER or the embedded broker")
    p.add_argument("--acks", default=None, help="override the producer's acks (all|1|0)")
    p.add_argument("--linger-ms", type=int, default=None)
    p.add_argument("--batch-kib", type=int, default=None)
    p.add_argument("--producers", type=int, default=default_producers(None, None),
                   help="producer processes, as `seqstream replay --producers` "
                        "(default: %(default)s here)")
    args = p.parse_args(argv)
    if args.producers < 1:
        p.error("--producers must be at least 1")
    command = "python bench/bench_replay.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    bootstrap = resolve_bootstrap(args.bootstrap)
    overrides: dict = {}
    if args.acks is not None:
        acks = args.acks if args.acks == "all" else int(args.acks)
        overrides.update(acks=acks, enable_idempotence=acks == "all",
                         max_in_flight_requests_per_connection=5 if acks == "all" else 1)
    if args.linger_ms is not None:
        overrides["linger_ms"] = args.linger_ms
    if args.batch_kib is not None:
        overrides["batch_size"] = args.batch_kib * 1024

    t = time.perf_counter()
    log = generate(GeneratorConfig(users=args.users, events=args.events, seed=1))
    gen_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = Path(tmp) / f"bench.{args.format}"
        (write_msgpack if args.format == "msgpack" else write_jsonl)(log.events(), path)
        print(f"generated {len(log)} events for {args.users} users in {gen_s:.2f}s; "
              f"file {path.stat().st_size / 1e6:.1f} MB ({args.format}); broker {bootstrap}")
        rates = []
        for run in range(args.runs):
            prefix = f"bench-{uuid.uuid4().hex[:8]}-"
            names = create_topics(bootstrap, prefix, args.partitions)
            try:
                opts = ReplayOptions(path, args.format, prefix=prefix, progress=False,
                                     checkpoint=Path(tmp) / f"cp-{run}.json",
                                     producers=args.producers)
                # A factory: each producer process makes its own (see stream/replay/lanes.py).
                summary = replay_file(opts, lambda: Replayer(bootstrap, prefix=prefix,
                                                             producer_config=overrides))
            finally:
                delete_topics(bootstrap, names)
            assert summary.total == len(log), summary.line()
            rates.append(summary.events_per_s)
            print(f"run {run + 1}: {summary.total} events in {summary.elapsed_s:.2f}s = "
                  f"{summary.events_per_s:,.0f} events/s")
    print(f"median {statistics.median(rates):,.0f} events/s over {args.runs} runs "
          f"({args.producers} producer{'s' if args.producers > 1 else ''}; cpus {os.cpu_count()}; "
          f"producer overrides {overrides or 'none'})")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
