"""The seqstream sequence model, in one file: embeddings -> GRU -> heads with a repeat/copy path.

Per event the model reads four ids: item, category, action (click/cart/purchase) and a log-spaced
bucket of the seconds since the user's previous event. A GRU carries one hidden vector per user,
so the streaming worker pays one `step` per event; `encode` runs the same nn.GRU over whole
sequences for training, and the two agree exactly (tests/unit/test_gru.py).

After each event `predict` gives, for the user's NEXT event:
- item scores over the whole vocabulary: a RepeatNet-style mixture
      p(v) = g * p_repeat(v) + (1 - g) * p_explore(v)
  where p_repeat is attention over the user's recent ring of events (features: recency, age,
  action, how often and how recently the item occurs, whether it was carted/bought), p_explore is
  a softmax over the catalogue through the SHARED item embedding table, restricted to items not in
  the ring, and g is a learned gate. On Taobao-like logs most next items are revisits, so the
  copy path is what lets a sequence model beat the "repeat" baseline;
- the same mixture for categories;
- next action (3-way softmax) and churn (a logit; sigmoid = P(no event within the horizon)).

Ids: `Vocab` maps raw ids to a bounded index range (0 = padding, 1 = unknown).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.schema import ACTIONS

PAD = 0
UNKNOWN = 1
GAP_PAD = 0  # padding / no event
GAP_FIRST = 1  # the user's first event: no previous event to measure a gap from
CHECKPOINT_FORMAT = "seqstream-gru/1"
NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Config and small helpers


@dataclass
class ModelConfig:
    n_items: int = 50_002  # capacity incl. 0 = padding, 1 = unknown
    n_categories: int = 5_002  # same convention
    hidden: int = 64
    emb: int = 64
    n_gap_buckets: int = 48
    ring: int = 50  # L: recent events the copy path attends over
    action_emb: int = 16
    gap_emb: int = 16
    attn: int = 32  # width of the copy-path attention MLP
    max_count: int = 16  # occurrence counts in the ring are clipped here
    copy_ids: bool = True  # copy keys include the id embedding (else generic features only)
    dropout: float = 0.25
    n_actions: int = len(ACTIONS)


def gap_bucket(seconds: np.ndarray | Tensor, n_buckets: int = 48) -> np.ndarray | Tensor:
    """Log-spaced bucket ids (2 .. n_buckets-1) of gaps in seconds; half-octave steps.

    Bucket 0 is padding and 1 marks a user's first event; negative gaps (out-of-order events)
    count as 0 s. 2 + floor(2*log2(1+s)): 0 s -> 2, 1 s -> 4, 1 min -> 13, 1 h -> 25, 1 day -> 34.
    """
    if isinstance(seconds, Tensor):
        s = seconds.to(torch.float64).clamp(min=0.0)
        b = 2 + torch.floor(2.0 * torch.log2(1.0 + s)).long()
        return b.clamp(max=n_buckets - 1)
    s = np.clip(np.asarray(seconds, dtype=np.float64), 0.0, None)
    b = 2 + np.floor(2.0 * np.log2(1.0 + s)).astype(np.int64)
    return np.minimum(b, n_buckets - 1)


@dataclass
class Recent:
    """The user's last L events (oldest -> newest, left padded), all [B, L].

    `age` is the gap bucket of each event relative to the newest one (0 = padding)."""

    items: Tensor
    categories: Tensor
    actions: Tensor
    age: Tensor
    mask: Tensor  # Bool

    def to(self, device: torch.device | str) -> "Recent":
        return Recent(*(t.to(device) for t in (self.items, self.categories, self.actions, self.age, self.mask)))


@dataclass
class Prediction:
    item_logits: Tensor  # [B, n_items] log-probabilities; pad/unknown/unused rows = -inf
    category_logits: Tensor  # [B, n_categories] same
    action_logits: Tensor  # [B, 3] unnormalised
    churn_logit: Tensor  # [B]


def windows(x: Tensor, length: int, fill: int | bool = 0) -> Tensor:
    """[B, T] -> [B, T, L]: at step t the values of steps t-L+1..t (left padded with `fill`)."""
    padded = F.pad(x, (length - 1, 0), value=fill)
    return padded.unfold(1, length, 1)


def recent_windows(items: Tensor, cats: Tensor, actions: Tensor, ts: Tensor, mask: Tensor,
                   length: int, n_gap_buckets: int) -> Recent:
    """Recent rings at every step of right-padded sequences [B, T] -> Recent of [B, T, L].

    `ts` are event times in seconds (any integer/float dtype); `mask` marks real events."""
    m = windows(mask, length, False) & mask.unsqueeze(-1)
    wts = windows(ts, length, 0)
    age = gap_bucket(ts.unsqueeze(-1) - wts, n_gap_buckets)
    age = torch.where(m, age, torch.zeros_like(age))
    z = lambda x: torch.where(m, windows(x, length, 0), torch.zeros_like(m, dtype=torch.long))  # noqa: E731
    return Recent(z(items), z(cats), z(actions), age, m)


def ring_features(ids: Tensor, actions: Tensor, mask: Tensor, max_count: int) -> dict[str, Tensor]:
    """Parameter-free features of each ring position [..., L] about its id within the ring.

    count: occurrences of the id in the ring; rank: how many distinct ids occurred more recently
    (0 = the newest id, like the "repeat" baseline's order); latest: this is the id's newest
    occurrence; carted/bought: the id was carted / purchased somewhere in the ring."""
    L = ids.shape[-1]
    eq = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    pos = torch.arange(L, device=ids.device)
    count = eq.sum(-1)
    last = torch.where(eq, pos, torch.full_like(pos, -1)).amax(-1).clamp(min=0)  # [..., L]
    latest = (last == pos) & mask
    # newer_distinct[k] = number of latest-occurrence positions strictly after k
    lat = latest.long()
    newer = lat.flip(-1).cumsum(-1).flip(-1) - lat
    rank = torch.gather(newer, -1, last)
    carted = (eq & (actions == 1).unsqueeze(-2)).any(-1)
    bought = (eq & (actions == 2).unsqueeze(-2)).any(-1)
    zero = torch.zeros_like(count)
    return {
        "count": torch.where(mask, count.clamp(max=max_count - 1), zero),
        "rank": torch.where(mask, rank.clamp(max=L - 1), zero),
        "latest": latest.long(),
        "carted": (carted & mask).long(),
        "bought": (bought & mask).long(),
    }


# --------------------------------------------------------------------------------------------
# The model


class CopyHead(nn.Module):
    """Additive attention over the ring -> p_repeat over ring positions, plus the mixture gate.

    Keys are sums of embeddings of generic features (id embedding, action, age, position, rank,
    count, flags), so the head learns "most recent first" or "carted items come back" on any log,
    not per-item trivia."""

    def __init__(self, cfg: ModelConfig, id_dim: int):
        super().__init__()
        d = cfg.attn
        self.max_count = cfg.max_count
        self.action_n = cfg.n_actions
        self.use_ids = cfg.copy_ids
        self.id_proj = nn.Linear(id_dim, d, bias=False)
        self.age = nn.Embedding(cfg.n_gap_buckets, d)
        self.pos = nn.Embedding(cfg.ring, d)
        self.rank = nn.Embedding(cfg.ring, d)
        # one table for the small discrete features: action x count x (latest, carted, bought,
        # same id as the newest event) -- one gather instead of five
        self.n_small = cfg.n_actions * cfg.max_count * 16
        self.small = nn.Embedding(self.n_small, d)
        self.query = nn.Linear(cfg.hidden, d)
        self.score = nn.Linear(d, 1, bias=False)
        # A linear term on numeric features that extrapolates to unseen ranks/counts; it starts
        # as "most recent distinct id first" (the repeat baseline) and the MLP above refines it.
        self.numeric = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.numeric.weight.copy_(torch.tensor([[-1.5, 0.5, 0.0, 0.0]]))
        self.gate = nn.Sequential(nn.Linear(cfg.hidden + d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, h: Tensor, ids: Tensor, id_emb: Tensor, actions: Tensor, age: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        """h [N, H]; ring tensors [N, L]. Returns (log attention over positions [N, L] with -inf
        on padding, gate logit [N]; sigmoid(gate) = P(next id is in the ring))."""
        f = ring_features(ids, actions, mask, self.max_count)
        L = ids.shape[-1]
        pos = (L - 1 - torch.arange(L, device=ids.device)).clamp(max=self.pos.num_embeddings - 1)
        same = (ids == ids[:, -1:]).long() & mask.long()
        flags = f["latest"] + 2 * f["carted"] + 4 * f["bought"] + 8 * same
        small = actions + self.action_n * (f["count"] + self.max_count * flags)
        if not self.use_ids:
            id_emb = torch.zeros_like(id_emb[..., :1]).expand_as(id_emb)
        keys = (self.id_proj(id_emb) + self.age(age) + self.pos.weight[pos]
                + self.rank(f["rank"].clamp(max=self.rank.num_embeddings - 1)) + self.small(small))
        num = torch.stack([torch.log1p(f["rank"].float()), torch.log1p((f["count"].float() - 1).clamp(min=0)),
                           torch.log1p(pos.float()).expand_as(keys[..., 0]), f["latest"].float()], -1)
        e = (self.score(torch.tanh(self.query(h).unsqueeze(1) + keys)) + self.numeric(num)).squeeze(-1)
        e = e.masked_fill(~mask, NEG_INF)
        any_valid = mask.any(-1, keepdim=True)
        log_attn = torch.log_softmax(torch.where(any_valid, e, torch.zeros_like(e)), -1)
        log_attn = log_attn.masked_fill(~mask, NEG_INF)
        pooled = (log_attn.exp().unsqueeze(-1) * keys).sum(1)
        gate = self.gate(torch.cat([h, pooled], -1)).squeeze(-1)
        gate = gate.masked_fill(~any_valid.squeeze(-1), -30.0)  # empty ring: nothing to repeat
        return log_attn, gate


class SeqModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items, cfg.emb, padding_idx=PAD)
        self.cat_emb = nn.Embedding(cfg.n_categories, cfg.emb, padding_idx=PAD)
        self.action_emb = nn.Embedding(cfg.n_actions, cfg.action_emb)
        self.gap_emb = nn.Embedding(cfg.n_gap_buckets, cfg.gap_emb)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(2 * cfg.emb + cfg.action_emb + cfg.gap_emb, cfg.hidden, batch_first=True)
        # explore heads: h -> query in embedding space, scored against the SHARED input tables
        self.item_query = nn.Linear(cfg.hidden, cfg.emb)
        self.item_bias = nn.Parameter(torch.zeros(cfg.n_items))
        self.cat_query = nn.Linear(cfg.hidden, cfg.emb)
        self.cat_bias = nn.Parameter(torch.zeros(cfg.n_categories))
        self.item_copy = CopyHead(cfg, cfg.emb)
        self.cat_copy = CopyHead(cfg, cfg.emb)
        self.action_head = nn.Linear(cfg.hidden, cfg.n_actions)
        self.churn_head = nn.Linear(cfg.hidden, 1)
        # rows that may be predicted (set from the vocabularies at training time)
        valid_i = torch.ones(cfg.n_items, dtype=torch.bool)
        valid_c = torch.ones(cfg.n_categories, dtype=torch.bool)
        valid_i[:2] = False
        valid_c[:2] = False
        self.register_buffer("item_valid", valid_i)
        self.register_buffer("cat_valid", valid_c)
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
        return self.item_copy(h, recent.items, self.item_emb(recent.items), recent.actions,
                              recent.age, recent.mask)

    def copy_category(self, h: Tensor, recent: Recent) -> tuple[Tensor, Tensor]:
        return self.cat_copy(h, recent.categories, self.cat_emb(recent.categories), recent.actions,
                             recent.age, recent.mask)

    def item_explore_logits(self, h: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Unnormalised explore scores q(h) . E[v] + b[v] (all items, or `candidates` [K])."""
        q = self.item_query(self.drop(h))
        if candidates is None:
            return F.linear(q, self.item_emb.weight, self.item_bias)
        return F.linear(q, self.item_emb.weight[candidates], self.item_bias[candidates])

    def cat_explore_logits(self, h: Tensor) -> Tensor:
        return F.linear(self.cat_query(self.drop(h)), self.cat_emb.weight, self.cat_bias)

    @staticmethod
    def mixture(log_attn: Tensor, gate: Tensor, ring_ids: Tensor, explore_logits: Tensor,
                valid: Tensor) -> Tensor:
        """log p(v) over the whole table [N, V] from the copy attention and explore scores.

        Explore covers only ids outside the ring (RepeatNet), so the gate is P(repeat)."""
        n, v = explore_logits.shape
        p_rep = torch.zeros(n, v, device=explore_logits.device, dtype=explore_logits.dtype)
        p_rep.scatter_add_(1, ring_ids, log_attn.exp())
        hits = torch.zeros(n, v, device=explore_logits.device, dtype=explore_logits.dtype)
        hits.scatter_add_(1, ring_ids, torch.isfinite(log_attn).to(hits.dtype))
        in_ring = (hits > 0) & valid
        explore = explore_logits.masked_fill(in_ring | ~valid, NEG_INF)
        log_exp = torch.log_softmax(explore, -1)
        log_rep = torch.log(p_rep.clamp_min(1e-30))
        out = torch.where(in_ring, F.logsigmoid(gate).unsqueeze(-1) + log_rep,
                          F.logsigmoid(-gate).unsqueeze(-1) + log_exp)
        return out.masked_fill(~valid, NEG_INF)

    def predict(self, h: Tensor, recent: Recent) -> Prediction:
        la_i, g_i = self.copy_item(h, recent)
        la_c, g_c = self.copy_category(h, recent)
        items = self.mixture(la_i, g_i, recent.items, self.item_explore_logits(h), self.item_valid)
        cats = self.mixture(la_c, g_c, recent.categories, self.cat_explore_logits(h), self.cat_valid)
        return Prediction(items, cats, self.action_head(self.drop(h)),
                          self.churn_head(self.drop(h)).squeeze(-1))


# --------------------------------------------------------------------------------------------
# Vocabulary


class Vocab:
    """Bounded vocabulary raw id -> index: 0 = padding, 1 = unknown, 2.. = known ids.

    Built from training data keeping the most frequent ids up to `capacity` indices. We use a
    bounded vocabulary rather than hashing because the model must output exact item ids (a hashed
    row would be shared by colliding items and could not be mapped back to one id); memory stays
    bounded by the capacity, and ids outside it (new or rare items) all use the unknown row's
    fallback embedding on input and are never recommended."""

    def __init__(self, ids: np.ndarray | Iterable[int], capacity: int):
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if len(ids) + 2 > capacity:
            raise ValueError(f"{len(ids)} ids do not fit a vocabulary of capacity {capacity}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("vocabulary ids must be distinct")
        self.ids = ids  # ids[i] is the raw id of index i + 2
        self.capacity = int(capacity)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    @classmethod
    def build(cls, raw_ids: np.ndarray | Iterable[int], capacity: int) -> "Vocab":
        """Most frequent ids first (ties: smaller raw id first), at most capacity - 2 of them."""
        raw = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids), dtype=np.int64)
        uniq, counts = np.unique(raw, return_counts=True)
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order][: max(capacity - 2, 0)], capacity)

    def __len__(self) -> int:
        """Indices in use, including padding and unknown."""
        return len(self.ids) + 2

    def index(self, raw_ids: np.ndarray | Iterable[int]) -> np.ndarray:
        raw = np.asarray(raw_ids if isinstance(raw_ids, np.ndarray) else list(raw_ids), dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(raw.shape, UNKNOWN, dtype=np.int64)
        pos = np.searchsorted(self._sorted, raw).clip(max=len(self._sorted) - 1)
        hit = self._sorted[pos] == raw
        return np.where(hit, self._order[pos] + 2, UNKNOWN).astype(np.int64)

    def raw(self, indices: np.ndarray | Iterable[int]) -> np.ndarray:
        """Raw ids of indices; padding/unknown/unused indices give -1."""
        idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        ok = (idx >= 2) & (idx < len(self))
        return np.where(ok, self.ids[np.clip(idx - 2, 0, max(len(self.ids) - 1, 0))] if len(self.ids) else -1, -1)

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "ids": self.ids.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocab":
        return cls(np.asarray(d["ids"], dtype=np.int64), int(d["capacity"]))


# --------------------------------------------------------------------------------------------
# Checkpoints


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
        "item_vocab": {"capacity": item_vocab.capacity, "ids": torch.from_numpy(item_vocab.ids.copy())},
        "category_vocab": {"capacity": category_vocab.capacity,
                           "ids": torch.from_numpy(category_vocab.ids.copy())},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # atomic: readers never see half a checkpoint


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> Checkpoint:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(format={blob.get('format') if isinstance(blob, dict) else None!r})")
    cfg = ModelConfig(**blob["config"])
    model = SeqModel(cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    vocab = lambda d: Vocab(d["ids"].numpy().astype(np.int64), int(d["capacity"]))  # noqa: E731
    return Checkpoint(model, vocab(blob["item_vocab"]), vocab(blob["category_vocab"]),
                      int(blob["version"]), dict(blob["meta"]), cfg)


# --------------------------------------------------------------------------------------------
# Cold start


class Popularity:
    """Event-time decayed popularity of item indices, overall and per category (cold start).

    Each event adds weight 2^((ts - t0) / half_life); scores are relative, so comparing items at
    any time needs no decay pass over the table. When the exponent grows large all weights are
    rescaled (rare). Bounded: arrays of the vocabulary capacity."""

    def __init__(self, n_items: int, half_life_s: float = 6 * 3600.0):
        self.half_life_s = float(half_life_s)
        self.scores = np.zeros(n_items, dtype=np.float64)
        self.item_category = np.zeros(n_items, dtype=np.int64)  # last seen category index
        self.t0: float | None = None
        self.t_max: float = -math.inf

    def update(self, items: np.ndarray, categories: np.ndarray | None, ts_s: np.ndarray) -> None:
        items = np.asarray(items, dtype=np.int64)
        ts = np.asarray(ts_s, dtype=np.float64)
        if len(items) == 0:
            return
        if self.t0 is None:
            self.t0 = float(ts.min())
        self.t_max = max(self.t_max, float(ts.max()))
        expo = (ts - self.t0) / self.half_life_s
        if expo.max() > 500:  # rescale to keep weights finite
            shift = float(expo.max())
            self.scores *= 2.0 ** (-shift)
            self.t0 += shift * self.half_life_s
            expo = expo - shift
        np.add.at(self.scores, items, 2.0 ** expo)
        if categories is not None:
            self.item_category[items] = np.asarray(categories, dtype=np.int64)

    def top(self, k: int, category: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most trending item indices (never pad/unknown) with decayed counts, best first;
        counts are expressed at the newest event time seen."""
        s = self.scores.copy()
        s[:2] = 0.0
        if category is not None:
            s[self.item_category != category] = 0.0
        nz = np.flatnonzero(s > 0)
        order = nz[np.lexsort((nz, -s[nz]))][:k]
        scale = 2.0 ** (-(self.t_max - (self.t0 or 0.0)) / self.half_life_s) if self.t0 is not None else 1.0
        return order, s[order] * scale
