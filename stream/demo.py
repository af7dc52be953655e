"""`seqstream demo`: a whole deployment on one machine, with a live view of the predictions.

1. start the embedded broker (or use SEQSTREAM_BROKER / --broker);
2. train a small model on generated history (cached), create fresh topics, start a worker with
   its web server on (the live dashboard at http://127.0.0.1:<web port>/, printed);
3. stream generated "live" events (plus a few malformed ones) and show predictions as they
   arrive, with throughput, end-to-end latency and dead-letter counts;
4. stop cleanly on Ctrl-C or after --duration.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from stream.config import DEFAULT_CACHE, ConfigError, Settings
from stream.events import encode_value, input_topic, user_key
from stream.kafka import explicit_bootstrap, kafka_client, kafka_client_options, security_settings

MALFORMED = [b"\xc1 not msgpack", msgpack.packb([1, 2, 3]),
             msgpack.packb({"user_id": 1, "item_id": "", "ts": 1})]  # an empty id: bad-type


@dataclass
class LiveView:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    malformed_sent: int = 0
    predictions: int = 0
    dead_letters: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=5000))
    recent: deque = field(default_factory=lambda: deque(maxlen=6))
    # per event action: the latest prediction, and the recent P(purchase)s (does the head react?)
    latest: dict = field(default_factory=dict)
    p_purchase: dict = field(default_factory=dict)
    versions: set = field(default_factory=set)
    dashboard: str = ""  # the worker's dashboard URL ("" when its web server is off)

    def add_prediction(self, msg: dict, now_ms: int) -> None:
        self.predictions += 1
        self.latencies_ms.append(now_ms - msg["event"]["ts"])
        self.recent.append(msg)
        self.versions.add(msg["model_version"])
        act = msg["event"]["action"]
        self.latest[act] = msg
        self.p_purchase.setdefault(act, deque(maxlen=500)).append(msg["next_action"]["purchase"])

    @staticmethod
    def _line(m: dict) -> str:
        act = m["next_action"]
        top = " ".join(str(i) for i, _ in m["next_items"][:5]) or "(none)"
        return (f"  user {m['user_id']:>6} {m['event']['action']:<8} item {m['event']['item_id']:>6}"
                f" -> next: click {act['click']:.2f} cart {act['cart']:.2f} purchase "
                f"{act['purchase']:.2f} | items {top} | churn {m['churn_risk']:.2f}")

    def render(self) -> str:
        el = time.monotonic() - self.started
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        lines = [
            f"seqstream demo  {el:6.1f}s | sent {self.sent} ({self.sent / max(el, 1e-9):.0f}/s) "
            f"+ {self.malformed_sent} malformed | predictions {self.predictions} | "
            f"dead-letter {self.dead_letters} | latency p50 {np.percentile(lat, 50):.0f} ms "
            f"p99 {np.percentile(lat, 99):.0f} ms | model v{','.join(map(str, sorted(self.versions))) or '-'}",
        ]
        if self.dashboard:
            lines.append(f"  dashboard: {self.dashboard}")
        lines += [self._line(m) for m in self.recent]
        if self.latest:  # carts are ~5% of events: keep the latest of each action on screen
            lines.append("  latest after each action:")
            lines += [self._line(self.latest[a]) for a in ("click", "cart", "purchase") if a in self.latest]
            lines.append("  mean P(purchase) after a " + ", ".join(
                f"{a} {np.mean(self.p_purchase[a]):.3f} (last {len(self.p_purchase[a])})"
                for a in ("click", "cart", "purchase") if a in self.p_purchase))
        return "\n".join(lines)


def demo_model(path: Path, seed: int) -> Path:
    """Train a small model on generated history once, and reuse it while it still loads."""
    from models.checkpoint import load_checkpoint, save_checkpoint

    if path.is_file():
        try:
            load_checkpoint(path, device="cpu")
            return path
        except Exception:  # written by an older model version: train a new one
            print(f"demo: cached model {path} is from an older version; retraining")
    from models.synthetic import GeneratorConfig, generate
    from models.train.config import TrainConfig
    from models.train.run import train_model

    print(f"demo: training a small model on generated history (once; cached at {path})")
    log = generate(GeneratorConfig(users=1000, events=30_000, seed=seed))
    # a small model in a minute or two on 2 cores. 3 epochs and a heavier next-action loss: with
    # one epoch at the default weight its head barely reacts to a cart (P(purchase) .03 after a
    # cart vs .026 after a click); with these, .043 vs .024 (seen: .066 vs .020)
    ckpt = train_model(log.events(), TrainConfig(epochs=3, w_action=2.0, ring=50, cutoff_views=(), seed=seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, ckpt.model, ckpt.item_vocab, ckpt.category_vocab, version=1,
                    meta={"source": "seqstream demo", "seed": seed})
    return path


def live_events(seed: int):
    """Generated events whose event time is now: the generator's order, today's clock."""
    from models.synthetic import GeneratorConfig, generate

    log = generate(GeneratorConfig(users=2000, events=200_000, seed=seed + 1))
    while True:
        yield from log.events()


def produce(bootstrap: str, settings: Settings, rate: float, seed: int, view: LiveView,
            stop: threading.Event) -> None:
    from kafka import KafkaProducer

    producer = kafka_client(KafkaProducer, bootstrap, kafka_client_options(settings), linger_ms=5, acks=1)
    events = live_events(seed)
    interval = 1.0 / rate
    next_at = time.monotonic()
    try:
        for n, ev in enumerate(events):
            if stop.is_set():
                break
            now_ms = int(time.time() * 1000)
            ev = type(ev)(ev.user_id, ev.item_id, ev.action, now_ms, ev.category_id, ev.session_id)
            producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev))
            view.sent += 1
            if n % 250 == 249:  # show that bad input is routed, not fatal
                producer.send(settings.topic("click"), key=b"1", value=MALFORMED[n % len(MALFORMED)])
                view.malformed_sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        producer.flush(10)
        producer.close(5)


def web_port_for(wanted: int, host: str = "127.0.0.1") -> int:
    """`wanted` if it is free on `host`, else one the OS picks (0 stays 0: web server off)."""
    if wanted <= 0:
        return 0
    from stream.broker.process import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, wanted))
            return wanted
        except OSError:
            return free_port(host)


def run_demo(*, duration: float | None = None, rate: float = 200.0, partitions: int = 4,
             seed: int = 7, keep: bool = False, keep_broker: bool = False,
             broker: str | None = None, web_port: int = 6066, open_browser: bool = False) -> int:
    """The whole demo (see the module docstring); the exit code. `duration` None: until Ctrl-C.
    `keep`: leave its topics and state; `keep_broker`: leave an embedded broker it started running;
    `broker`: host:port of an existing cluster (else SEQSTREAM_BROKER, else the embedded one);
    `web_port`: the worker's web server and dashboard (taken if busy: another free one; 0: off);
    `open_browser`: open the dashboard in a browser once the worker serves it."""
    from kafka import KafkaConsumer

    from stream.broker.process import port_open
    from stream.topics import create_topics, delete_topics

    if rate <= 0:
        raise ConfigError(f"--rate must be positive, got {rate}")
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration must be positive, got {duration}")
    if not 0 <= web_port <= 65535:
        raise ConfigError(f"--web-port must be in 0..65535 (0: off), got {web_port}")
    broker_handle = None
    bootstrap = explicit_bootstrap(broker)
    if not bootstrap:
        from stream.broker.embedded import EmbeddedBroker

        broker_handle = EmbeddedBroker()
        already = broker_handle.status().running
        broker_handle.start()
        if already:
            broker_handle = None  # not ours to stop
        bootstrap = EmbeddedBroker().bootstrap
    print(f"demo: broker at {bootstrap}")
    from models.synthetic import GENERATOR_VERSION

    # one cache per generator version: a model trained on older generated behaviour is stale
    model_path = demo_model(DEFAULT_CACHE / "demo" / f"model-seed{seed}-gen{GENERATOR_VERSION}.pt", seed)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    settings = Settings(prefix=f"demo-{run_id}.", app_id=f"seqstream-demo-{run_id}",
                        broker=bootstrap, model=str(model_path), **security_settings())
    create_topics(bootstrap, settings, partitions)
    workdir = Path(tempfile.mkdtemp(prefix="seqstream-demo-"))
    worker_log = workdir / "worker.log"
    cmd = [sys.executable, "-m", "stream.cli", "worker", "--broker", bootstrap,
           "--prefix", settings.prefix, "--app-id", settings.app_id, "--model", str(model_path),
           "--data-dir", str(workdir / "state")]
    port = web_port_for(web_port)
    dashboard = f"http://127.0.0.1:{port}/" if port else ""
    if port:
        cmd += ["--web-port", str(port), "--web-host", "127.0.0.1"]
    print(f"demo: starting worker (log: {worker_log})")
    if dashboard:
        hint = " (append #token=<SEQSTREAM_WEB_TOKEN>)" if os.environ.get("SEQSTREAM_WEB_TOKEN") else ""
        print(f"demo: dashboard at {dashboard}{hint}", flush=True)
    with open(worker_log, "wb") as logf:
        worker = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    view = LiveView(dashboard=dashboard)
    opened = not (open_browser and dashboard)
    stop = threading.Event()
    consumer = kafka_client(KafkaConsumer, bootstrap, kafka_client_options(settings),
                            topics=(settings.predictions_topic, settings.dead_letter_topic),
                            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    producer = threading.Thread(target=produce, name="demo-producer", daemon=True,
                                args=(bootstrap, settings, rate, seed, view, stop))
    producer.start()
    tty = sys.stdout.isatty()
    deadline = time.monotonic() + duration if duration else float("inf")
    last_render = 0.0
    rc = 0
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"demo: the worker exited with {worker.returncode}; see {worker_log}")
                rc = 1
                break
            if not opened and port_open("127.0.0.1", port):
                opened = True
                import webbrowser

                webbrowser.open(dashboard)
            for tp, records in consumer.poll(timeout_ms=200).items():
                now_ms = int(time.time() * 1000)
                for rec in records:
                    if tp.topic == settings.dead_letter_topic:
                        view.dead_letters += 1
                    else:
                        view.add_prediction(msgpack.unpackb(rec.value, raw=False), now_ms)
            if time.monotonic() - last_render >= 1.0:
                last_render = time.monotonic()
                print(("\x1b[2J\x1b[H" if tty else "") + view.render() + ("" if tty else "\n"),
                      flush=True)
    except KeyboardInterrupt:
        print("\ndemo: stopping")
    finally:
        stop.set()
        producer.join(10)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        consumer.close()
        print(view.render())
        if not keep:
            delete_topics(bootstrap, settings)
            shutil.rmtree(workdir, ignore_errors=True)
        if broker_handle is not None and not keep_broker:
            broker_handle.stop()
    if rc == 0 and view.predictions == 0:
        print(f"demo: no predictions arrived; see {worker_log}")
        rc = 1
    return rc

