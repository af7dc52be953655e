"""Serving top-K with the explore path read from a `TopKIndex` (models/retrieval.py).

`SeqModel.predict_top_items` scores every item for the explore tier: a [B, V] matmul, which at
10^6 items is most of a prediction's cost. Here the explore candidates come from an index built
over the bias-folded item table (q . E[v] + b[v] as one inner product), while the copy path (the
user's own ring ids) is scored exactly, as before, and the two are merged the same way.

The one quantity the index cannot give is the explore softmax normaliser logsumexp over all V
items. It is estimated as the exact logsumexp of the retrieved candidates plus the rest of the
catalogue's mass estimated from a fixed uniform sample of items (`tail_sample`, drawn once per
index, so serving is deterministic). It shifts all explore scores of a row by one constant, so the
explore ORDER is the index's; only how explore ids interleave with ring ids can move.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import NEG_INF
from models.gru import SeqModel
from models.retrieval import TopKIndex, build_index, choose_mode
from models.ring import Recent

TAIL_SAMPLE = 4096  # items in the normaliser's tail estimate


@dataclass
class ExploreIndex:
    """An index over a model's valid items (returned ids are vocabulary indices)."""

    index: TopKIndex
    tail_sample: Tensor  # [S] vocabulary indices, uniform over the valid items
    n_valid: int

    @classmethod
    def build(cls, model: SeqModel, mode: str = "ann", seed: int = 0) -> "ExploreIndex | None":
        """None when `mode` resolves to exact for this model (then serve `predict_top_items`)."""
        valid = torch.nonzero(model.item_valid).squeeze(-1).cpu()
        if choose_mode(mode, len(valid), model.device) == "exact":
            return None
        with torch.no_grad():
            emb = model.item_emb.weight.detach().cpu()[valid].numpy()
            bias = model.item_bias.detach().cpu()[valid].numpy()
        index = build_index(emb, bias, valid.numpy(), "ann")
        rng = np.random.default_rng(seed)
        sample = valid.numpy()[rng.choice(len(valid), size=min(TAIL_SAMPLE, len(valid)), replace=False)]
        return cls(index, torch.as_tensor(sample, device=model.device), len(valid))


@torch.no_grad()
def predict_top_items_indexed(model: SeqModel, ex: ExploreIndex, h: Tensor, recent: Recent,
                              k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`model.predict_top_items(h, recent, k)` with the explore tier from `ex.index`."""
    log_attn, gate = model.copy_item(h, recent)
    ring, valid = recent.items, model.item_valid
    q = model.item_query(model.drop(h)) / model.explore_temp[0]
    folded = torch.cat([q, torch.ones_like(q[:, :1])], -1).cpu().numpy()
    n_cand = min(k + ring.shape[1], ex.n_valid)  # ring ids are dropped from the candidates below
    cand_s, cand_i = ex.index.search(folded, n_cand)
    cand_s = torch.as_tensor(cand_s, device=h.device)
    cand_i = torch.as_tensor(cand_i, device=h.device)
    found = cand_i >= 0
    cand_i = cand_i.clamp(min=0)
    # the normaliser: candidates exactly, the remaining items' mass from the uniform sample
    sample = ex.tail_sample
    tail = F.linear(q, model.item_vectors(sample), model.item_bias[sample])
    n_rest = max(ex.n_valid - n_cand, 0)
    lse_c = torch.logsumexp(cand_s.masked_fill(~found, NEG_INF), -1, keepdim=True)
    if len(sample) == ex.n_valid:  # a small catalogue: the sample is every item, so exact
        lse = torch.logsumexp(tail, -1, keepdim=True)
    elif n_rest:
        lse_t = torch.logsumexp(tail, -1, keepdim=True) + math.log(n_rest / len(sample))
        lse = torch.logaddexp(lse_c, lse_t)
    else:
        lse = lse_c
    ls_pos, ls_neg = F.logsigmoid(gate).unsqueeze(-1), F.logsigmoid(-gate).unsqueeze(-1)
    ring_ok = torch.isfinite(log_attn) & valid[ring]
    ring_raw = torch.einsum("be,ble->bl", q, model.item_vectors(ring)) + model.item_bias[ring]
    ring_exp = ring_raw - lse
    rep = torch.logaddexp(ls_pos + log_attn.masked_fill(~ring_ok, -1e4), ls_neg + ring_exp)
    rep = rep.masked_fill(~ring_ok, NEG_INF)
    # drop candidates that are ring ids (scored by `rep`), then the explore top k
    in_ring = ((cand_i.unsqueeze(-1) == ring.unsqueeze(1)) & ring_ok.unsqueeze(1)).any(-1)
    cand_s = cand_s.masked_fill(in_ring | ~found, NEG_INF)
    top_e, at_e = cand_s.topk(min(k, cand_s.shape[1]), -1)
    top_i = cand_i.gather(1, at_e)
    exp_part = ls_neg + top_e - lse
    if model.cfg.fusion == "tiered":  # as in SeqModel.predict_top_items
        lo = rep.masked_fill(~ring_ok, math.inf).amin(-1, keepdim=True)
        hi = exp_part.amax(-1, keepdim=True)
        shift = (hi - lo + 1.0).clamp(min=0.0)
        shift = torch.where(torch.isfinite(shift) & (gate.unsqueeze(-1) > 0), shift, torch.zeros_like(shift))
        exp_part = exp_part - shift
        ring_mass = ring_exp.masked_fill(~ring_ok, NEG_INF).exp().sum(-1, keepdim=True)
        rest = ls_neg - shift + torch.log1p(-ring_mass.clamp(max=1.0 - 1e-7))
        norm = torch.logaddexp(torch.logsumexp(rep, -1, keepdim=True), rest)
        rep, exp_part = rep - norm, exp_part - norm
    values, at = torch.cat([rep, exp_part], -1).topk(min(k, rep.shape[1] + exp_part.shape[1]), -1)
    indices = torch.cat([ring, top_i], -1).gather(1, at)
    return values, indices, model.action_logits(h), model.churn_logit(h, recent)
