"""The trained model's state and predictions at positions of training-style sequences, and the
rank of targets among scores (calibration, evaluation and online learning read them)."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from models.gru import SeqModel
from models.ring import Recent, recent_windows
from models.train.batches import make_batch
from models.train.sequences import SeqData


def states_at(model: SeqModel, data: SeqData, positions: np.ndarray,
              batch_users: int = 64) -> Iterator[tuple[np.ndarray, Tensor, Recent]]:
    """The model's state after the events at flat `positions` of `data` (each sees its user's
    events up to and including that position), a group of users at a time: yields (indices
    into `positions`, h [n, H], Recent of [n, L' <= L], trimmed)."""
    device, mc = model.device, model.cfg
    user_of = np.searchsorted(data.starts, positions, side="right") - 1
    users = np.unique(user_of)
    for i in range(0, len(users), batch_users):
        us = users[i: i + batch_users]
        b = make_batch(data, us, math.inf, math.inf, mc.n_gap_buckets, device)
        hs, _ = model.encode(None, b.items, b.cats, b.actions, b.gaps)
        rec = recent_windows(b.items, b.cats, b.actions, b.ts, b.mask, mc.ring, mc.n_gap_buckets)
        sel = np.flatnonzero(np.isin(user_of, us))
        rows = torch.as_tensor(np.searchsorted(us, user_of[sel]), device=device)
        cols = torch.as_tensor(positions[sel] - data.starts[user_of[sel]], device=device)
        yield sel, hs[rows, cols], Recent(rec.items[rows, cols], rec.categories[rows, cols],
                                          rec.actions[rows, cols], rec.age[rows, cols], rec.mask[rows, cols]).trimmed()


PREDICTIONS = ("item_logits", "category_logits", "action_logits", "churn_logit")


@torch.no_grad()
def predict_at(model: SeqModel, data: SeqData, positions: np.ndarray, batch_users: int = 64,
               outputs: Sequence[str] = PREDICTIONS) -> dict[str, Tensor]:
    """Predictions after the events at flat `positions` of `data` (see `states_at`): CPU tensors
    in the order of `positions`, for each of `outputs` (names from PREDICTIONS). Ask only for
    what is used: the item logits of 10k rows over an 85k-item catalogue are 3.4 GB."""
    unknown = set(outputs) - set(PREDICTIONS)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {PREDICTIONS}")
    heads = {"item_logits": model.item_logits, "category_logits": model.category_logits,
             "action_logits": lambda h, r: model.action_logits(h), "churn_logit": model.churn_logit}
    model.eval()
    out: dict[str, list[Tensor]] = {k: [] for k in outputs}
    order = []
    for sel, h, r in states_at(model, data, positions, batch_users):
        for k in outputs:
            out[k].append(heads[k](h, r).cpu())
        order.append(torch.as_tensor(sel))
    inverse = torch.cat(order).argsort()
    return {k: torch.cat(v)[inverse] for k, v in out.items()}


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of each row's target [N] among the finite scores [N, V]: how many candidates score at
    least as high (ties count against, as in models.evaluate.metrics.ranks_of_targets); at least 1."""
    t = scores.gather(1, target.unsqueeze(1))
    return ((scores >= t) & torch.isfinite(scores)).sum(1).clamp(min=1)
