"""models/explore_index.py: serving top-K with the explore tier from an index equals the exact
fast path where the index finds the true candidates."""
from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.explore_index import ExploreIndex, predict_top_items_indexed
from models.gru import SeqModel
from models.ring import Recent

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("fusion", ["tiered", "mixture"])
def test_indexed_top_k_equals_exact_fast_path(fusion):
    torch.manual_seed(3)
    cfg = ModelConfig(n_items=300, n_categories=20, hidden=16, emb=8, dropout=0.0, ring=12, fusion=fusion)
    model = SeqModel(cfg).eval()
    model.set_valid(280, 18)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    B, L = 32, 12
    g = torch.Generator().manual_seed(0)
    items = torch.randint(2, 40, (B, L), generator=g)
    items[:, :3] = torch.randint(2, 300, (B, 3), generator=g)  # some invalid rows in the ring
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:4, :5] = False
    items = items.masked_fill(~mask, 0)
    recent = Recent(items, torch.randint(2, 18, (B, L), generator=g), torch.randint(0, 3, (B, L), generator=g),
                    torch.randint(1, cfg.n_gap_buckets, (B, L), generator=g).masked_fill(~mask, 0), mask)
    h = torch.randn(B, cfg.hidden, generator=g)
    ex = ExploreIndex.build(model, "ann")
    assert ex is not None and ex.n_valid == 278
    want_v, want_i, want_a, want_c = model.predict_top_items(h, recent, 10)
    got_v, got_i, got_a, got_c = predict_top_items_indexed(model, ex, h, recent, 10)
    torch.testing.assert_close(got_v, want_v, atol=1e-4, rtol=1e-4)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_a, want_a)
    torch.testing.assert_close(got_c, want_c)


def test_auto_keeps_small_catalogues_exact():
    model = SeqModel(ModelConfig(n_items=50, n_categories=5, hidden=8, emb=4, ring=4, attn=4)).eval()
    assert ExploreIndex.build(model, "auto") is None
    assert ExploreIndex.build(model, "exact") is None


def test_scorer_serves_the_same_predictions_through_the_index():
    """The worker's Scorer with retrieval=ann (a small catalogue: the index finds every true
    candidate) gives the predictions of the exact path."""
    import dataclasses

    from tests.unit.test_scoring import events_for, make_scoring
    from stream.scoring import Scorer

    exact = make_scoring()
    indexed = dataclasses.replace(exact, explore_index=ExploreIndex.build(exact.model, "ann"))
    assert indexed.explore_index is not None
    events = [ev for u in (1, 2, 3) for ev in events_for(u, 9)]
    want = Scorer(exact, ring_size=6, top_k=5).score_batch({}, events)
    got = Scorer(indexed, ring_size=6, top_k=5).score_batch({}, events)
    assert [[i for i, _ in p.next_items] for p in got] == [[i for i, _ in p.next_items] for p in want]
    for p, q in zip(got, want):
        assert [s for _, s in p.next_items] == pytest.approx([s for _, s in q.next_items], abs=1e-4)
