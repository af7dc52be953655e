"""The seqstream sequence model: embeddings -> GRU -> heads with a repeat/copy path.

Per event the model reads four ids: item, category, action (click/cart/purchase) and a log-spaced
bucket of the seconds since the user's previous event. A GRU carries one hidden vector per user,
so the streaming worker pays one `step` per event; `encode` runs the same nn.GRU over whole
sequences for training, and the two agree exactly (tests/unit/test_gru.py).

After each event `predict` gives, for the user's NEXT event:
- item scores over the whole vocabulary: a RepeatNet-style mixture
      p(v) = g * p_repeat(v) + (1 - g) * p_explore(v)
  where p_repeat scores the DISTINCT ids of the user's recent ring of events by generic features
  (recency rank, age, last action, count, time- and event-decayed counts of the id and of its
  category, carted/bought, same category as the newest event, how often the user went from the
  newest id to it and from it to the newest id),
  starting exactly as the "repeat" baseline's most-recent-first order; p_explore is a softmax
  over the whole catalogue through the SHARED item embedding table (pointer-generator style), and
  g is a learned gate. After training, a temperature of the explore logits and a shift of the gate
  are fitted on held-out events (`explore_temp`, `gate_shift`). On Taobao-like logs most next
  items are revisits, so the copy path is what lets a sequence model beat the "repeat" baseline;
- the same mixture for categories, with two differences: the user's own categories always rank
  above new ones (`cat_history_first`), and the explore head also reads train successor counts
  of the newest category (`cat_successors`), scaled in served rankings by a factor fitted on
  held-out events by MRR@20 (`cat_succ_rank_scale`: categories are only served as a ranking);
- next action (3-way softmax) and churn (a logit; sigmoid = P(no event within the horizon)).

The nn.Module only: the config and reserved ids are in models/config.py, ring features in
models/ring.py, the copy path in models/copy_head.py, ids in models/vocab.py (`Vocab` maps raw
ids to a bounded index range: 0 = padding, 1 = unknown) and IO in models/checkpoint.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.bptt_gru import BPTTGRU
from models.config import NEG_INF, PAD, ModelConfig
from models.copy_head import CopyHead
from models.ring import Recent


RING_COUNT_BUCKETS = 24  # half-octaves of the ring's event count (rings up to 4096)


@dataclass
class ModelOutputs:
    """The four heads' outputs for a batch of users (`SeqModel.predict`)."""

    item_logits: Tensor  # [B, n_items] log-probabilities; pad/unknown/unused rows = -inf
    category_logits: Tensor  # [B, n_categories] same
    action_logits: Tensor  # [B, 3] unnormalised
    churn_logit: Tensor  # [B]


class SeqModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # sparse: a training step's gradient holds only the rows it read (see models.train.fit.GradientStep)
        self.item_emb = nn.Embedding(cfg.n_items, cfg.emb, padding_idx=PAD, sparse=True)
        self.cat_emb = nn.Embedding(cfg.n_categories, cfg.emb, padding_idx=PAD)
        self.action_emb = nn.Embedding(cfg.n_actions, cfg.action_emb)
        self.gap_emb = nn.Embedding(cfg.n_gap_buckets, cfg.gap_emb)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = BPTTGRU(2 * cfg.emb + cfg.action_emb + cfg.gap_emb, cfg.hidden, batch_first=True)
        # explore heads: h -> query in embedding space, scored against the SHARED input tables
        self.item_query = nn.Linear(cfg.hidden, cfg.emb)
        self.item_bias = nn.Parameter(torch.zeros(cfg.n_items))
        self.cat_query = nn.Linear(cfg.hidden, cfg.emb)
        self.cat_bias = nn.Parameter(torch.zeros(cfg.n_categories))
        self.item_copy = CopyHead(cfg, cfg.emb)
        self.cat_copy = CopyHead(cfg, cfg.emb)
        self.action_head = nn.Linear(cfg.hidden, cfg.n_actions)
        self.churn_head = nn.Linear(cfg.hidden, 1)
        # churn also reads the pace of the ring: how long its events took (the age of the oldest
        # one) and how many there are. Additive tables, zero at the start (built from zeros, so
        # they draw nothing from the RNG and leave every other initialisation as it was).
        self.churn_span = nn.Embedding(cfg.n_gap_buckets, 1, _weight=torch.zeros(cfg.n_gap_buckets, 1))
        self.churn_count = nn.Embedding(RING_COUNT_BUCKETS, 1, _weight=torch.zeros(RING_COUNT_BUCKETS, 1))
        # rows that may be predicted (set from the vocabularies at training time)
        valid_i = torch.ones(cfg.n_items, dtype=torch.bool)
        valid_c = torch.ones(cfg.n_categories, dtype=torch.bool)
        valid_i[:2] = False
        valid_c[:2] = False
        self.register_buffer("item_valid", valid_i)
        self.register_buffer("cat_valid", valid_c)
        # fusion calibration, fitted on held-out events after training (models.train.calibrate.calibrate_fusion):
        # the context term of the explore logits is divided by a temperature (the popularity-like
        # bias stays) and the gate logits shifted, per [item, category]. A sampled-softmax explore
        # head is overconfident about ids it saw a few times; the copy path it is mixed with is
        # not, and the mixture ranks one against the other.
        self.register_buffer("explore_temp", torch.ones(2))
        self.register_buffer("gate_shift", torch.zeros(2))
        # the same for the next-action head: logits / T + per-action shift, fitted on the held-out
        # events by NLL (models.train.calibrate.calibrate_actions). Trained on a few thousand purchases and
        # carts, the head is overconfident: uncalibrated, its log-loss was above a constant prior's.
        self.register_buffer("action_temp", torch.ones(1))
        self.register_buffer("action_shift", torch.zeros(cfg.n_actions))
        # train successor counts of each category (set by models.train.calibrate.fit_calibrated), read with a
        # learned weight that starts at zero
        if cfg.cat_successors:
            self.register_buffer("cat_succ_ids", torch.zeros(cfg.n_categories, cfg.cat_successors, dtype=torch.long))
            self.register_buffer("cat_succ_counts", torch.zeros(cfg.n_categories, cfg.cat_successors))
            self.cat_succ_w = nn.Parameter(torch.zeros(1))
        else:
            self.cat_succ_w = None
        # served category rankings read the successor term times this factor, fitted on held-out
        # events by MRR@20 (models.train.calibrate.calibrate_successor_rank), not by likelihood: on the
        # Taobao time slice a sharper successor term orders new categories better while held-out
        # NLL wants the learned weight. Categories are served as a ranking only.
        self.register_buffer("cat_succ_rank_scale", torch.ones(1))
        nn.init.normal_(self.item_emb.weight, std=0.05)
        nn.init.normal_(self.cat_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()
            self.cat_emb.weight[PAD].zero_()

    @property
    def device(self) -> torch.device:
        return self.item_bias.device

    def set_valid(self, n_items_used: int, n_categories_used: int) -> None:
        """Only indices 2..n_used-1 of each vocabulary hold real ids; the rest are never output."""
        self.item_valid.zero_()
        self.item_valid[2:n_items_used] = True
        self.cat_valid.zero_()
        self.cat_valid[2:n_categories_used] = True

    # ---- recurrence ------------------------------------------------------------------------

    def init_hidden(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.cfg.hidden, device=self.device)

    def _inputs(self, item: Tensor, category: Tensor, action: Tensor, gap: Tensor) -> Tensor:
        x = torch.cat([self.item_emb(item), self.cat_emb(category), self.action_emb(action),
                       self.gap_emb(gap)], -1)
        return self.drop(x)

    def step(self, h: Tensor, item: Tensor, category: Tensor, action: Tensor, gap: Tensor) -> Tensor:
        """One event per user: h [B, H], ids Long[B] -> new h [B, H]."""
        x = self._inputs(item, category, action, gap).unsqueeze(1)
        _, h_new = self.gru(x, h.unsqueeze(0))
        return h_new.squeeze(0)

    def encode(self, h0: Tensor | None, items: Tensor, cats: Tensor, actions: Tensor, gaps: Tensor,
               lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole sequences [B, T] -> (outputs [B, T, H], h_T [B, H]).

        Same nn.GRU as `step`, so it equals stepping event by event. With right padding pass
        `lengths`: h_T is then taken at each sequence's last real step."""
        if h0 is None:
            h0 = self.init_hidden(items.shape[0])
        out, h_last = self.gru(self._inputs(items, cats, actions, gaps), h0.unsqueeze(0))
        if lengths is None:
            return out, h_last.squeeze(0)
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        h_t = out.gather(1, idx).squeeze(1)
        h_t = torch.where((lengths > 0).unsqueeze(-1), h_t, h0)
        return out, h_t

    # ---- heads -------------------------------------------------------------------------------

    def copy_item(self, h: Tensor, recent: Recent) -> tuple[Tensor, Tensor]:
        table = self.item_emb.weight if self.cfg.copy_ids else None
        log_attn, gate = self.item_copy(h, recent.items, table, recent.actions, recent.age, recent.mask,
                                        groups=recent.categories, sparse=self.item_emb.sparse)
        return log_attn, gate + self.gate_shift[0]

    def copy_category(self, h: Tensor, recent: Recent) -> tuple[Tensor, Tensor]:
        table = self.cat_emb.weight if self.cfg.copy_ids else None
        log_attn, gate = self.cat_copy(h, recent.categories, table, recent.actions, recent.age, recent.mask)
        return log_attn, gate + self.gate_shift[1]

    def item_vectors(self, items: Tensor) -> Tensor:
        """The item embeddings of `items` (same gradient layout as the input lookups)."""
        return F.embedding(items, self.item_emb.weight, sparse=self.item_emb.sparse)

    def item_explore_logits(self, h: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Unnormalised explore scores q(h) . E[v] / T + b[v] (all items, or `candidates` [K])."""
        q = self.item_query(self.drop(h)) / self.explore_temp[0]
        if candidates is None:
            return F.linear(q, self.item_emb.weight, self.item_bias)
        return F.linear(q, self.item_vectors(candidates), self.item_bias[candidates])

    def cat_explore_logits(self, h: Tensor, newest: Tensor | None = None, own: Tensor | None = None,
                           successor_scale: Tensor | float = 1.0) -> Tensor:
        """q(h) . C[c] / T + b[c], plus `successor_scale` x the successor term of the `newest`
        category [N] (see `cat_successor_scores`)."""
        q = self.cat_query(self.drop(h)) / self.explore_temp[1]
        logits = F.linear(q, self.cat_emb.weight, self.cat_bias)
        if newest is None or self.cat_succ_w is None:
            return logits
        return logits + successor_scale * self.cat_successor_scores(newest, own)

    def set_category_successors(self, ids: Tensor, counts: Tensor) -> None:
        """[n_categories, M] successor ids (0: none) and their train counts."""
        if self.cat_succ_w is None:
            return
        self.cat_succ_ids.copy_(ids)
        self.cat_succ_counts.copy_(counts)

    def cat_successor_scores(self, newest: Tensor, own: Tensor | None = None) -> Tensor:
        """[N, n_categories]: w * log(1 + train count of newest -> c). `own` [N]: the row's own
        next category, when the row's transition is itself one of the counted ones (training
        on the log the counts came from): it is left out, or the weight would learn from a
        count that includes the answer."""
        out = torch.zeros(len(newest), self.cfg.n_categories, device=newest.device)
        if self.cat_succ_w is None:
            return out
        ids, counts = self.cat_succ_ids[newest], self.cat_succ_counts[newest]
        if own is not None:
            counts = (counts - (ids == own.unsqueeze(1)).float()).clamp(min=0.0)
        return out.scatter_add(1, ids, self.cat_succ_w * torch.log1p(counts))

    @staticmethod
    def mixture(log_attn: Tensor, gate: Tensor, ring_ids: Tensor, explore_logits: Tensor,
                valid: Tensor, tiered: bool = False, history_first: bool = False) -> Tensor:
        """log p(v) over the whole table [N, V] from the copy attention and explore scores.

        Explore covers every id (pointer-generator style): p(v) = g p_rep(v) + (1-g) p_exp(v).
        `tiered`: see ModelConfig.fusion; with `history_first` the tiers hold on every row,
        whatever the gate."""
        n, v = explore_logits.shape
        # each distinct ring id has exactly one finite entry (its newest position): amax picks it
        log_rep = torch.full((n, v), NEG_INF, device=explore_logits.device, dtype=explore_logits.dtype)
        log_rep = log_rep.scatter_reduce(1, ring_ids, log_attn.to(log_rep.dtype), "amax", include_self=True)
        in_ring = torch.isfinite(log_rep) & valid
        log_exp = torch.log_softmax(explore_logits.masked_fill(~valid, NEG_INF), -1)
        exp_part = F.logsigmoid(-gate).unsqueeze(-1) + log_exp
        # pointer-generator mixture: explore covers ring ids too, so a learned "after A comes B"
        # still wins when B happens to be in the ring
        safe_rep = torch.where(in_ring, log_rep, torch.full_like(log_rep, -1e4))  # no NaN gradients
        rep_part = torch.logaddexp(F.logsigmoid(gate).unsqueeze(-1) + safe_rep, exp_part)
        if tiered:
            # rank-preserving fusion: shift the explore tier just below the weakest ring id, then
            # renormalise. Revisits keep the repeat baseline's guarantee (never displaced by a
            # "new item" guess); explore only decides the order after them.
            lo = torch.where(in_ring, rep_part, torch.full_like(rep_part, math.inf)).amin(-1, keepdim=True)
            hi = torch.where(in_ring | ~valid, torch.full_like(exp_part, NEG_INF), exp_part).amax(-1, keepdim=True)
            shift = (hi - lo + 1.0).clamp(min=0.0)
            # only where the gate says a revisit is the likelier outcome: a log whose next items
            # are mostly new (or a learned "after A comes B" rule) keeps the plain mixture
            tier = (gate.unsqueeze(-1) > 0) | history_first
            shift = torch.where(torch.isfinite(shift) & tier, shift, torch.zeros_like(shift))
            exp_part = exp_part - shift
        out = torch.where(in_ring, rep_part, exp_part).masked_fill(~valid, NEG_INF)
        return torch.log_softmax(out, -1) if tiered else out

    def action_logits(self, h: Tensor) -> Tensor:
        """Next-action logits [N, 3], calibrated (the training loss reads `action_head` raw)."""
        return self.action_head(self.drop(h)) / self.action_temp + self.action_shift

    def churn_logit(self, h: Tensor, recent: Recent) -> Tensor:
        """P(no event within the horizon) logit [N] from h and the ring's pace."""
        n = recent.mask.sum(-1)
        oldest = (recent.mask.shape[-1] - n).clamp(max=recent.mask.shape[-1] - 1).unsqueeze(-1)
        span = recent.age.gather(-1, oldest).squeeze(-1)  # rings are right-aligned
        count = torch.floor(2.0 * torch.log2(n.float().clamp(min=1.0))).long()
        return (self.churn_head(self.drop(h)).squeeze(-1) + self.churn_span(span).squeeze(-1)
                + self.churn_count(count.clamp(max=RING_COUNT_BUCKETS - 1)).squeeze(-1))

    def item_logits(self, h: Tensor, recent: Recent) -> Tensor:
        """Log-probabilities over every item [N, n_items]: the copy/explore mixture."""
        la, gate = self.copy_item(h, recent)
        return self.mixture(la, gate, recent.items, self.item_explore_logits(h), self.item_valid,
                            self.cfg.fusion == "tiered")

    def category_logits(self, h: Tensor, recent: Recent, successor_scale: Tensor | float | None = None,
                        own: Tensor | None = None) -> Tensor:
        """Log-scores over every category [N, n_categories], a distribution ordered for ranking:
        the successor term is scaled by `cat_succ_rank_scale` (or `successor_scale`). `own`: as
        in `cat_successor_scores`."""
        if successor_scale is None:
            successor_scale = self.cat_succ_rank_scale
        la, gate = self.copy_category(h, recent)
        explore = self.cat_explore_logits(h, recent.categories[:, -1], own, successor_scale)
        return self.mixture(la, gate, recent.categories, explore, self.cat_valid, self.cfg.fusion == "tiered",
                            self.cfg.cat_history_first)

    def predict(self, h: Tensor, recent: Recent) -> ModelOutputs:
        return ModelOutputs(self.item_logits(h, recent), self.category_logits(h, recent), self.action_logits(h),
                          self.churn_logit(h, recent))


    @torch.no_grad()
    def predict_top_items(self, h: Tensor, recent: Recent, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Serving fast path: exactly `topk(predict(h, recent).item_logits, k)`, plus the action
        logits and churn logit, without building the [B, V] mixture.

        Every transform the mixture applies to an id outside the ring is monotone in its explore
        logit and shared by the whole row, so the top k are among the ring ids and the top k
        explore ids outside the ring; the normalisers come from one logsumexp. tests/unit/test_gru.py holds this
        equal to `predict` for both fusions. Returns (values [B, k], indices [B, k], action
        logits [B, 3], churn logit [B]).
        """
        log_attn, gate = self.copy_item(h, recent)
        ring, valid = recent.items, self.item_valid
        # invalid rows masked through the bias: one [V] op instead of a [B, V] copy
        t = self.explore_temp[0]
        q = self.item_query(self.drop(h)) / t
        explore = F.linear(q, self.item_emb.weight, self.item_bias.masked_fill(~valid, NEG_INF))
        lse = torch.logsumexp(explore, -1, keepdim=True)
        ls_pos, ls_neg = F.logsigmoid(gate).unsqueeze(-1), F.logsigmoid(-gate).unsqueeze(-1)
        ring_ok = torch.isfinite(log_attn) & valid[ring]  # one entry per distinct valid ring id
        ring_exp = explore.gather(1, ring) - lse
        rep = torch.logaddexp(ls_pos + log_attn.masked_fill(~ring_ok, -1e4), ls_neg + ring_exp)
        rep = rep.masked_fill(~ring_ok, NEG_INF)
        # ring ids are scored by `rep`: take them out of the explore tier in place (PAD, row 0,
        # is invalid anyway), so a top-k of k, not k + L, finds the explore candidates
        explore.scatter_(1, torch.where(ring_ok, ring, torch.zeros_like(ring)), NEG_INF)
        top_e, top_i = explore.topk(min(k, explore.shape[1]), -1)
        exp_part = ls_neg + top_e - lse
        if self.cfg.fusion == "tiered":  # the same shift and renormalisation as `mixture`
            lo = rep.masked_fill(~ring_ok, math.inf).amin(-1, keepdim=True)
            hi = exp_part.amax(-1, keepdim=True)
            shift = (hi - lo + 1.0).clamp(min=0.0)
            shift = torch.where(torch.isfinite(shift) & (gate.unsqueeze(-1) > 0), shift,
                                torch.zeros_like(shift))
            exp_part = exp_part - shift
            ring_mass = ring_exp.masked_fill(~ring_ok, NEG_INF).exp().sum(-1, keepdim=True)
            rest = ls_neg - shift + torch.log1p(-ring_mass.clamp(max=1.0 - 1e-7))
            norm = torch.logaddexp(torch.logsumexp(rep, -1, keepdim=True), rest)
            rep, exp_part = rep - norm, exp_part - norm
        values, at = torch.cat([rep, exp_part], -1).topk(k, -1)
        indices = torch.cat([ring, top_i], -1).gather(1, at)
        return values, indices, self.action_logits(h), self.churn_logit(h, recent)
