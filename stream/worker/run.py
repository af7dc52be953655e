"""The run entries: `seqstream worker` (check topics, load the model, wire the agents, run faust)
and `seqstream trainer` (the online trainer agent alone, in its own faust app)."""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, NoReturn

import torch

from models.device import resolve_device
from models.checkpoint import load_checkpoint
from models.config import ModelConfig
from models.gru import SeqModel
from models.vocab import Vocab
from stream.config import ConfigError, Settings
from stream.kafka import resolve_bootstrap
from stream.scoring import ScoringModel

if TYPE_CHECKING:
    from stream.online.settings import OnlineSettings

log = logging.getLogger("seqstream.worker")
STOP_S = 8.0  # SIGTERM -> exit: faust's stop, then busy executor threads up to this bound


def load_scoring_model(settings: Settings) -> ScoringModel:
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:  # cuda asked for, none there: one line for the operator
        raise ConfigError(str(exc)) from None
    if settings.model:
        try:
            ckpt = load_checkpoint(settings.model, device=device)
        except Exception as exc:
            raise ConfigError(f"cannot load model {settings.model}: {exc}") from None
        return ScoringModel.from_checkpoint(ckpt, settings.retrieval)
    # No checkpoint: an untrained model with empty vocabularies. Every item is "unknown", so
    # next_items stays empty until a trained version is loaded; actions and churn still flow.
    log.warning("no --model given: serving an untrained model with an empty vocabulary")
    model = SeqModel(ModelConfig(n_items=2, n_categories=2, ring=settings.ring or 50)).to(device).eval()
    return ScoringModel(model, Vocab([], 2), Vocab([], 2), 0, device)


def run_worker(settings: Settings) -> int:
    import faust

    from models.anomaly import AnomalyPolicy
    from models.interests import InterestPolicy
    from stream.churn import ChurnPolicy
    from stream.guarantee import fence_commits
    from stream.online.wiring import register_online
    from stream.scoring import Scorer
    from stream.topics import HISTORICAL_TIME_ADVICE, check_copartitioned, historical_time_topics
    from stream.worker.agents import register_agents
    from stream.worker.app import create_app
    from stream.kafka import kafka_client_options
    from stream.worker.pipeline import ScoringPipeline
    from stream.worker.probe import RecordProbe
    from stream.worker.web import check_exposure

    settings.validate()
    check_exposure(settings)  # a non-local web host needs the feed's token
    # the scorer and the in-worker trainer run in two executor threads beside the event loop:
    # more intra-op threads than that oversubscribes small hosts (measured in bench_capture.py)
    torch.set_num_threads(settings.torch_threads or max(1, min(4, (os.cpu_count() or 2) // 2)))
    bootstrap = resolve_bootstrap(settings.broker)
    partitions = check_copartitioned(bootstrap, settings)
    stale = historical_time_topics(bootstrap, settings)
    if stale:
        logging.getLogger("seqstream").warning("%s %s", ", ".join(stale), HISTORICAL_TIME_ADVICE)
    scoring = load_scoring_model(settings)
    wiring = create_app(settings, bootstrap, partitions)
    policy = ChurnPolicy(inactivity_ms=settings.churn_inactivity_ms,
                         risk_threshold=settings.churn_risk_threshold,
                         allowed_lateness_ms=settings.allowed_lateness_ms)
    ring = settings.ring or scoring.model.cfg.ring  # the copy path was trained on this length
    anomaly = AnomalyPolicy() if settings.anomaly_alerts != "0" else None
    # reads input records outside faust when some never reached the agent (worker/delivery.py)
    probe = RecordProbe(bootstrap, settings.app_id, kafka_client_options(settings), isolation_level=(
        "read_committed" if settings.processing_guarantee == "exactly_once" else "read_uncommitted"))
    interests = InterestPolicy(half_life_ms=settings.interests_half_life_ms,
                               blend=settings.interests_blend,
                               publish_threshold=settings.profiles_threshold)
    scorer = Scorer(scoring, ring_size=ring, top_k=settings.top_k, churn=policy, anomaly=anomaly,
                    interests=interests)
    pipeline = ScoringPipeline(settings, wiring, scorer, probe)
    register_agents(wiring, pipeline)
    if settings.processing_guarantee == "exactly_once":
        fence_commits(wiring.app, pipeline.state_lock)  # a batch never straddles two transactions
    register_online(wiring, pipeline, settings)  # sample capture, trainer, model-updates follower
    log.info("worker %s on %s: %d partitions, model version %d on %s, ring %d", settings.app_id,
             bootstrap, partitions, pipeline.scorer.scoring.version, scoring.device, ring)
    worker = _worker_class(faust)(wiring.app, loglevel=settings.log_level.upper(), quiet=True)
    worker.before_stop.append(pipeline.begin_shutdown)
    return _run_to_exit(worker, [pipeline.executor, _trainer_executor(pipeline)])


def _run_to_exit(worker, executors: list) -> NoReturn:  # noqa: ANN001
    """Run faust until it stops; then give busy executor threads (an online-training round can
    take many seconds) until STOP_S after the signal, and exit without them past that: by then
    faust has committed the offsets, flushed the producer and closed the tables, and a round cut
    short only loses its candidate (its samples were consumed). Does not return."""
    try:
        worker.execute_from_commandline()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    for executor in executors:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    deadline = (worker.stop_started or time.monotonic()) + STOP_S
    busy = [t for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    for thread in busy:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in busy if t.is_alive()]
    if left:
        log.warning("exiting with %s still busy (a training round in progress is abandoned)",
                    ", ".join(left))
    # Everything that matters is done. The interpreter's own teardown of torch, RocksDB and
    # client objects took another ~3 s (measured); skip it.
    atexit._run_exitfuncs()  # kafka-python closes its clients here
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _trainer_executor(pipeline):  # noqa: ANN001, ANN202
    trainer = getattr(pipeline.extensions.get("online"), "trainer", None)
    return getattr(trainer, "executor", None)


def _worker_class(faust):  # noqa: ANN001, ANN202 - faust is imported lazily
    class Worker(faust.Worker):
        """faust's worker, calling `before_stop` hooks on SIGTERM/SIGINT before the app (and its
        consumer) stops."""

        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            self.before_stop: list = []
            self.stop_started: float | None = None

        async def on_stop(self) -> None:
            self.stop_started = time.monotonic()
            for hook in self.before_stop:
                try:
                    hook()
                except Exception:
                    log.exception("shutdown hook failed")
            await super().on_stop()

    return Worker


def run_trainer(settings: Settings, online: "OnlineSettings") -> int:
    """The trainer agent alone, in its own faust app (group <app-id>-trainer); no serving."""
    import faust

    from stream.online.follower import Follower
    from stream.online.wiring import make_trainer, register_trainer

    settings.validate()
    bootstrap = resolve_bootstrap(settings.broker)
    scoring = load_scoring_model(settings)
    group = f"{settings.app_id}-trainer"
    (settings.data_dir / "trainer").mkdir(parents=True, exist_ok=True)  # faust does not create it
    from stream.kafka import faust_credentials, kafka_client_options

    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://",
                    broker_credentials=faust_credentials(settings),
                    datadir=str(settings.data_dir / "trainer"), consumer_auto_offset_reset="earliest",
                    topic_allow_declare=False, web_enabled=False, broker_session_timeout=30.0,
                    broker_heartbeat_interval=3.0)
    follower = Follower(bootstrap, settings.model_updates_topic, device=scoring.device,
                        options=kafka_client_options(settings))
    ckpt = follower.catch_up(scoring.version)
    if ckpt is not None:
        scoring = ScoringModel.from_checkpoint(ckpt, settings.retrieval)
    trainer = make_trainer(app, settings, online, scoring, follower)
    register_trainer(app, settings, trainer, f"{group}-agent")

    @app.task
    async def start_follower() -> None:
        follower.start()

    logging.getLogger("seqstream.online").info(
        "trainer %s on %s: base version %d on %s, round every %d samples or %.0fs", group,
        bootstrap, scoring.version, trainer.learner.device, online.every_n, online.every_s)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0
