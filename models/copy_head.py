"""The copy path: `CopyHead` scores the distinct ids of the user's ring (p_repeat) and gives the
copy/explore mixture gate."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import NEG_INF, PAD, ModelConfig
from models.ring import (N_DECAY, RANK_BUCKETS, TRANSITION_CLIP, decay_weights, rank_bucket, ring_groups,
                         transition_weights)


def row_lookup(table: Tensor, idx: Tensor) -> Tensor:
    """table[idx] for a 1-D table and ring indices [N, L]. A gather over the table broadcast to
    [N, R]: its backward is one scatter per row, where embedding's backward or indexing's walks
    N * L indices one by one (10x slower on CPU at N * L ~ 10^5)."""
    return torch.gather(table.expand(idx.shape[0], -1), 1, idx)


def pooled_rows(table: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """sum_l weights[n, l] * table[idx[n, l]] -> [N, D], through the weight each table row gets,
    without building the [N, L, D] lookup."""
    per_row = torch.zeros(idx.shape[0], table.shape[0], dtype=weights.dtype, device=weights.device)
    return per_row.scatter_add(1, idx, weights) @ table


class CopyHead(nn.Module):
    """Scores the DISTINCT ids of the ring (each at its newest position) -> p_repeat, plus the
    mixture gate.

    Score of an id = w * log(1 + recency rank)          (w < 0; starts as the repeat baseline's
                   + tables of generic features          most-recent-first order, exactly)
                     (rank bucket, count, age since its last occurrence, last action,
                      carted/bought, same id / same group as the newest event, group count)
                   + u . log(1 + decayed counts)         (copy_decay: occurrences of the id, and
                   + u_g . log(1 + group decayed counts)  of its group, summed with decay kernels
                                                          in events and in seconds; see
                                                          decay_weights)
                   + table(newest -> id, id -> newest)   (copy_transitions: the user's own
                                                          transitions; see transition_weights)
                   + q(h) . k(features)                  (context-dependent reweighting)
    All tables, u, u_g and q start at zero, so an untrained head ranks ring ids in recency order. The
    features are generic, so the head transfers across logs instead of learning per-item trivia.
    Cost per prediction: one sort of the ring (O(L log L)) to group it by id, then O(G) for its G
    distinct ids: cheap for rings of hundreds of events.

    Gate: P(next id is in the ring), from h and ring statistics (size, share of repeated events,
    whether the newest event was itself a repeat)."""

    def __init__(self, cfg: ModelConfig, id_dim: int):
        super().__init__()
        d = cfg.attn
        self.max_count = cfg.max_count
        self.n_age_buckets = cfg.n_gap_buckets
        self.action_n = cfg.n_actions
        self.use_ids = cfg.copy_ids
        self.n_flags = 16
        self.n_small = cfg.n_actions * cfg.max_count * self.n_flags
        self.rank_w = nn.Parameter(torch.tensor(-3.0))
        self.rank_s = nn.Embedding(RANK_BUCKETS, 1)
        self.small_s = nn.Embedding(self.n_small, 1)
        self.age_s = nn.Embedding(cfg.n_gap_buckets, 1)
        self.group_s = nn.Embedding(cfg.max_count, 1)
        self.rank_k = nn.Embedding(RANK_BUCKETS, d)
        self.small_k = nn.Embedding(self.n_small, d)
        self.age_k = nn.Embedding(cfg.n_gap_buckets, d)
        self.id_proj = nn.Linear(id_dim, d, bias=False) if cfg.copy_ids else None
        self.query = nn.Linear(cfg.hidden, d)
        self.use_context = cfg.copy_context
        for t in (self.rank_s, self.small_s, self.age_s, self.group_s):
            nn.init.zeros_(t.weight)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        # decayed-count weights: built from zeros (no RNG draw), so other inits are unchanged
        self.decay_w = nn.Parameter(torch.zeros(N_DECAY)) if cfg.copy_decay else None
        self.group_decay_w = nn.Parameter(torch.zeros(N_DECAY)) if cfg.copy_decay else None
        self.transition_s = nn.Parameter(torch.zeros(TRANSITION_CLIP ** 2)) if cfg.copy_transitions else None
        n_stats = 4
        self.gate = nn.Sequential(nn.Linear(cfg.hidden + d + n_stats, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, h: Tensor, ids: Tensor, id_table: Tensor | None, actions: Tensor, age: Tensor,
                mask: Tensor, groups: Tensor | None = None, sparse: bool = False) -> tuple[Tensor, Tensor]:
        """h [N, H]; ring tensors [N, L] (`groups`: e.g. the categories of ring items); `id_table`:
        the id embeddings [V, E] (row 0 padding; `sparse`: give it a sparse gradient). Returns
        (log p_repeat over ring positions [N, L]: finite only at each id's newest position, so it
        is a distribution over the distinct ring ids; gate logit [N]).

        Scores are computed per distinct id (RingGroups' slots, most recent first), not per ring
        position. The keys k = rank_k[rank] + small_k[small] + age_k[age] + W id_table[id] enter
        only through q(h) . k and the attention-pooled key, so neither builds [N, G, d]: tables are
        scored or pooled per row (row_lookup, pooled_rows), which keeps training's backward cheap."""
        dw = decay_weights(age, mask, self.n_age_buckets) if self.decay_w is not None else None
        w = dw
        if self.transition_s is not None:  # summed per id together with the decay kernels
            tw = transition_weights(ids, mask)
            w = tw if dw is None else torch.cat([dw, tw], -1)
        rg = ring_groups(ids, actions, mask, w)
        valid, pos = rg.valid, rg.pos
        G = pos.shape[1]
        at = lambda x: torch.where(valid, x.gather(1, pos), torch.zeros_like(pos))  # noqa: E731  at the newest occurrence
        slot_ids, slot_actions, slot_age = at(ids), at(actions), at(age)
        count = rg.sums[..., 0].long()
        small_count = count.clamp(max=self.max_count - 1)
        newest = torch.zeros_like(valid)
        newest[:, 0] = valid[:, 0]  # slot 0 is the newest event's id
        if groups is not None:
            same_g = (at(groups) == groups[:, -1:]) & valid
            slot_group_sums = ring_groups(groups, torch.zeros_like(actions), mask, dw).sums_at(pos)
            g_count = torch.where(valid, slot_group_sums[..., 0].long().clamp(max=self.max_count - 1), 0)
        else:
            same_g = torch.zeros_like(valid)
            g_count = torch.zeros_like(count)
        flags = (rg.sums[..., 1] > 0).long() + 2 * (rg.sums[..., 2] > 0).long() + 4 * newest.long() + 8 * same_g.long()
        small = slot_actions + self.action_n * (small_count + self.max_count * flags)
        rank = torch.arange(G, device=ids.device)
        rb = rank_bucket(rank).expand_as(pos)
        key_tables = ((self.rank_k.weight, rb), (self.small_k.weight, small), (self.age_k.weight, slot_age))
        use_ids = self.id_proj is not None and id_table is not None
        e = (self.rank_w * torch.log1p(rank.float()) + row_lookup(self.rank_s.weight[:, 0], rb)
             + row_lookup(self.small_s.weight[:, 0], small) + row_lookup(self.age_s.weight[:, 0], slot_age)
             + row_lookup(self.group_s.weight[:, 0], g_count))
        id_emb = None
        if self.use_context:
            q = self.query(h)
            for table, idx in key_tables:
                e = e + row_lookup(q @ table.t(), idx)
            if use_ids:  # q . W E[id] = (W^T q) . E[id]
                id_emb = F.embedding(slot_ids, id_table, padding_idx=PAD, sparse=sparse)
                e = e + torch.einsum("ne,nle->nl", q @ self.id_proj.weight, id_emb)
        if self.transition_s is not None:
            t = rg.sums[..., -2:].long().clamp(max=TRANSITION_CLIP - 1)  # exact integer sums
            e = e + row_lookup(self.transition_s, t[..., 0] + TRANSITION_CLIP * t[..., 1])
        if self.decay_w is not None:
            e = e + torch.log1p(rg.sums[..., 3: 3 + N_DECAY]) @ self.decay_w
            if groups is not None:  # the same for the id's group: "the user is back on this kind"
                e = e + torch.log1p(slot_group_sums[..., 3:]) @ self.group_decay_w
        any_valid = valid[:, :1]
        log_attn = torch.log_softmax(torch.where(any_valid, e.masked_fill(~valid, NEG_INF), torch.zeros_like(e)), -1)
        log_attn = log_attn.masked_fill(~valid, NEG_INF)
        attn = log_attn.exp()
        pooled = sum(pooled_rows(table, idx, attn) for table, idx in key_tables)
        if use_ids:
            pooled_id = (torch.einsum("nl,nle->ne", attn, id_emb) if id_emb is not None else
                         F.embedding_bag(slot_ids, id_table, per_sample_weights=attn, mode="sum", padding_idx=PAD,
                                         sparse=sparse))
            pooled = pooled + self.id_proj(pooled_id)
        n_valid = mask.sum(-1).float()
        newest_again = (count[:, 0] > 1).float()  # the newest id occurred earlier in the ring too
        stats = torch.stack([torch.log1p(n_valid) / 5.0, valid.sum(-1).float() / n_valid.clamp(min=1.0),
                             newest_again, newest_again], -1)  # (two features of older checkpoints coincide)
        gate = self.gate(torch.cat([h, pooled, stats], -1)).squeeze(-1)
        gate = gate.masked_fill(~any_valid.squeeze(-1), -30.0)  # empty ring: nothing to repeat
        L = ids.shape[-1]  # back to ring positions: each slot at its id's newest occurrence
        to = torch.where(valid, pos, torch.full_like(pos, L))
        per_position = torch.full((len(ids), L + 1), NEG_INF, dtype=log_attn.dtype, device=ids.device)
        return per_position.scatter(1, to, log_attn)[:, :L], gate
