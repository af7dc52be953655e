"""The training objective, shared by offline training and online learning (models/online).

Objective, per step t (after event t, predicting event t+1):
- item: -log p(target) under the copy/explore mixture. The explore softmax is estimated with
  sampled negatives: `negatives` items drawn ∝ pop^alpha and shared by the mini-batch plus the
  batch's own targets (in-batch negatives, drawn ∝ pop). The normaliser is an importance-sampled
  estimate with the mixture proposal of both (log-Q correction), so p_explore is calibrated
  against the copy path;
- category: the same mixture with an exact softmax (categories are few);
- next action: cross-entropy; churn: BCE with label "no further event within horizon_s".
  The last event of a user whose horizon runs past the end of the data is censored (masked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import UNKNOWN
from models.gru import SeqModel
from models.ring import Recent
from models.train.batches import Batch, NegativeSampler, chunk_recent, flat_recent
from models.train.config import TrainConfig


def item_log_prob(model: SeqModel, h: Tensor, recent: Recent, target: Tensor,
                  shared_neg: Tensor, sampler: NegativeSampler) -> Tensor:
    """log p(target) [N] under the copy/explore mixture with a sampled explore normaliser."""
    log_attn, gate = model.copy_item(h, recent)
    hit = (recent.items == target.unsqueeze(1)) & recent.mask
    in_ring = hit.any(1)
    log_rep = torch.logsumexp(log_attn.masked_fill(~hit, float("-inf")), 1)
    # explore: target logit vs importance-weighted negatives (shared ∝ pop^alpha + in-batch ∝ pop)
    inb = target if len(target) <= 1024 else target[torch.randperm(len(target), device=h.device)[:1024]]
    cand = torch.cat([shared_neg, inb])
    K, M = len(shared_neg), len(inb)
    t = model.explore_temp[0]
    q = model.item_query(model.drop(h)) / t
    o_t = (q * model.item_vectors(target)).sum(-1) + model.item_bias[target]
    o_c = F.linear(q, model.item_vectors(cand), model.item_bias[cand])
    log_q = torch.log(K * sampler.q_alpha[cand] + M * sampler.q_pop[cand]).clamp(min=-30)
    o_c = (o_c - log_q).masked_fill(cand.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    log_z = torch.logsumexp(torch.cat([o_t.unsqueeze(1), o_c], 1), 1)
    log_exp = o_t - log_z
    lp_exp = F.logsigmoid(-gate) + log_exp
    return torch.where(in_ring, torch.logaddexp(F.logsigmoid(gate) + log_rep, lp_exp), lp_exp)


def category_log_prob(model: SeqModel, h: Tensor, recent: Recent, target: Tensor,
                      counted: bool = False) -> Tensor:
    """log p(target) [N] under `SeqModel.mixture` (plain fusion) without building the mixture
    over every category: the target's own terms and one logsumexp (a unit test holds the two
    equal). The full [N, V] mixture and its backward were a large share of training time.
    `counted`: the rows' transitions are in the model's successor counts (leave them out)."""
    la, g = model.copy_category(h, recent)
    valid = model.cat_valid
    own = target if counted else None
    logits = model.cat_explore_logits(h, recent.categories[:, -1], own).masked_fill(~valid, float("-inf"))
    log_exp = logits.gather(1, target.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, 1)
    # each distinct ring id has one finite copy score (its newest position)
    hit = (recent.categories == target.unsqueeze(1)) & torch.isfinite(la)
    in_ring = hit.any(1) & valid[target]
    log_rep = torch.logsumexp(la.masked_fill(~hit, float("-inf")), 1)
    lp_exp = F.logsigmoid(-g) + log_exp
    safe_rep = torch.where(in_ring, log_rep, torch.full_like(log_rep, -1e4))  # no NaN gradients
    out = torch.where(in_ring, torch.logaddexp(F.logsigmoid(g) + safe_rep, lp_exp), lp_exp)
    return out.masked_fill(~valid[target], float("-inf"))


def chunk_loss(model: SeqModel, batch: Batch, s: int, e: int, h0: Tensor, cfg: TrainConfig,
               sampler: NegativeSampler, gen: torch.Generator | None,
               counted: bool = False) -> tuple[Tensor, Tensor, float, int]:
    """Loss of steps s..e-1 of a batch; returns (loss, h at the chunk end, item nll, n items).
    `counted`: the batch comes from the log the model's successor counts were taken from."""
    mc = model.cfg
    sl = slice(s, e)
    out, h_end = model.encode(h0, batch.items[:, sl], batch.cats[:, sl], batch.actions[:, sl],
                              batch.gaps[:, sl])
    # carry each user's state from its last real step in the chunk (padding comes at the end)
    lens = batch.mask[:, sl].sum(1)
    idx = (lens - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
    h_end = torch.where((lens > 0).unsqueeze(1), out.gather(1, idx).squeeze(1), h0)
    recent = chunk_recent(batch, s, e, mc.ring, mc.n_gap_buckets)
    total = out.new_zeros(())
    ti = batch.next_item[:, sl]
    nw = None if batch.next_weight is None else batch.next_weight[:, sl]
    sel = batch.mask[:, sl] & (ti > UNKNOWN)
    item_nll, n_item = 0.0, int(sel.sum())
    if n_item:
        lp = item_log_prob(model, out[sel], flat_recent(recent, sel), ti[sel],
                           sampler.sample(cfg.negatives, gen), sampler)
        loss_i = -(lp * nw[sel]).mean() if nw is not None else -lp.mean()
        total = total + loss_i
        item_nll = float(loss_i.detach())
    tc = batch.next_cat[:, sl]
    selc = batch.mask[:, sl] & (tc > UNKNOWN)
    if selc.any() and cfg.w_category > 0:
        lp = category_log_prob(model, out[selc], flat_recent(recent, selc), tc[selc], counted)
        total = total + cfg.w_category * -(lp * nw[selc] if nw is not None else lp).mean()
    ta = batch.next_action[:, sl]
    sela = batch.mask[:, sl] & (ta >= 0)
    # held-out targets (weight 0) stay unseen by the action head too, so calibrate_actions fits
    # out-of-sample events. Other targets count fully: weighting early ones 0.3, as for items,
    # cost taobao_users' action AUCs (purchase .555 -> .529, cart .584 -> .519)
    if sela.any() and cfg.w_action > 0:
        ce = F.cross_entropy(model.action_head(model.drop(out[sela])), ta[sela], reduction="none")
        total = total + cfg.w_action * (ce * (nw[sela] > 0) if nw is not None else ce).mean()
    selh = batch.churn_mask[:, sl]
    if selh.any() and cfg.w_churn > 0:
        logit = model.churn_logit(out[selh], flat_recent(recent, selh))
        total = total + cfg.w_churn * F.binary_cross_entropy_with_logits(logit, batch.churn[:, sl][selh])
    return total, h_end, item_nll, n_item
