"""The training loop: `fit_model` walks mini-batches in truncated-BPTT chunks and takes
`GradientStep`s of the optimizer `make_optimizer` builds.

Data: one sequence per user, ordered by (ts, row). Mini-batches hold users of similar length
(padded on the right); each batch is walked in truncated-BPTT chunks of `bptt` steps with the
hidden state carried (detached) between chunks, so arbitrarily long histories train in bounded
memory and the GRU sees the same long-range state it will carry when serving.
"""
from __future__ import annotations

import random
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.gru import SeqModel
from models.train.batches import NegativeSampler, make_batch, user_batches
from models.train.config import TrainConfig
from models.train.loss import chunk_loss
from models.train.sequences import SeqData


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: SeqModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the copy heads' few scalar feature weights get `copy_lr_mult` x the learning rate
    (they are shared by every prediction, start at the recency order and must move within the
    one or two epochs a small log allows before the embeddings overfit)."""
    copy = [p for n, p in model.named_parameters() if "_copy." in n]
    ids = {id(p) for p in copy}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # fused: one kernel over all parameters instead of ~10 per tensor; the same update up to
    # float rounding, and 1.4x the training speed on a large item table (the Taobao time slice)
    return torch.optim.Adam([{"params": rest}, {"params": copy, "lr": cfg.lr * cfg.copy_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class GradientStep:
    """One update: zero the gradients, backward, clip, step.

    Sparse gradients (the item table's: only the rows a step read) are added into a dense buffer
    kept across steps, where only the previous step's rows are cleared, and the optimiser sees a
    plain dense gradient: the same update as with a dense table. A fresh [V, E] gradient per
    lookup (three per step) page-faulted on every allocation: on the Taobao time slice
    (85k items) that was about a third of training's time."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.clip = clip
        self._dense: dict[int, tuple[Tensor, Tensor]] = {}  # id(param) -> (buffer, rows last set)

    def __call__(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.params:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = self._densify(p, p.grad)
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()

    def _densify(self, p: Tensor, grad: Tensor) -> Tensor:
        g = grad.coalesce()
        rows = g.indices()[0]
        buf, last = self._dense.get(id(p), (None, None))
        if buf is None:
            buf = torch.zeros_like(p)
        else:
            buf.index_fill_(0, last, 0.0)  # clipping scales rows in place; untouched rows stay 0
        buf.index_put_((rows,), g.values())  # coalesced: each row once
        self._dense[id(p)] = (buf, rows)
        return buf


def fit_model(model: SeqModel, data: SeqData, cfg: TrainConfig, *, data_end: float | None = None,
              item_counts: np.ndarray | None = None, epochs: int | None = None,
              optimizer: torch.optim.Optimizer | None = None, counted: bool = False) -> dict[str, Any]:
    """Train `model` in place on sequences; returns stats (events/s per epoch, last losses).
    `counted`: `data` is the log the model's category successor counts were taken from."""
    device = model.device
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if item_counts is None:
        item_counts = np.bincount(data.items, minlength=model.cfg.n_items)
    data_end = float(data.ts.max()) if data_end is None else data_end
    sampler = NegativeSampler(item_counts, cfg.alpha, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = optimizer or make_optimizer(model, cfg)
    step = GradientStep(model, opt, cfg.clip)
    lens = data.lengths
    n_train = int(lens[lens >= 2].sum())  # the events user_batches walks (the bar counts these)
    rates, losses = [], []
    n_epochs = cfg.epochs if epochs is None else epochs
    model.train()
    for ep in range(n_epochs):
        t0, seen, nll_sum, nll_n = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(total=n_train, desc=f"epoch {ep + 1}/{n_epochs}", file=sys.stderr,
                   disable=not cfg.progress, unit="ev", leave=False,
                   mininterval=0.1 if sys.stderr.isatty() else 15.0)  # logs get a line per 15 s
        for users in user_batches(data, cfg.batch, rng, cfg.batch_events, cfg.bptt):
            b = make_batch(data, users, cfg.horizon_s, data_end, model.cfg.n_gap_buckets, device,
                           cfg.known_targets_only)
            h = model.init_hidden(len(users))
            T = b.items.shape[1]
            for s in range(0, T, cfg.bptt):
                e = min(T, s + cfg.bptt)
                loss, h, nll, n = chunk_loss(model, b, s, e, h, cfg, sampler, gen, counted)
                h = h.detach()
                if loss.requires_grad:  # a chunk may hold no targets (e.g. only last events)
                    step(loss)
                k = int(b.mask[:, s:e].sum())
                seen += k
                nll_sum += nll * n
                nll_n += n
                bar.update(k)
                bar.set_postfix(item_nll=f"{nll_sum / max(nll_n, 1):.3f}",
                                ev_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        bar.close()
        rates.append(seen / max(time.perf_counter() - t0, 1e-9))
        losses.append(nll_sum / max(nll_n, 1))
    model.eval()
    return {"events_per_s": rates, "item_nll": losses}
