"""`TrainConfig`: every knob of offline training, with the defaults the benchmarks chose."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    # one pass: an epoch already walks the log once per cutoff view (7 of them); a second pass
    # overfits the GRU (taobao_users, 3 seeds: item R@20 0.618 at 1 epoch, 0.608 at 2, 0.600 at 3)
    epochs: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch: int = 8  # users per mini-batch, at least (small: more updates on small logs)
    # ... and more users while the mini-batch's BPTT chunk holds at most this many event slots:
    # logs of short sessions (the Taobao time slice: median 1 event per user) would otherwise
    # train on ~16 events per update (430-730 events/s there; 3.3k with 256). Histories of 32+
    # events keep `batch` users. 0 = off. 512 halves the updates on taobao_users (item MRR@20
    # 0.236); 256 and 128 score like off there (bench/history/BENCHMARKS-to-2026-11-25.md).
    batch_events: int = 256
    bptt: int = 64  # steps per truncated-BPTT chunk
    negatives: int = 512  # shared sampled negatives per chunk (plus in-batch targets)
    alpha: float = 0.5  # negatives ∝ pop^alpha
    horizon_s: float = 24 * 3600.0  # churn horizon
    w_category: float = 1.0
    w_action: float = 0.5
    w_churn: float = 0.5
    clip: float = 5.0
    seed: int = 0
    device: str | None = None  # None: cuda when available
    max_items: int = 500_002  # vocabulary capacities (incl. padding and unknown)
    max_categories: int = 50_002
    hidden: int = 64
    emb: int = 64
    ring: int = 200  # L of the copy path: 200 covers 82.7% of scored Taobao items vs 71.9% at 50
    dropout: float = 0.25
    copy_ids: bool = False  # id embeddings in copy keys overfit on small logs
    copy_context: bool = False  # h-dependent copy scores overfit too (item MRR@20 0.21 -> 0.17)
    fusion: str = "tiered"  # see ModelConfig.fusion
    copy_decay: bool = True  # see ModelConfig.copy_decay
    copy_transitions: bool = True  # see ModelConfig.copy_transitions
    cat_successors: int = 32  # see ModelConfig.cat_successors (0: off)
    cat_history_first: bool = True  # see ModelConfig.cat_history_first
    copy_lr_mult: float = 10.0
    # the last `calibrate_frac` of the log's time trains nothing but calibrates the mixture (see
    # calibrate_fusion); 0 = no hold-out, no calibration
    calibrate_frac: float = 0.1
    # explore biases start at log train popularity: ids seen a handful of times barely move in one
    # pass, and a zero bias ranks them below the popularity baseline's fallback
    pop_prior: bool = True
    vocab_cutoff: float | None = 0.8  # see cutoff_view; None = train on sequences as they are
    # Extra views of the training log, each with its vocabulary frozen at another time quantile
    # (see training_views): more "after the freeze" examples, the situation a deployed model is in.
    # Denser views (every 0.1 from 0.3) give the copy path more frozen-vocabulary examples of
    # revisits at no more total passes than 2 epochs over 5 views (item MRR@20 0.236 -> 0.247).
    cutoff_views: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.9)
    w_before_cutoff: float = 0.3  # loss weight of targets before a view's cut-off (after: 1)
    known_targets_only: bool = True  # item/category loss only on ids seen earlier in the log
    threads: int = 2  # torch CPU threads (we share machines)
    progress: bool = True
