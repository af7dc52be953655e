"""The worker's scoring core: order restoration, waves, incremental == full, hot-swap."""
import random

import numpy as np
import pytest
import torch

from models.config import GAP_FIRST, ModelConfig
from models.gru import SeqModel
from models.ring import gap_bucket
from models.vocab import Vocab
from models.schema import ACTION_INDEX, ACTIONS
from stream.events import Event
from stream.scoring import Scorer, ScoringModel

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def make_scoring(version: int = 1, seed: int = 0) -> ScoringModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_items=64, n_categories=16, hidden=16, emb=8, action_emb=4, gap_emb=4,
                      attn=8, dropout=0.0, ring=6)
    model = SeqModel(cfg).eval()
    items = Vocab(np.arange(100, 150), 64)
    cats = Vocab(np.arange(10), 16)
    model.set_valid(len(items), len(cats))
    return ScoringModel(model, items, cats, version, torch.device("cpu"))


def events_for(user: int, n: int, seed: int = 0) -> list[Event]:
    rng = random.Random(seed * 1000 + user)
    ts = T0
    out = []
    for i in range(n):
        ts += rng.randint(1, 600) * 1000
        out.append(Event(user, 100 + rng.randrange(60), rng.choice(ACTIONS), ts,
                         category_id=rng.randrange(10), topic="click", offset=i))
    return out


def one_by_one(scorer: Scorer, events: list[Event]):
    states = {}
    preds = [scorer.score_batch(states, [ev])[0] for ev in events]
    return states, preds


@pytest.mark.parametrize("ring", [50, 6])  # 6 < sequence length: exercises the anchor
def test_out_of_order_arrival_gives_the_in_order_hidden_state(ring):
    scorer = Scorer(make_scoring(), ring_size=ring, top_k=5)
    events = events_for(1, 20)
    in_order, _ = one_by_one(scorer, events)
    shuffled = list(events)
    # swap neighbours inside the ring window: a cart consumed before the click before it
    for i in (3, 8, 15, 18):
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    late_states, preds = one_by_one(scorer, shuffled)
    assert sum(p.late for p in preds) == 4
    a, b = in_order[1], late_states[1]
    assert [e.ts for e in a.ring] == [e.ts for e in b.ring]
    np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)
    assert b.n_late == 4 and b.n_too_late == 0


def test_incremental_equals_full_sequence_encode():
    scoring = make_scoring()
    scorer = Scorer(scoring, ring_size=6, top_k=5)
    events = events_for(2, 25)
    states, _ = one_by_one(scorer, events)
    items = torch.as_tensor(scoring.items.index(np.array([e.item_id for e in events])))[None]
    cats = torch.as_tensor(scoring.categories.index(np.array([e.category_id for e in events])))[None]
    acts = torch.tensor([[ACTION_INDEX[e.action] for e in events]])
    gaps_s = np.diff(np.array([e.ts for e in events])) / 1000.0
    gaps = torch.as_tensor(np.concatenate([[GAP_FIRST], gap_bucket(gaps_s, scoring.model.cfg.n_gap_buckets)]))[None]
    with torch.no_grad():
        _, h_full = scoring.model.encode(None, items, cats, acts, gaps)
    np.testing.assert_allclose(states[2].hidden, h_full[0].numpy(), atol=1e-5)


def test_batch_waves_equal_scoring_one_event_at_a_time():
    scorer = Scorer(make_scoring(), ring_size=6, top_k=5)
    events = [ev for u in (1, 2, 3) for ev in events_for(u, 9)]
    random.Random(4).shuffle(events)  # users interleaved, and some late events per user
    seq_states, seq_preds = one_by_one(scorer, sorted(events, key=lambda e: e.ts))
    batch_states: dict = {}
    batch_preds = scorer.score_batch(batch_states, events)
    assert len(batch_preds) == len(events)
    assert [p.event for p in batch_preds] == events  # results come back in input order
    by_event = {p.event: p for p in seq_preds}
    for p in batch_preds:
        q = by_event[p.event]
        assert [i for i, _ in p.next_items] == [i for i, _ in q.next_items]
        assert p.next_action == pytest.approx(q.next_action, abs=1e-5)
    for u in (1, 2, 3):
        np.testing.assert_allclose(batch_states[u].hidden, seq_states[u].hidden, atol=1e-5)


def test_prediction_fields_and_known_items_only():
    scorer = Scorer(make_scoring(version=7), ring_size=6, top_k=5)
    pred = scorer.score_batch({}, events_for(5, 1))[0]
    msg = pred.to_message(123)
    assert msg["model_version"] == 7 and msg["produced_at"] == 123 and msg["user_id"] == 5
    assert set(msg["next_action"]) == set(ACTIONS)
    assert sum(msg["next_action"].values()) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= msg["churn_risk"] <= 1.0
    assert len(msg["next_items"]) == 5
    assert all(100 <= item < 150 for item, _ in msg["next_items"])
    scores = [s for _, s in msg["next_items"]]
    assert scores == sorted(scores, reverse=True)


def test_hot_swap_refreshes_old_hidden_states_from_the_ring():
    scorer = Scorer(make_scoring(version=1, seed=0), ring_size=6, top_k=5)
    events = events_for(9, 4)
    states, _ = one_by_one(scorer, events[:3])
    new = make_scoring(version=2, seed=1)
    scorer.swap(new)
    pred = scorer.score_batch(states, [events[3]])[0]
    assert pred.model_version == 2 and states[9].model_version == 2
    fresh, _ = one_by_one(Scorer(new, ring_size=6, top_k=5), events)
    np.testing.assert_allclose(states[9].hidden, fresh[9].hidden, atol=1e-5)


def test_redelivered_events_are_not_applied_twice():
    scorer = Scorer(make_scoring(), ring_size=6, top_k=5)
    events = events_for(3, 5)
    states, _ = one_by_one(scorer, events)
    before = states[3].hidden.copy()
    again = scorer.score_batch(states, events[-2:])  # e.g. after a crash before the commit
    assert again == [] and scorer.redeliveries == 2
    assert states[3].n_events == 5
    np.testing.assert_array_equal(states[3].hidden, before)


def test_predictions_carry_blended_interests_and_profiles_publish_on_material_change():
    from models.interests import InterestPolicy, changed_materially

    scorer = Scorer(make_scoring(version=4), ring_size=6, top_k=5,
                    interests=InterestPolicy(blend=0.3, publish_threshold=0.1))
    events = events_for(11, 30)
    states: dict = {}
    preds = [scorer.score_batch(states, [ev])[0] for ev in events]
    seen: set = set()
    published = None
    for ev, p in zip(events, preds):
        seen.add(ev.category_id)
        assert 1 <= len(p.interests) <= 5
        weights = [w for _, w in p.interests]
        assert weights == sorted(weights, reverse=True) and all(0 <= w <= 1 for w in weights)
        assert sum(weights) <= 1 + 1e-6
        assert all(c in range(10) for c, _ in p.interests)  # raw category ids, as sent
        assert p.to_message(0)["interests"] == p.interests
        # a profile goes out exactly when the top interests moved past the threshold
        assert (p.profile is not None) == changed_materially(published, p.interests, 0.1)
        if p.profile is not None:
            assert p.profile == {"user_id": 11, "interests": p.interests, "event_ts": ev.ts,
                                 "model_version": 4}
            published = p.interests
    assert preds[0].profile is not None  # the first interests are news
    assert 1 < sum(p.profile is not None for p in preds) < len(preds)
    assert states[11].profile_sent == published
    # own history only: every category the user ever had competes, the model adds none
    own = Scorer(make_scoring(), ring_size=6, top_k=5, interests=InterestPolicy(blend=0.0))
    last = [own.score_batch({}, [ev])[0] for ev in events[:1]][0]
    assert last.interests == [[events[0].category_id, 1.0]]


def test_events_without_categories_have_no_interests_and_publish_nothing():
    scorer = Scorer(make_scoring(), ring_size=6, top_k=5)
    events = [Event(12, 100 + i, "click", T0 + i * 1000, topic="click", offset=i) for i in range(4)]
    preds = scorer.score_batch({}, events)
    assert [p.interests for p in preds] == [[]] * 4
    assert all(p.profile is None for p in preds)
