"""Checkpoints: a trained model with its vocabularies, to a file or bytes and back
(torch.load(weights_only=True) reads them)."""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import CHECKPOINT_FORMAT, ModelConfig
from models.device import resolve_device
from models.gru import SeqModel
from models.vocab import Vocab


@dataclass
class Checkpoint:
    model: SeqModel
    item_vocab: Vocab
    category_vocab: Vocab
    version: int
    meta: dict[str, Any] = field(default_factory=dict)
    config: ModelConfig = field(default_factory=ModelConfig)


def save_checkpoint(path: str | Path, model: SeqModel, item_vocab: Vocab, category_vocab: Vocab, *,
                    version: int, meta: dict[str, Any]) -> None:
    """Plain dict of tensors, ints, strings and lists: loads with torch.load(weights_only=True)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {
        "format": CHECKPOINT_FORMAT,
        "version": int(version),
        "meta": dict(meta),
        "config": asdict(model.cfg),
        "state_dict": state,
        "item_vocab": _vocab_blob(item_vocab),
        "category_vocab": _vocab_blob(category_vocab),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # atomic: readers never see half a checkpoint


def _vocab_blob(vocab: Vocab) -> dict[str, Any]:
    return {"capacity": vocab.capacity, "ids": torch.from_numpy(vocab.ids.copy()),
            "labels": vocab.label_list()}


LEGACY_CONFIG = {"copy_decay": False, "copy_transitions": False, "cat_successors": 0, "cat_history_first": False}
CALIBRATION_KEYS = ("explore_temp", "gate_shift", "action_temp", "action_shift", "cat_succ_rank_scale")


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> Checkpoint:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(format={blob.get('format') if isinstance(blob, dict) else None!r})")
    # fields added after a checkpoint was written take the value that reproduces its model
    cfg = ModelConfig(**{**LEGACY_CONFIG, **blob["config"]})
    model = SeqModel(cfg)
    state = blob["state_dict"]
    # buffers added after a checkpoint was written keep their neutral defaults
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if k in CALIBRATION_KEYS}, **state})
    model.eval()
    if device is None:
        device = resolve_device()
    model.to(device)
    # "labels" (the text of string ids) came with string ids; older checkpoints have none
    vocab = lambda d: Vocab.from_parts(d["ids"].numpy().astype(np.int64), int(d["capacity"]),  # noqa: E731
                                       d.get("labels"))
    return Checkpoint(model, vocab(blob["item_vocab"]), vocab(blob["category_vocab"]),
                      int(blob["version"]), dict(blob["meta"]), cfg)


def checkpoint_bytes(model: SeqModel, items: Vocab, categories: Vocab, *, version: int,
                     meta: dict[str, Any]) -> bytes:
    """The exact `save_checkpoint` format, as bytes (loads with `checkpoint_from_bytes`)."""
    fd, name = tempfile.mkstemp(suffix=".pt", prefix="seqstream-online-")
    os.close(fd)
    try:
        save_checkpoint(name, model, items, categories, version=version, meta=meta)
        with open(name, "rb") as f:
            return f.read()
    finally:
        for p in (name, name + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)


def checkpoint_from_bytes(data: bytes, device: torch.device | str | None = None) -> Checkpoint:
    return load_checkpoint(io.BytesIO(data), device=device)  # type: ignore[arg-type]
