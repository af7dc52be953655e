"""Unit tests of the model (models/gru.py, ring.py, copy_head.py, vocab.py, checkpoint.py): model
maths, vocabulary, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import GAP_FIRST, PAD, UNKNOWN, ModelConfig
from models.copy_head import pooled_rows, row_lookup
from models.gru import SeqModel
from models.ring import N_DECAY, Recent, decay_weights, gap_bucket, recent_windows, ring_groups, transition_weights
from models.vocab import Vocab

pytestmark = pytest.mark.unit
torch.set_num_threads(2)


def small_model(seed: int = 0, **kw) -> SeqModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_items=40, n_categories=12, hidden=16, emb=8, ring=6, attn=8, **kw)
    m = SeqModel(cfg)
    m.set_valid(35, 10)
    return m.eval()


def random_seq(m: SeqModel, B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 35, (B, T), generator=g)
    cats = torch.randint(2, 10, (B, T), generator=g)
    acts = torch.randint(0, 3, (B, T), generator=g)
    gaps = torch.randint(2, m.cfg.n_gap_buckets, (B, T), generator=g)
    gaps[:, 0] = GAP_FIRST
    return items, cats, acts, gaps


def test_incremental_equals_full():
    m = small_model()
    items, cats, acts, gaps = random_seq(m, 3, 25)
    with torch.no_grad():
        out, h_full = m.encode(None, items, cats, acts, gaps)
        h = m.init_hidden(3)
        for t in range(items.shape[1]):
            h = m.step(h, items[:, t], cats[:, t], acts[:, t], gaps[:, t])
            assert torch.allclose(h, out[:, t], atol=1e-5)
    assert torch.allclose(h, h_full, atol=1e-5)


def test_encode_lengths_picks_last_real_step():
    m = small_model()
    items, cats, acts, gaps = random_seq(m, 2, 10)
    with torch.no_grad():
        out, h = m.encode(None, items, cats, acts, gaps, lengths=torch.tensor([4, 10]))
    assert torch.allclose(h[0], out[0, 3]) and torch.allclose(h[1], out[1, 9])


def test_shared_embeddings():
    m = small_model()
    # the only [n_items, emb] / [n_categories, emb] matrices are the input tables
    shapes = [tuple(p.shape) for p in m.parameters()]
    assert shapes.count((40, 8)) == 1 and shapes.count((12, 8)) == 1
    h = torch.randn(2, 16)
    before = m.item_explore_logits(h).detach().clone()
    with torch.no_grad():
        m.item_emb.weight[7] += 1.0  # changing an INPUT embedding changes that item's output score
    after = m.item_explore_logits(h).detach()
    changed = (after - before).abs() > 1e-7
    assert changed[:, 7].all() and not changed[:, 8].any()


def test_predict_shapes_masks_and_probabilities():
    m = small_model()
    items, cats, acts, gaps = random_seq(m, 3, 9)
    ts = torch.cumsum(torch.randint(0, 500, (3, 9)), 1).double()
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 7:] = False  # a shorter sequence
    with torch.no_grad():
        out, _ = m.encode(None, items, cats, acts, gaps)
        rec = recent_windows(items, cats, acts, ts, mask, m.cfg.ring, m.cfg.n_gap_buckets)
        p = m.predict(out[:, 5], Recent(rec.items[:, 5], rec.categories[:, 5], rec.actions[:, 5],
                                        rec.age[:, 5], rec.mask[:, 5]))
    assert p.item_logits.shape == (3, 40) and p.category_logits.shape == (3, 12)
    assert p.action_logits.shape == (3, 3) and p.churn_logit.shape == (3,)
    for logits, n_used in ((p.item_logits, 35), (p.category_logits, 10)):
        assert torch.isinf(logits[:, [PAD, UNKNOWN]]).all() and torch.isinf(logits[:, n_used:]).all()
        assert torch.isfinite(logits[:, 2:n_used]).all()
        assert torch.allclose(torch.logsumexp(logits, 1), torch.zeros(3), atol=1e-4)  # a distribution


def test_copy_path_starts_as_recency():
    """Before training, the repeat path already ranks the most recent distinct item first."""
    m = small_model()
    items = torch.tensor([[0, 0, 5, 6, 7, 6]])
    z = torch.zeros_like(items)
    recent = Recent(items, z + 3, z, torch.where(items > 0, 4, 0), items > 0)
    with torch.no_grad():
        la, _ = m.copy_item(torch.zeros(1, 16), recent)
    p = {int(v): float(la[0, i].exp()) for i, v in enumerate(items[0]) if v > 0}
    assert p[6] > p[7] > p[5]


@pytest.mark.parametrize("context", [False, True])
def test_trimmed_rings_score_alike(context):
    """Dropping the all-padding left columns of a batch of rings changes no output."""
    m = small_model(copy_context=context)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():  # copy tables start at zero: make every feature count
            p.normal_(0.0, 0.3)
    items, cats, acts, gaps = random_seq(m, 3, 4)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    pad = lambda x: torch.cat([torch.zeros(3, 2, dtype=x.dtype), x * mask], 1)  # noqa: E731  ring 6
    full = Recent(pad(items), pad(cats), pad(acts), pad(gaps), pad(mask.long()).bool())
    short = full.trimmed()
    assert short.mask.shape == (3, 3) and torch.equal(short.items, full.items[:, 3:])
    h = torch.randn(3, 16)
    with torch.no_grad():
        for head in (m.copy_item, m.copy_category):
            (la_f, g_f), (la_s, g_s) = head(h, full), head(h, short)
            assert torch.allclose(la_f[:, 3:], la_s, atol=1e-5) and torch.isinf(la_f[:, :3]).all()
            assert torch.allclose(g_f, g_s, atol=1e-5)
        p_f, p_s = m.predict(h, full), m.predict(h, short)
    for a, b in ((p_f.item_logits, p_s.item_logits), (p_f.category_logits, p_s.category_logits)):
        assert torch.allclose(a.clamp(min=-1e4), b.clamp(min=-1e4), atol=1e-4)
    assert torch.allclose(p_f.churn_logit, p_s.churn_logit, atol=1e-5)
    assert full.trimmed().trimmed().mask.shape == (3, 3) and short.trimmed() is short


def test_ring_groups_slots_in_recency_order():
    ids = torch.tensor([[0, 5, 6, 5, 7], [0, 0, 0, 0, 4]])
    acts = torch.tensor([[0, 1, 0, 0, 2], [0, 0, 0, 0, 1]])
    g = ring_groups(ids, acts, ids > 0)
    assert g.pos.shape == (2, 3)  # G: the most distinct ids in any row
    assert ids.gather(1, g.pos)[0].tolist() == [7, 5, 6]  # 7 newest, then 5, then 6
    assert g.pos[0].tolist() == [4, 3, 2]  # each id's newest occurrence
    assert g.valid.tolist() == [[True, True, True], [True, False, False]]
    assert g.sums[0, :, :3].tolist() == [[1, 0, 1], [2, 1, 0], [1, 0, 0]]  # count, carts, buys
    assert g.sums[1, 1:].abs().sum() == 0  # empty slots sum nothing
    # the sums of the id at any ring position, occurrence or not
    assert g.sums_at(torch.tensor([[1, 3], [4, 4]]))[..., 0].tolist() == [[2, 2], [1, 1]]


def test_ring_groups_without_events():
    ids = torch.zeros(2, 4, dtype=torch.long)
    g = ring_groups(ids, ids, ids > 0)
    assert g.pos.shape == (2, 1) and not g.valid.any() and g.sums.abs().sum() == 0


def test_table_lookups_without_materialising_equal_plain_indexing():
    """The copy head scores and pools its feature tables per row instead of building [N, L, d];
    values and gradients must equal plain indexing."""
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 9, (5, 7), generator=g)
    w = torch.rand(5, 7, generator=g, requires_grad=True)
    table = torch.randn(9, 4, generator=g, requires_grad=True)
    col = torch.randn(9, generator=g, requires_grad=True)
    pooled = pooled_rows(table, idx, w)
    looked = row_lookup(col, idx)
    up = torch.randn(5, 4, generator=g)
    uc = torch.randn(5, 7, generator=g)
    grads = torch.autograd.grad((pooled * up).sum() + (looked * uc).sum(), (table, col, w))
    ref_pooled = (w.unsqueeze(-1) * table[idx]).sum(1)
    ref_looked = col[idx]
    ref = torch.autograd.grad((ref_pooled * up).sum() + (ref_looked * uc).sum(), (table, col, w))
    assert torch.allclose(pooled, ref_pooled, atol=1e-6) and torch.equal(looked, ref_looked)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_copy_head_pools_ids_alike_with_and_without_context():
    """With a zero query (as at init) the context term is zero, so the two ways of pooling the id
    embeddings (a materialised lookup with context, embedding_bag without) must agree, gradients
    included."""
    outs = []
    for ctx in (False, True):
        m = small_model(copy_context=ctx).train()
        m.drop.p = 0.0
        items, cats, acts, gaps = random_seq(m, 4, 6)
        recent = Recent(items, cats, acts, gaps, items > 0)
        recent.mask[0, :3] = False
        h = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
        la, gate = m.copy_item(h, recent)
        (la.clamp(min=-30).sum() + gate.pow(2).sum()).backward()
        outs.append((la.detach(), gate.detach(), m.item_emb.weight.grad.to_dense()))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5)
    assert outs[0][2].abs().sum() > 0  # the id embeddings do get a gradient through the gate


def test_ring_groups_weighted_sums_and_decay_kernels():
    ids = torch.tensor([[0, 5, 6, 5, 7]])
    mask = ids > 0
    w = torch.tensor([[[9.0], [1.0], [2.0], [4.0], [8.0]]])  # padding's weight is ignored
    g = ring_groups(ids, torch.zeros_like(ids), mask, w)
    assert g.sums[0, :, 3].tolist() == [8.0, 5.0, 2.0]  # slots 7, 5, 6
    age = torch.where(mask, gap_bucket(torch.tensor([[0, 7200, 3600, 60, 0]])), 0)
    k = decay_weights(age, mask)
    assert k.shape == (1, 5, N_DECAY) and (k[0, 0] == 0).all()
    assert torch.allclose(k[0, -1, :3], torch.ones(3))  # newest event: distance 0
    assert torch.allclose(k[0, 3, 0], torch.tensor(2.0 ** -0.25))  # 1 event back, half-life 4
    assert (k[0, 1:, -1] == 1).all()  # the last kernel sums to the unclipped count
    t1h = k[0, 1:, 3]  # half-life 1 h, from the age bucket (its middle): older = smaller
    assert t1h[0] < t1h[1] < t1h[2] <= t1h[3] and 0.2 < float(t1h[0]) < 0.35  # ~2 h: ~1/4


def test_decayed_counts_start_at_zero_and_old_checkpoints_load(tmp_path):
    """The decayed-count weights start at zero (an untrained head keeps the recency order), and a
    checkpoint written before they existed loads as the model it was."""
    m = small_model()
    assert m.cfg.copy_decay and not m.item_copy.decay_w.any() and not m.cat_copy.decay_w.any()
    old = small_model(copy_decay=False)
    iv, cv = Vocab(np.arange(100, 133), 40), Vocab(np.arange(7, 15), 12)
    save_checkpoint(tmp_path / "old.pt", old, iv, cv, version=1, meta={})
    blob = torch.load(tmp_path / "old.pt", weights_only=True)
    del blob["config"]["copy_decay"]  # as written before the field existed
    torch.save(blob, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt", device="cpu")
    assert not ck.config.copy_decay and ck.model.item_copy.decay_w is None
    # with learned weights, a frequently revisited older item can overtake a newer one-off
    items = torch.tensor([[5, 5, 5, 5, 6, 7]])
    z = torch.zeros_like(items)
    recent = Recent(items, z + 3, z, torch.full_like(items, 4), items > 0)
    with torch.no_grad():
        m.item_copy.decay_w[-1] = 5.0
        la, _ = m.copy_item(torch.zeros(1, 16), recent)
    assert la[0, 3] > la[0, 4]


def test_transition_counts_around_the_newest_id(tmp_path):
    """The user's own transitions newest -> id and id -> newest, counted per ring id; padding and
    the ring's edges count nothing. A learned weight lets "A, B, A, ... A -> B again" reorder the
    copy scores; untrained, and in checkpoints from before the field, it changes nothing."""
    ids = torch.tensor([[0, 3, 5, 3, 7, 9, 3]])  # padding, then newest = 3
    mask = ids > 0
    w = transition_weights(ids, mask)
    assert w[0, :, 0].tolist() == [0, 0, 1, 0, 1, 0, 0]  # right after a 3: the 5 and the 7
    assert w[0, :, 1].tolist() == [0, 0, 1, 0, 0, 1, 0]  # right before a 3: the 5 and the 9
    g = ring_groups(ids, torch.zeros_like(ids), mask, w)
    assert g.sums_at(torch.tensor([[2]]))[0, 0, 3:].tolist() == [1.0, 1.0]  # 5: once after, once before the newest id

    m = small_model()
    items = torch.tensor([[4, 8, 7, 6, 9, 4]])  # 8 followed 4 before; now the user is on 4 again
    z = torch.zeros_like(items)
    recent = Recent(items, z + 3, z, torch.full_like(items, 4), items > 0)
    with torch.no_grad():
        la, _ = m.copy_item(torch.zeros(1, 16), recent)
        assert la[0, 4] > la[0, 1]  # untrained: recency order
        m.item_copy.transition_s[1] = 5.0  # once after the newest id, never before it
        la, _ = m.copy_item(torch.zeros(1, 16), recent)
    assert la[0, 1] > la[0, 4] and la[0, 1] > la[0, 3]

    iv, cv = Vocab(np.arange(100, 133), 40), Vocab(np.arange(7, 15), 12)
    save_checkpoint(tmp_path / "old.pt", small_model(copy_transitions=False), iv, cv, version=1, meta={})
    blob = torch.load(tmp_path / "old.pt", weights_only=True)
    del blob["config"]["copy_transitions"]  # as written before the field existed
    torch.save(blob, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt", device="cpu")
    assert not ck.config.copy_transitions and ck.model.item_copy.transition_s is None


def test_gap_bucket():
    s = np.array([-5, 0, 1, 60, 3600, 86400, 1e12])
    b = gap_bucket(s)
    assert (np.diff(b) >= 0).all() and b.min() >= 2 and b.max() == 47
    assert np.array_equal(gap_bucket(torch.tensor(s)).numpy(), b)


def test_vocab_unknown_fallback_and_roundtrip():
    raw = np.array([10, 10, 10, 20, 20, 30, 40])
    v = Vocab.build(raw, capacity=4)  # room for 2 ids: the most frequent
    assert v.index(np.array([10, 20, 30, 99])).tolist() == [2, 3, UNKNOWN, UNKNOWN]
    assert v.raw(np.array([2, 3, 0, 1])).tolist() == [10, 20, -1, -1]
    v2 = Vocab.from_dict(v.to_dict())
    assert v2.index(raw).tolist() == v.index(raw).tolist() and len(v2) == 4
    m = small_model()  # an unknown item uses the fallback embedding row
    with torch.no_grad():
        x = m._inputs(torch.tensor([UNKNOWN]), torch.tensor([2]), torch.tensor([0]), torch.tensor([2]))
    assert torch.allclose(x[0, :8], m.item_emb.weight[UNKNOWN])


def test_checkpoint_roundtrip(tmp_path):
    m = small_model(seed=3)
    iv, cv = Vocab(np.arange(100, 133), 40), Vocab(np.arange(7, 15), 12)
    path = tmp_path / "model.pt"
    save_checkpoint(path, m, iv, cv, version=7, meta={"note": "x", "epochs": [1, 2]})
    raw = torch.load(path, weights_only=True)  # safe loading works
    assert raw["format"] == "seqstream-gru/1"
    ck = load_checkpoint(path, device="cpu")
    assert ck.version == 7 and ck.meta["note"] == "x" and ck.config == m.cfg
    assert ck.item_vocab.index(np.array([105])).tolist() == [7]
    items, cats, acts, gaps = random_seq(m, 2, 6)
    with torch.no_grad():
        a, _ = m.encode(None, items, cats, acts, gaps)
        b, _ = ck.model.encode(None, items, cats, acts, gaps)
    assert torch.equal(a, b) and torch.equal(ck.model.item_valid, m.item_valid)
    # the fusion calibration travels with the checkpoint; one written before it existed loads
    # with the neutral values (temperature 1, no gate shift), i.e. as the model it was
    with torch.no_grad():
        m.explore_temp.copy_(torch.tensor([3.0, 1.5]))
        m.gate_shift.copy_(torch.tensor([-0.5, 0.25]))
        m.action_temp.fill_(2.0)
        m.action_shift.copy_(torch.tensor([0.5, 0.0, -0.5]))
    save_checkpoint(path, m, iv, cv, version=7, meta={})
    ck = load_checkpoint(path, device="cpu")
    assert ck.model.explore_temp.tolist() == [3.0, 1.5] and ck.model.gate_shift.tolist() == [-0.5, 0.25]
    assert ck.model.action_temp.tolist() == [2.0] and ck.model.action_shift.tolist() == [0.5, 0.0, -0.5]
    blob = torch.load(path, weights_only=True)
    for key in ("explore_temp", "gate_shift", "action_temp", "action_shift"):
        del blob["state_dict"][key]
    torch.save(blob, path)
    ck = load_checkpoint(path, device="cpu")
    assert ck.model.explore_temp.tolist() == [1.0, 1.0] and ck.model.gate_shift.tolist() == [0.0, 0.0]
    assert ck.model.action_temp.tolist() == [1.0] and ck.model.action_shift.tolist() == [0.0, 0.0, 0.0]
    torch.save({"format": "something-else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a seqstream-gru/1"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("fusion", ["tiered", "mixture"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_serving_fast_top_k_equals_full_predict(fusion, calibrated):
    """predict_top_items (serving) must rank and score exactly like predict's full mixture."""
    torch.manual_seed(3)
    cfg = ModelConfig(n_items=300, n_categories=20, hidden=16, emb=8, dropout=0.0, ring=12,
                      fusion=fusion)
    model = SeqModel(cfg).eval()
    model.set_valid(280, 18)  # ids 280.. are unused rows: never output
    with torch.no_grad():  # make gates of both signs likely
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if calibrated:
            model.explore_temp.copy_(torch.tensor([2.5, 0.7]))
            model.gate_shift.copy_(torch.tensor([0.6, -0.4]))
    B, L = 64, 12
    g = torch.Generator().manual_seed(0)
    items = torch.randint(2, 40, (B, L), generator=g)  # small id range: repeats in the ring
    items[:, :3] = torch.randint(2, 300, (B, 3), generator=g)
    mask = torch.rand(B, L, generator=g) > 0.2
    mask[:8] = False  # users with an empty ring
    mask[8:16, :-1] = False
    items = torch.where(mask, items, torch.zeros_like(items))
    items[20, -1] = 1  # the unknown-item row
    recent = Recent(items=items, categories=torch.randint(2, 18, (B, L), generator=g) * mask,
                    actions=torch.randint(0, 3, (B, L), generator=g),
                    age=torch.randint(2, 30, (B, L), generator=g) * mask, mask=mask)
    h = torch.randn(B, 16, generator=g)
    with torch.no_grad():
        full = model.predict(h, recent)
        want_v, want_i = full.item_logits.topk(10, -1)
        got_v, got_i, actions, churn = model.predict_top_items(h, recent, 10)
    torch.testing.assert_close(got_v, want_v, atol=1e-4, rtol=1e-4)
    assert torch.equal(got_i[torch.isfinite(want_v)], want_i[torch.isfinite(want_v)])
    torch.testing.assert_close(actions, full.action_logits)
    torch.testing.assert_close(churn, full.churn_logit)


def test_history_first_keeps_the_ring_above_new_ids_whatever_the_gate():
    """Tiered fusion lets a strong explore score outrank the ring where the gate is below 0.5;
    with history_first (the category default) every ring id stays above every new one."""
    ring = torch.tensor([[3, 4]])
    log_attn = torch.log(torch.tensor([[0.3, 0.7]]))
    explore = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 6.0]])  # id 5: a sharp "new" guess
    valid = torch.tensor([False, False, True, True, True, True])
    gate = torch.tensor([-1.0])  # the gate favours something new
    tiered = SeqModel.mixture(log_attn, gate, ring, explore, valid, tiered=True)
    assert tiered[0].argmax() == 5
    first = SeqModel.mixture(log_attn, gate, ring, explore, valid, tiered=True, history_first=True)
    assert first[0].argsort(descending=True)[:3].tolist() == [4, 3, 5]  # ring order kept, then 5
    assert torch.isclose(first[0].exp()[valid].sum(), torch.tensor(1.0))  # still a distribution
    assert SeqModel(ModelConfig(n_items=10, n_categories=8)).cfg.cat_history_first


def test_a_batch_of_no_rows_predicts_nothing():
    """Zero rows (e.g. a chunk whose events all lack targets) give empty outputs, not errors."""
    m = small_model().eval()
    z = torch.zeros(0, 5, dtype=torch.long)
    recent = Recent(z + 3, z + 2, z, z + 1, z == 0)
    h = torch.zeros(0, 16)
    with torch.no_grad():
        p = m.predict(h, recent)
        top = m.predict_top_items(h, recent, 5)
    assert p.item_logits.shape == (0, m.cfg.n_items) and p.category_logits.shape == (0, m.cfg.n_categories)
    assert top[0].shape == (0, 5)
