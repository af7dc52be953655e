"""`seqstream model list|rollback|publish`: the model versions on model-updates."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from models.checkpoint import load_checkpoint
from models.checkpoint import checkpoint_from_bytes
from stream.cli.common import add_common, settings_from
from stream.kafka import kafka_client_options, resolve_bootstrap
from stream.online.follower import read_store
from stream.online.publisher import publish_checkpoint
from stream.online.versions import VersionStore


def _fmt_metric(m: dict | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "-"
    return f"{m[key]:.4f}"


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    bootstrap = resolve_bootstrap(settings.broker)
    topic = settings.model_updates_topic
    options = kafka_client_options(settings)
    store = read_store(bootstrap, topic, options=options)
    if args.action == "list":
        return _list(args, store, topic)
    if args.action == "rollback":
        target = args.version
        blob = store.assemble(target) if target is not None else None
        if blob is None:
            known = ", ".join(str(v) for v in sorted(store.manifests) if store.has_weights(v)) or "none"
            print(f"seqstream model rollback: version {target} has no complete weights on {topic} "
                  f"(versions with weights: {known})", file=sys.stderr)
            return 2
        ckpt = checkpoint_from_bytes(blob, device="cpu")
        meta = {"source": "rollback", "parent": target, "created_ms": int(time.time() * 1000),
                "metrics": store.manifests[target].get("metrics")}
        return _publish(bootstrap, topic, store, ckpt, meta, options=options)
    if args.action == "publish":
        ckpt = load_checkpoint(args.checkpoint, device="cpu")
        meta = {"source": "checkpoint", "parent": None, "created_ms": int(time.time() * 1000),
                "path": str(args.checkpoint), "checkpoint_version": ckpt.version}
        return _publish(bootstrap, topic, store, ckpt, meta, at_least=ckpt.version, options=options)
    return 2


def _list(args: argparse.Namespace, store: VersionStore, topic: str) -> int:
    rows = []
    for v in sorted(store.manifests):
        m = store.manifests[v]
        met = m.get("metrics") or {}
        rows.append({"version": v, "parent": m.get("parent"), "source": m.get("source"),
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.get("created_ms", 0) / 1000)),
                     "candidate": met.get("candidate"), "serving_before": met.get("serving"),
                     "trained_samples": m.get("trained_samples"), "size": m.get("size"),
                     "weights": store.has_weights(v), "head": v == store.head})
    if args.json:
        print(json.dumps({"versions": rows, "head": store.head, "trainer": store.status}, indent=1))
        return 0
    if not rows:
        print(f"no versions on {topic}")
        return 0
    print(f"{'version':>8} {'parent':>6} {'source':<10} {'created (UTC)':<19} {'HR@20':>7} "
          f"{'MRR@20':>7} {'act-LL':>7} {'was HR@20':>9} {'n_eval':>6} {'weights':<7}")
    for r in rows:
        c, s = r["candidate"], r["serving_before"]
        print(f"{r['version']:>8} {str(r['parent'] if r['parent'] is not None else '-'):>6} "
              f"{str(r['source']):<10} {r['created']:<19} {_fmt_metric(c, 'hr@20'):>7} "
              f"{_fmt_metric(c, 'mrr@20'):>7} {_fmt_metric(c, 'action_logloss'):>7} "
              f"{_fmt_metric(s, 'hr@20'):>9} {str((c or {}).get('n_items', '-')):>6} "
              f"{'yes' if r['weights'] else 'gone':<7}{'  <- newest' if r['head'] else ''}")
    if store.status:
        st = store.status
        print(f"trainer: last round {st.get('decision')} ({st.get('reason')}), serving v{st.get('version')}, "
              f"samples in {st.get('samples_in')}, bad {st.get('bad_samples')}")
    return 0


def _publish(bootstrap: str, topic: str, store: VersionStore, ckpt: Any, meta: dict[str, Any],
             at_least: int = 0, options: dict[str, Any] | None = None) -> int:
    new = publish_checkpoint(bootstrap, topic, store, ckpt, meta, at_least=at_least, options=options)
    print(f"published version {new} ({meta['source']}, parent {meta.get('parent')}) to {topic}: "
          f"every worker switches to it between two micro-batches")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("model", help="model versions on model-updates: list, rollback, publish")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    msub.required = True
    for name, help_ in (("list", "versions with their metrics"),
                        ("rollback", "republish VERSION as the newest version"),
                        ("publish", "publish a checkpoint (e.g. a new offline model) as the newest version")):
        q = msub.add_parser(name, help=help_)
        if name == "list":
            q.add_argument("--json", action="store_true")
        if name == "rollback":
            q.add_argument("version", type=int)
        if name == "publish":
            q.add_argument("checkpoint")
        q.add_argument("--app-id", default=None)
        add_common(q)
        q.set_defaults(func=run)
