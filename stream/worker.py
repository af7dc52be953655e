"""`seqstream worker`: check topics, load the model, wire the agents, run faust."""
from __future__ import annotations

import logging
import os

import torch

from models.gru import ModelConfig, SeqModel, Vocab, load_checkpoint
from stream.config import ConfigError, Settings
from stream.scoring import ScoringModel

log = logging.getLogger("seqstream.worker")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_scoring_model(settings: Settings) -> ScoringModel:
    device = pick_device(settings.device)
    if settings.model:
        try:
            ckpt = load_checkpoint(settings.model, device=device)
        except Exception as exc:
            raise ConfigError(f"cannot load model {settings.model}: {exc}") from None
        return ScoringModel.from_checkpoint(ckpt)
    # No checkpoint: an untrained model with empty vocabularies. Every item is "unknown", so
    # next_items stays empty until a trained version is loaded; actions and churn still flow.
    log.warning("no --model given: serving an untrained model with an empty vocabulary")
    model = SeqModel(ModelConfig(n_items=2, n_categories=2, ring=settings.ring or 50)).to(device).eval()
    return ScoringModel(model, Vocab([], 2), Vocab([], 2), 0, device)


def resolve_bootstrap(settings: Settings) -> str:
    """TRANSITIONAL: callers move to stream.kafka.resolve_bootstrap."""
    from stream.kafka import resolve_bootstrap as _resolve

    return _resolve(settings.broker)


def run_worker(settings: Settings) -> int:
    import faust

    from stream.agents import ScoringPipeline, register_agents
    from stream.app import create_app
    from stream.churn import ChurnPolicy
    from stream.scoring import Scorer
    from stream.topics import check_copartitioned

    settings.validate()
    # the scorer and the in-worker trainer run in two executor threads beside the event loop:
    # more intra-op threads than that oversubscribes small hosts (measured in bench_capture.py)
    torch.set_num_threads(settings.torch_threads or max(1, min(4, (os.cpu_count() or 2) // 2)))
    bootstrap = resolve_bootstrap(settings)
    partitions = check_copartitioned(bootstrap, settings)
    scoring = load_scoring_model(settings)
    wiring = create_app(settings, bootstrap, partitions)
    policy = ChurnPolicy(inactivity_ms=settings.churn_inactivity_ms,
                         risk_threshold=settings.churn_risk_threshold,
                         allowed_lateness_ms=settings.allowed_lateness_ms)
    ring = settings.ring or scoring.model.cfg.ring  # the copy path was trained on this length
    pipeline = ScoringPipeline(settings, wiring, Scorer(scoring, ring_size=ring,
                                                        top_k=settings.top_k, churn=policy))
    register_agents(wiring, pipeline)
    from stream.online import register_online

    register_online(wiring, pipeline, settings)  # sample capture, trainer, model-updates follower
    log.info("worker %s on %s: %d partitions, model version %d on %s, ring %d", settings.app_id,
             bootstrap, partitions, pipeline.scorer.scoring.version, scoring.device, ring)
    worker = faust.Worker(wiring.app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0
