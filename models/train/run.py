"""Build a model with its vocabularies and train it from LogEvents or a log file: what
`seqstream train` runs, without its command line."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from models.checkpoint import Checkpoint
from models.config import ModelConfig
from models.datasets.common import ErrorReport, OnError
from models.datasets.reader import read_events
from models.device import resolve_device
from models.gru import SeqModel
from models.schema import LogEvent
from models.train.calibrate import fit_calibrated
from models.train.config import TrainConfig
from models.train.fit import seed_everything
from models.train.sequences import events_to_arrays, make_seqdata
from models.ids import IdLabels
from models.vocab import Vocab


def build_model(data_items: np.ndarray, data_cats: np.ndarray, cfg: TrainConfig,
                labels: IdLabels | None = None) -> tuple[SeqModel, Vocab, Vocab]:
    # ids are int64 keys; string ids are negative keys named by `labels` (-1 = no category)
    iv = Vocab.build(data_items, cfg.max_items, labels)
    cv = Vocab.build(data_cats[data_cats != -1], cfg.max_categories, labels)
    mc = ModelConfig(n_items=len(iv), n_categories=len(cv), hidden=cfg.hidden, emb=cfg.emb,
                     ring=cfg.ring, dropout=cfg.dropout, copy_ids=cfg.copy_ids,
                     copy_context=cfg.copy_context, fusion=cfg.fusion, copy_decay=cfg.copy_decay,
                     copy_transitions=cfg.copy_transitions, cat_successors=cfg.cat_successors,
                     cat_history_first=cfg.cat_history_first)
    model = SeqModel(mc)
    model.set_valid(len(iv), len(cv))
    if cfg.pop_prior:
        with torch.no_grad():
            for bias, counts in ((model.item_bias, np.bincount(iv.index(data_items), minlength=len(iv))),
                                 (model.cat_bias, np.bincount(cv.index(data_cats[data_cats != -1]),
                                                              minlength=len(cv)))):
                bias[: len(counts)] = torch.as_tensor(np.log1p(counts), dtype=bias.dtype)
    return model, iv, cv


def train_model(events: Iterable[LogEvent], cfg: TrainConfig) -> Checkpoint:
    """Build vocabularies and a model from LogEvents and train it; returns the checkpoint (v1)."""
    seed_everything(cfg.seed)
    labels = IdLabels()
    a = events_to_arrays(events, labels)
    if len(a["item"]) < 2:
        raise ValueError("need at least two events to train")
    model, iv, cv = build_model(a["item"], a["cat"], cfg, labels)
    model.to(resolve_device(cfg.device))
    data = make_seqdata(a["user"], iv.index(a["item"]), cv.index(a["cat"]), a["action"], a["ts"], a["row"])
    data_end, n_events, n_users = float(data.ts.max()), len(data), len(data.users)
    stats = fit_calibrated(model, data, cfg, data_end=data_end)
    meta = {"train": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "events": n_events, "users": n_users, "trained_events": stats["trained_events"],
            "calibration": stats.get("calibration", {}),
            "events_per_s": [round(r, 1) for r in stats["events_per_s"]],
            "item_nll": [round(x, 4) for x in stats["item_nll"]],
            "data_start_s": float(a["ts"].min()), "data_end_s": float(a["ts"].max())}
    meta["train"]["device"] = str(model.device)
    return Checkpoint(model, iv, cv, 1, meta, model.cfg)


def train_log(log: str | Path, fmt: str, cfg: TrainConfig, *,
              on_error: OnError = "skip") -> tuple[Checkpoint, ErrorReport]:
    """Train from the log file `log` in format `fmt` (see models.datasets.reader); returns the
    checkpoint, its meta["source"] naming the log, and the report of bad rows skipped.
    FileNotFoundError, BadRow (on_error="stop") and ValueError (e.g. too few events) propagate."""
    report = ErrorReport()
    ck = train_model(read_events(log, fmt, on_error=on_error, errors=report), cfg)
    ck.meta["source"] = {"log": str(log), "format": fmt, "bad_rows": report.count}
    return ck, report


def train_summary(ck: Checkpoint, out: str | Path, bad_rows: int) -> list[str]:
    """The lines `seqstream train` reports after writing `ck` to `out`."""
    rate = np.median(ck.meta["events_per_s"]) if ck.meta["events_per_s"] else 0.0
    lines = [f"wrote {out}: {ck.meta['events']} events, {ck.meta['users']} users, "
             f"{len(ck.item_vocab) - 2} items, {len(ck.category_vocab) - 2} categories, "
             f"{rate:.0f} events/s, bad rows skipped: {bad_rows}"]
    cal = ck.meta.get("calibration") or {}
    if "item_temp" in cal:
        lines.append(f"calibrated on {cal['item_rows']:.0f} held-out next items: explore temperature "
                     f"{cal['item_temp']:g}, gate shift {cal['item_gate_shift']:+g}, NLL "
                     f"{cal['item_nll_before']:.3f} -> {cal['item_nll_after']:.3f}")
    if "successor_rank_scale" in cal:
        lines.append(f"category ranking: successor term x{cal['successor_rank_scale']:g}, held-out MRR@20 "
                     f"{cal['successor_rank_mrr20_before']:.4f} -> {cal['successor_rank_mrr20_after']:.4f} "
                     f"({cal['successor_rank_rows']:.0f} rows)")
    return lines
