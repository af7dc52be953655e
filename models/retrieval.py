"""Top-K retrieval over the item table for the explore path: one interface, two indexes.

    index.search(queries [B, d] float32, k) -> (scores [B, k] float32, ids [B, k] int64)

Scores are inner products; rows are best first; when fewer than k items exist the tail is
padded with score -inf and id -1.

- `ExactIndex`: one matmul + topk (torch). Exact; used for small catalogues and on the GPU.
- `HNSWIndex`: faiss `IndexHNSWFlat` over the same vectors. Approximate; for large catalogues on
  the CPU (bench/bench_retrieval.py measured it against IVF, see /work/ops/retrieval-BENCHMARKS.md).

Explore scores are q . E[v] + b[v]. `fold_bias` appends b as one more column of the item
vectors and `fold_queries` appends a 1 to each query, so the inner product in d + 1 dimensions
is exactly the biased score and the ranking is unchanged. HNSW's inner-product search is turned
into an L2 search the standard way (one more column sqrt(M^2 - |x|^2), 0 in the query; Bachrach
et al. 2014): graph search under L2 is better behaved than under inner product when norms vary
(and the folded bias makes them vary).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

RETRIEVAL_MODES = ("exact", "ann", "auto")
AUTO_ANN_MIN_ITEMS = 100_000  # `auto` uses the approximate index from this many items (CPU only)


class TopKIndex(Protocol):
    n_items: int
    dim: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def nbytes(self) -> int: ...


def fold_bias(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[V, d] item vectors and [V] biases -> [V, d + 1]: x . [q, 1] = v . q + b."""
    v = np.asarray(vectors, dtype=np.float32)
    b = np.asarray(bias, dtype=np.float32).reshape(-1, 1)
    if len(b) != len(v):
        raise ValueError(f"bias has {len(b)} rows, vectors {len(v)}")
    return np.ascontiguousarray(np.concatenate([v, b], 1))


def fold_queries(queries: np.ndarray) -> np.ndarray:
    """[B, d] -> [B, d + 1] with a 1 in the bias column."""
    q = np.asarray(queries, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([q, np.ones((len(q), 1), np.float32)], 1))


def _check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [B, {dim}], got {list(q.shape)}")
    return q


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] == k:
        return scores, ids
    b = len(scores)
    s = np.full((b, k), -np.inf, np.float32)
    i = np.full((b, k), -1, np.int64)
    s[:, :scores.shape[1]], i[:, :ids.shape[1]] = scores, ids
    return s, i


@dataclass
class ExactIndex:
    """Brute force: scores = queries @ vectors.T, then topk. `ids[row]` is what a row returns."""

    vectors: torch.Tensor  # [V, d] float32, on the device that searches
    ids: np.ndarray  # [V] int64

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray | None = None,
              device: torch.device | str = "cpu") -> "ExactIndex":
        v = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32), device=device)
        return cls(v, np.arange(len(v), dtype=np.int64) if ids is None else np.asarray(ids, np.int64))

    @property
    def n_items(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size() + self.ids.nbytes

    @torch.no_grad()
    def search_tensor(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same on tensors (no host copy): (scores [B, k'], rows [B, k']), k' = min(k, V)."""
        return (queries @ self.vectors.t()).topk(min(k, self.n_items), -1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(_check_queries(queries, self.dim), device=self.vectors.device)
        s, rows = self.search_tensor(q, k)
        return _pad(s.cpu().numpy(), self.ids[rows.cpu().numpy()], k)


def _l2_augment(x: np.ndarray, max_norm: float) -> np.ndarray:
    extra = np.sqrt(np.maximum(max_norm ** 2 - (x * x).sum(1), 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([x, extra[:, None]], 1))


@dataclass
class HNSWIndex:
    """faiss IndexHNSWFlat over [x, sqrt(M^2 - |x|^2)] (L2), queried with [q, 0]; returns inner
    products q . x (recomputed from |q - x'|^2 = |q|^2 + M^2 - 2 q . x, exact up to rounding)."""

    index: object  # faiss.IndexHNSWFlat
    ids: np.ndarray  # [V] int64: faiss row -> returned id
    dim: int
    max_norm: float

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray | None = None, *, m: int = 32,
              ef_construction: int = 80, ef_search: int = 128) -> "HNSWIndex":
        import faiss  # a runtime dependency; imported here so exact-only users never load it

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        max_norm = float(np.sqrt((x * x).sum(1).max())) if len(x) else 0.0
        index = faiss.IndexHNSWFlat(x.shape[1] + 1, m)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        index.add(_l2_augment(x, max_norm))
        ids = np.arange(len(x), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        return cls(index, ids, x.shape[1], max_norm)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes) + self.ids.nbytes

    def set_ef_search(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_queries(queries, self.dim)
        kk = min(k, self.n_items)
        if kk == 0:
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        qa = np.ascontiguousarray(np.concatenate([q, np.zeros((len(q), 1), np.float32)], 1))
        dist, rows = self.index.search(qa, kk)
        ok = rows >= 0
        scores = ((q * q).sum(1, keepdims=True) + self.max_norm ** 2 - dist) / 2.0
        scores = np.where(ok, scores, -np.inf).astype(np.float32)
        return _pad(scores, np.where(ok, self.ids[np.maximum(rows, 0)], -1), k)

    def save(self, path: str | Path) -> None:
        import faiss

        buf = io.BytesIO()
        np.savez(buf, index=faiss.serialize_index(self.index), ids=self.ids,
                 meta=np.array([self.dim, self.max_norm], np.float64))
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "HNSWIndex":
        import faiss

        with np.load(Path(path)) as z:
            index = faiss.deserialize_index(z["index"])
            dim, max_norm = z["meta"]
            return cls(index, z["ids"].astype(np.int64), int(dim), float(max_norm))


def choose_mode(mode: str, n_items: int, device: torch.device | str,
                min_items: int = AUTO_ANN_MIN_ITEMS) -> str:
    """`exact` | `ann` | `auto` -> `exact` or `ann`: auto is ann on the CPU from `min_items` up."""
    if mode not in RETRIEVAL_MODES:
        raise ValueError(f"retrieval must be one of {'|'.join(RETRIEVAL_MODES)}, got {mode!r}")
    if mode == "auto":
        return "ann" if torch.device(device).type == "cpu" and n_items >= min_items else "exact"
    return mode


def build_index(vectors: np.ndarray, bias: np.ndarray | None, ids: np.ndarray | None, mode: str,
                device: torch.device | str = "cpu") -> TopKIndex:
    """One index over the (bias-folded, when `bias` is given) item vectors."""
    x = fold_bias(vectors, bias) if bias is not None else np.asarray(vectors, np.float32)
    if choose_mode(mode, len(x), device) == "ann":
        return HNSWIndex.build(x, ids)
    return ExactIndex.build(x, ids, device)
