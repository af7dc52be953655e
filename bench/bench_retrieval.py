"""Approximate vs exact top-K over the item table (issue 23 item 2).

    python bench/bench_retrieval.py --items 1000000 --dim 64 --json

Embeddings are random but structured like trained item tables: clustered gaussians (items around
`--clusters` centres, cluster sizes Zipf-like) plus a popularity-like bias per item (log of a
Zipf count), folded in as one more column (models.retrieval.fold_bias). Queries are drawn near
cluster centres, as a user's query vector sits near the items it likes. Recall@k = |ann top-k
intersect exact top-k| / k on the same queries. Throughputs are medians of `--repeats` runs.
The last line (with --json) is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.retrieval import ExactIndex, HNSWIndex, fold_bias, fold_queries  # noqa: E402


def structured_table(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item vectors [n, dim], biases [n], centres [clusters, dim])."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    members = rng.choice(clusters, size=n, p=weights / weights.sum())
    vectors = centres[members] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    bias = (-np.log(rng.zipf(1.3, size=n).clip(max=10 ** 6))).astype(np.float32) * 0.3
    return vectors.astype(np.float32), bias, centres


def queries_near(centres: np.ndarray, n: int, seed: int, scale: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    dim = centres.shape[1]
    q = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (scale * q).astype(np.float32)  # a trained query is sharper than an item vector


def qps(index, queries: np.ndarray, batch: int, k: int, repeats: int, max_queries: int) -> float:
    q = queries[:max_queries]
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(q), batch):
            index.search(q[s:s + batch], k)
        runs.append(len(q) / (time.perf_counter() - t0))
    return statistics.median(runs)


def recall(exact_ids: np.ndarray, ann_ids: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(ann_ids, exact_ids)]
    return float(np.mean(hits))


def build_ivf(x: np.ndarray, nlist: int, nprobe: int):
    """IVF-Flat under inner product, for the HNSW-vs-IVF measurement only (not served)."""
    import faiss

    quant = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quant, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    index.train(x[rng.choice(len(x), size=min(len(x), 40 * nlist), replace=False)])
    index.add(x)
    index.nprobe = nprobe

    class IVF:
        def search(self, q, k):
            return index.search(np.ascontiguousarray(q), k)

    return IVF(), index


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=2048, help="queries for recall and batch-256 qps")
    p.add_argument("--m", type=int, default=32, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--ef-sweep", default="", help="also measure these efSearch values, e.g. 64,256")
    p.add_argument("--ivf", action="store_true", help="also measure IVF-Flat (nlist, nprobe below)")
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch/faiss threads (0: library default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        import faiss

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)

    vectors, bias, centres = structured_table(a.items, a.dim, a.clusters, a.seed)
    x = fold_bias(vectors, bias)
    queries = fold_queries(queries_near(centres, a.queries, a.seed))
    exact = ExactIndex.build(x)
    t0 = time.perf_counter()
    ann = HNSWIndex.build(x, m=a.m, ef_construction=a.ef_construction, ef_search=a.ef_search)
    build_s = time.perf_counter() - t0
    _, exact_ids = exact.search(queries, a.k)
    _, ann_ids = ann.search(queries, a.k)
    out = {
        "items": a.items, "dim": a.dim, "k": a.k, "index": f"hnsw(M={a.m},efC={a.ef_construction},"
                                                           f"efS={a.ef_search})",
        "recall_at_20": round(recall(exact_ids, ann_ids), 4),
        # batch 1 runs fewer queries: each exact query is a full pass over the table
        "qps_batch1": round(qps(ann, queries, 1, a.k, a.repeats, 1000), 1),
        "qps_batch256": round(qps(ann, queries, 256, a.k, a.repeats, a.queries), 1),
        "exact_qps_batch1": round(qps(exact, queries, 1, a.k, a.repeats, 100 if a.items > 200_000 else 300), 1),
        "exact_qps_batch256": round(qps(exact, queries, 256, a.k, a.repeats, 512 if a.items > 200_000 else 1024), 1),
        "build_s": round(build_s, 1), "index_bytes": ann.nbytes, "exact_bytes": exact.nbytes,
        "threads": torch.get_num_threads(), "embeddings": f"clustered gaussians ({a.clusters} centres) + zipf bias",
    }
    out["speedup_batch256"] = round(out["qps_batch256"] / out["exact_qps_batch256"], 1)
    for ef in [int(e) for e in a.ef_sweep.split(",") if e]:  # the same graph, other efSearch
        ann.set_ef_search(ef)
        out[f"ef{ef}_recall_at_20"] = round(recall(exact_ids, ann.search(queries, a.k)[1]), 4)
        out[f"ef{ef}_qps_batch256"] = round(qps(ann, queries, 256, a.k, a.repeats, a.queries), 1)
    if a.ivf:
        t0 = time.perf_counter()
        ivf, raw = build_ivf(x, a.nlist, a.nprobe)
        out["ivf_build_s"] = round(time.perf_counter() - t0, 1)
        out["ivf_recall_at_20"] = round(recall(exact_ids, ivf.search(queries, a.k)[1]), 4)
        out["ivf_qps_batch256"] = round(qps(ivf, queries, 256, a.k, a.repeats, a.queries), 1)
        out["ivf_qps_batch1"] = round(qps(ivf, queries, 1, a.k, a.repeats, 1000), 1)
        out["ivf"] = f"ivfflat(nlist={a.nlist},nprobe={a.nprobe})"
    if not a.json:
        for key, val in out.items():
            print(f"{key:>20}: {val}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
