"""Attach online learning to a worker: serve the newest published version, follow model-updates,
capture samples, and run the trainer agent (in the worker, or alone in `seqstream trainer`).

It reaches the scoring pipeline through its public hooks only: `add_extension` (once per
pipeline), `add_batch_hook` (sample capture), `request_swap` (a new version between two batches)
and `scorer.swap` (before the agents start)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from models.online.learner import OnlineLearner
from stream.guarantee import record_sender
from stream.kafka import kafka_client_options
from stream.online.capture import SampleCapture
from stream.online.follower import Follower
from stream.online.publisher import Publisher
from stream.online.settings import OnlineSettings
from stream.online.trainer import Trainer
from stream.scoring import ScoringModel

log = logging.getLogger("seqstream.online")


@dataclass
class OnlineParts:
    """What online learning attached to one pipeline (its extension "online")."""

    follower: Follower | None = None
    capture: SampleCapture | None = None
    trainer: Trainer | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the worker's loop, once faust runs


def bootstrap_of(app: Any) -> str:
    url = app.conf.broker[0]
    return f"{url.host}:{url.port}"


def register_trainer(app: Any, settings: Any, trainer: Trainer, agent_name: str) -> None:
    """The trainer agent on the 1-partition training-samples topic, and its timed rounds."""
    samples = app.topic(settings.topic("training-samples"), key_serializer="raw", value_serializer="raw")
    within = max(0.05, min(1.0, trainer.online.every_s))

    @app.agent(samples, name=agent_name)
    async def online_trainer(stream):  # noqa: ANN001 - faust's stream type
        async for batch in stream.take_events(max(1, trainer.online.every_n), within=within):
            try:
                trainer.add(ev.message.value for ev in batch)
                await trainer.maybe_round()
            except Exception:
                log.exception("trainer round failed; its samples are dropped")

    @app.timer(interval=max(1.0, min(trainer.online.every_s, 5.0)))
    async def online_trainer_tick() -> None:  # a quiet topic still gets its T-second round
        try:
            await trainer.maybe_round()
        except Exception:
            log.exception("trainer round failed")


def _make_follower(app: Any, settings: Any, device: Any) -> Follower:
    return Follower(bootstrap_of(app), settings.model_updates_topic, device=device,
                    options=kafka_client_options(settings))


def register_online(wiring: Any, pipeline: Any, settings: Any) -> None:
    """Call after `register_agents`, before faust starts. Serves the newest published version
    first (read to the end of model-updates), then follows it; captures samples and runs the
    trainer agent unless online learning is off."""
    parts = OnlineParts()
    if not pipeline.add_extension("online", parts):
        return
    online = OnlineSettings.from_settings(settings)
    app = wiring.app
    scoring = pipeline.scorer.scoring
    follower = _make_follower(app, settings, scoring.device)
    try:
        ckpt = follower.catch_up(scoring.version)
    except Exception as exc:
        log.warning("model-updates unavailable (%s): serving version %d, not following",
                    exc, scoring.version)
        return
    if ckpt is not None:
        pipeline.scorer.swap(ScoringModel.from_checkpoint(ckpt, settings.retrieval))
        log.info("serving version %d from model-updates (checkpoint had %d)", ckpt.version, scoring.version)
    parts.follower = follower

    def on_version(version: int, ckpt: Any, manifest: dict) -> None:
        loop = parts.loop
        if loop is not None:
            # the ANN index (if any) is built here, on the follower's thread, not in the event loop
            loop.call_soon_threadsafe(pipeline.request_swap, ScoringModel.from_checkpoint(ckpt, settings.retrieval))

    follower.listeners.append(on_version)

    @app.task
    async def start_model_follower() -> None:
        parts.loop = asyncio.get_running_loop()
        follower.start()

    if not online.enabled:
        log.info("online learning off: serving and following model-updates only")
        return
    capture = SampleCapture(_sample_sender(app, settings))
    pipeline.add_batch_hook(capture)
    parts.capture = capture
    if online.trainer == "worker":
        trainer = make_trainer(app, settings, online, pipeline.scorer.scoring, follower)
        parts.trainer = trainer
        register_trainer(app, settings, trainer, f"{settings.app_id}-online-trainer")

    @app.timer(interval=10.0)
    async def online_report() -> None:
        t = parts.trainer
        log.info("seqstream online capture=%s trainer=%s", capture.metrics.__dict__,
                 None if t is None else {k: v for k, v in t.metrics.__dict__.items() if k != "last"})


def _sample_sender(app: Any, settings: Any) -> Any:
    """The cheapest way to put one sample on training-samples (so that, under exactly_once,
    samples join the worker's transactions)."""
    topic = app.topic(settings.topic("training-samples"), key_serializer="raw", value_serializer="raw")
    return record_sender(app, topic, settings.processing_guarantee)


def make_trainer(app: Any, settings: Any, online: OnlineSettings, scoring: Any,
                 follower: Follower) -> Trainer:
    learner = OnlineLearner(scoring.model, scoring.items, scoring.categories, version=scoring.version,
                            config=online.learner_config(device=None if settings.device == "auto"
                                                         else settings.device))
    publisher = Publisher(bootstrap_of(app), settings.model_updates_topic, kafka_client_options(settings))
    return Trainer(learner, publisher, follower, online)
