"""models/retrieval.py: exact search is brute force, HNSW recalls a planted catalogue, folded
biases keep the exact ranking, and an index survives save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.retrieval import (ExactIndex, HNSWIndex, build_index, choose_mode, fold_bias,
                              fold_queries)

pytestmark = pytest.mark.unit


def planted(n: int = 5000, dim: int = 16, clusters: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    items = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    queries = centres[rng.integers(clusters, size=64)] + 0.3 * rng.standard_normal((64, dim)).astype(np.float32)
    return items.astype(np.float32), queries.astype(np.float32)


def test_exact_equals_brute_force():
    items, queries = planted()
    ids = np.arange(len(items)) * 7 + 3  # rows map to arbitrary ids
    scores, got = ExactIndex.build(items, ids).search(queries, 10)
    brute = queries @ items.T
    order = np.argsort(-brute, 1)[:, :10]
    np.testing.assert_array_equal(got, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, 1), rtol=1e-5, atol=1e-5)


def test_exact_pads_a_tiny_catalogue():
    items, queries = planted(n=3)
    scores, ids = ExactIndex.build(items).search(queries[:2], 5)
    assert ids.shape == (2, 5) and (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_hnsw_recall_on_planted_catalogue():
    items, queries = planted()
    _, exact = ExactIndex.build(items).search(queries, 20)
    scores, ann = HNSWIndex.build(items).search(queries, 20)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(ann.tolist(), exact.tolist())])
    assert recall >= 0.95
    # the returned scores are the true inner products of the returned ids
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, items[ann]), rtol=1e-3, atol=1e-3)


def test_bias_folding_keeps_the_exact_ranking():
    items, queries = planted()
    bias = np.random.default_rng(1).standard_normal(len(items)).astype(np.float32) * 3
    scores, ids = ExactIndex.build(fold_bias(items, bias)).search(fold_queries(queries), 20)
    biased = queries @ items.T + bias
    order = np.argsort(-biased, 1)[:, :20]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(biased, order, 1), rtol=1e-5, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    items, queries = planted(n=2000)
    ids = np.arange(len(items)) + 100
    index = HNSWIndex.build(fold_bias(items, np.zeros(len(items))), ids)
    before = index.search(fold_queries(queries), 10)
    index.save(tmp_path / "items.hnsw")
    loaded = HNSWIndex.load(tmp_path / "items.hnsw")
    after = loaded.search(fold_queries(queries), 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    assert loaded.n_items == 2000 and loaded.dim == items.shape[1] + 1


def test_mode_choice_and_bad_input():
    assert choose_mode("auto", 10**6, "cpu") == "ann"
    assert choose_mode("auto", 10**3, "cpu") == "exact"
    assert choose_mode("auto", 10**6, torch.device("meta")) == "exact"
    assert isinstance(build_index(np.ones((5, 4)), None, None, "auto"), ExactIndex)
    with pytest.raises(ValueError, match="retrieval must be one of"):
        choose_mode("fast", 10, "cpu")
    with pytest.raises(ValueError, match=r"queries must be \[B, 4\]"):
        ExactIndex.build(np.ones((5, 4))).search(np.ones((2, 3)), 1)
