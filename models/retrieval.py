"""Top-K next items from full-catalogue scores: exact torch.topk (fine for 10k-100k items)."""
from __future__ import annotations

import torch
from torch import Tensor


def top_k(scores: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact top-k of scores [B, N] -> (values [B, k'], indices [B, k']), best first.

    Rows that may never be recommended (padding 0, unknown 1, and `~valid` when given, e.g.
    `model.item_valid`) are masked to -inf first; k' = min(k, number of recommendable rows), so
    masked rows are never returned."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    allowed = torch.ones(scores.shape[1], dtype=torch.bool, device=scores.device)
    allowed[:2] = False
    if valid is not None:
        allowed &= valid.to(scores.device)
    masked = scores.masked_fill(~allowed, float("-inf"))
    return torch.topk(masked, min(k, int(allowed.sum())), dim=1)
