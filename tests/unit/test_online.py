"""Online learning, pure parts: samples, replay, the learner's rounds and promotion gate, the
model-updates message protocol (chunks, manifests, compaction), and the capture hook."""
from __future__ import annotations

import asyncio
import random

import msgpack
import numpy as np
import pytest
import torch

from models.config import ModelConfig
from models.gru import SeqModel
from models.vocab import Vocab
from models.checkpoint import checkpoint_bytes, checkpoint_from_bytes
from models.online.learner import OnlineConfig, OnlineLearner, promotion_decision
from models.online.samples import ReplayBuffer, Sample, decode_sample, encode_sample
from models.schema import ACTIONS
from stream.events import Event, Prediction
from stream.online.capture import SampleCapture, sample_from_state
from stream.online.settings import OnlineSettings
from stream.online.versions import CHUNK_BYTES, MAX_MESSAGE_BYTES, VersionStore, version_messages
from stream.state import RingEntry, UserState, insert_event

torch.set_num_threads(2)
T0 = 1_700_000_000_000
N_ITEMS = 60


def tiny_model(seed: int = 0) -> tuple[SeqModel, Vocab, Vocab]:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_items=N_ITEMS + 2, n_categories=8, hidden=16, emb=16, ring=10, dropout=0.0,
                      attn=16)
    model = SeqModel(cfg).eval()
    items, cats = Vocab(np.arange(N_ITEMS), N_ITEMS + 2), Vocab(np.arange(6), 8)
    model.set_valid(len(items), len(cats))
    return model, items, cats


def hot_samples(n: int, seed: int, hot: range = range(50, 55), ring: int = 10) -> list[Sample]:
    """Users browse random items 0..39; the NEXT item is one of a few "hot" items (a trend a
    model learns in a few steps)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(2, ring)
        items = [rng.randrange(40) for _ in range(L - 1)] + [rng.choice(hot)]
        ts = [T0 + 30_000 * k for k in range(L)]
        out.append(decode_sample(encode_sample(rng.randrange(100), items, [i % 6 for i in items],
                                               [0] * L, ts)))
    return out


def test_sample_roundtrip_and_bounds():
    data = encode_sample(7, [1, 2, 3], [0, -1, 2], [0, 1, 2], [T0, T0 + 5, T0 + 9], model_version=4)
    s = decode_sample(data)
    assert (s.user_id, s.items, s.categories, s.actions, s.ts_ms, s.model_version) == \
        (7, (1, 2, 3), (0, -1, 2), (0, 1, 2), (T0, T0 + 5, T0 + 9), 4)
    assert s.gap_s == pytest.approx(0.004)
    assert len(encode_sample(1, list(range(50)), [1] * 50, [0] * 50, [T0 + i for i in range(50)])) < 400
    for bad in (b"\xc1junk", msgpack.packb([1, 2]), msgpack.packb({"f": 1, "u": 1}),
                encode_sample(1, [1], [1], [0], [T0]),  # no context
                encode_sample(1, [1, 2], [1, 1], [0, 7], [T0, T0 + 1]),  # bad action
                encode_sample(1, [1, 2], [1, 1], [0, 0], [T0, T0 - 5])):  # out of order
        with pytest.raises(ValueError):
            decode_sample(bad)


def test_sample_from_state_context_and_target():
    st = UserState(user_id=3)
    for k in range(5):
        insert_event(st, RingEntry(10 + k, 1, k % 3, T0 + k * 1000), ring_size=4)
    s = decode_sample(sample_from_state(st))
    assert s.items == (11, 12, 13, 14)  # bounded by the ring: <= L events
    assert s.items[-1] == 14 and s.actions[-1] == 4 % 3
    assert decode_sample(sample_from_state(st, upto=2)).items == (11, 12, 13)
    assert sample_from_state(UserState(user_id=1, ring=[RingEntry(1, 1, 0, T0)])) is None


def test_capture_hook_one_sample_per_in_order_prediction():
    st = UserState(user_id=5)
    preds = []

    def pred(ts, item, late=False):
        ev = Event(user_id=5, item_id=item, action="click", ts=ts, topic="click", partition=0, offset=0)
        return Prediction(5, ev, 1, {a: 1 / 3 for a in ACTIONS}, [], 0.0, late, 0)

    for k, ts in enumerate([T0, T0 + 1000, T0 + 2000]):
        insert_event(st, RingEntry(k, 1, 0, ts), ring_size=10)
        preds.append(pred(ts, k))
    insert_event(st, RingEntry(9, 1, 0, T0 + 500), ring_size=10)  # a late one
    preds.append(pred(T0 + 500, 9, late=True))
    sent = []

    async def send(key, value):
        sent.append((key, value))

    cap = SampleCapture(send)
    asyncio.run(cap({5: st}, preds))
    assert [k for k, _ in sent] == [b"5", b"5"]  # first event: no context; late: skipped
    targets = [decode_sample(v) for _, v in sent]
    assert [s.items for s in targets] == [(0, 9, 1), (0, 9, 1, 2)]  # event-time context
    assert cap.metrics.samples == 2 and cap.metrics.skipped == 2


def test_replay_buffer_bounded_fifo():
    rb = ReplayBuffer(5, seed=1)
    rb.add_many(range(12))  # type: ignore[arg-type]
    assert len(rb) == 5
    assert set(rb.sample(200)) == {7, 8, 9, 10, 11}
    assert ReplayBuffer(0).sample(3) == []


def test_promotion_decision_margin():
    serv = {"n_items": 100, "hr@20": 0.50, "mrr@20": 0.20, "action_logloss": 0.60}
    ok = {"n_items": 100, "hr@20": 0.495, "mrr@20": 0.199, "action_logloss": 0.605}
    assert promotion_decision(ok, serv, margin=0.02, min_eval=30)[0] is True
    bad = {**ok, "hr@20": 0.40}
    assert promotion_decision(bad, serv, margin=0.02, min_eval=30)[0] is False
    assert promotion_decision({**ok, "action_logloss": 0.9}, serv, margin=0.02, min_eval=30)[0] is False
    assert promotion_decision({**ok, "n_items": 10}, serv, margin=0.02, min_eval=30)[0] is None


def test_learner_learns_and_promotes_prequentially():
    model, items, cats = tiny_model()
    cfg = OnlineConfig(lr=1e-2, batch=64, max_steps=10, negatives=32, min_eval=20, device="cpu")
    learner = OnlineLearner(model, items, cats, version=3, config=cfg)
    before = learner.evaluate(hot_samples(300, seed=99))
    reports = [learner.learn_many(hot_samples(200, seed=s)) for s in range(5)]
    assert reports[0].decision == "untrained"
    promoted = [r for r in reports if r.promoted]
    assert promoted and promoted[0].version == 4 and promoted[0].parent == 3
    assert learner.version == 3 + len(promoted)
    after = learner.evaluate(hot_samples(300, seed=99))
    assert after["hr@20"] > before["hr@20"] + 0.3, (before, after)
    assert after["hr@20"] == pytest.approx(reports[-1].serving["hr@20"], abs=0.15)
    # the caller's model object is untouched (the learner works on copies)
    assert all(p.grad is None for p in model.parameters())


def test_harmful_update_is_not_promoted():
    model, items, cats = tiny_model()
    cfg = OnlineConfig(lr=2e-2, batch=64, max_steps=20, negatives=32, min_eval=20, device="cpu",
                       reset_after=2, replay_ratio=0.0)
    learner = OnlineLearner(model, items, cats, version=1, config=cfg)
    for s in range(4):
        learner.learn_many(hot_samples(200, seed=s))
    assert learner.version > 1
    # one burst of corrupted samples (wrong targets): evaluated as held-back, then trained on
    learner.learn_many(hot_samples(600, seed=50, hot=range(20, 25)))
    before_poison = learner.version
    clean = learner.learn_many(hot_samples(200, seed=77))
    assert clean.decision == "rejected", clean.to_dict()
    assert clean.candidate["mrr@20"] < clean.serving["mrr@20"]
    assert learner.version == before_poison  # the poisoned candidate never served
    # a second rejection in a row resets the candidate to the serving weights
    again = learner.learn_many(hot_samples(200, seed=78))
    if again.decision == "rejected":
        assert "reset" in again.reason and learner.rejections == 0


def test_frozen_learner_does_not_train():
    model, items, cats = tiny_model()
    learner = OnlineLearner(model, items, cats, version=1, config=OnlineConfig(train=False, device="cpu"))
    w = model.item_bias.detach().clone()
    for s in range(2):
        r = learner.learn_many(hot_samples(100, seed=s))
        assert r.decision == "untrained" and r.steps == 0
    assert torch.equal(learner.serving.item_bias.cpu(), w)


def test_unknown_targets_are_not_scored_or_trained():
    model, items, cats = tiny_model()
    learner = OnlineLearner(model, items, cats, version=1, config=OnlineConfig(device="cpu"))
    s = decode_sample(encode_sample(1, [1, 2, 10_000], [1, 1, 1], [0, 0, 0], [T0, T0 + 1, T0 + 2]))
    m = learner.evaluate([s])
    assert m["n"] == 1 and m["n_items"] == 0


def test_checkpoint_bytes_roundtrip():
    model, items, cats = tiny_model()
    blob = checkpoint_bytes(model, items, cats, version=9, meta={"x": 1})
    ck = checkpoint_from_bytes(blob, device="cpu")
    assert ck.version == 9 and ck.meta == {"x": 1}
    assert torch.equal(ck.model.item_bias, model.item_bias)
    assert list(ck.item_vocab.ids) == list(items.ids)


def test_version_messages_chunked_and_store_assembles():
    blob = np.random.default_rng(0).bytes(3 * CHUNK_BYTES + 123)
    msgs = version_messages(7, blob, {"parent": 6, "source": "online"})
    assert len(msgs) == 4 + 2  # 4 chunks, manifest, head
    assert all(len(v) <= MAX_MESSAGE_BYTES for _, v in msgs)
    assert msgs[-2][0] == b"v/0000000007/manifest" and msgs[-1][0] == b"head"
    store = VersionStore()
    for k, v in msgs[:-2]:
        store.apply(k, v)
    assert store.latest_complete() is None  # no manifest yet: not complete
    for k, v in msgs[-2:]:
        store.apply(k, v)
    assert store.latest_complete() == 7 and store.assemble(7) == blob and store.head == 7
    # a half-published v8 never hides v7; compaction (latest value per key) keeps v7 intact
    v8 = version_messages(8, blob[::-1], {"parent": 7})
    for k, v in v8[:2]:
        store.apply(k, v)
    store.apply(v8[-2][0], v8[-2][1])  # manifest without all chunks
    assert store.latest_complete() == 7
    compacted: dict[bytes, bytes] = {}
    for k, v in msgs + v8[:2] + [v8[-2]]:
        compacted[k] = v
    again = VersionStore()
    for k, v in compacted.items():
        again.apply(k, v)
    assert again.latest_complete() == 7
    # tombstones delete old weights: the manifest stays (history), the weights are gone
    for k, _ in msgs[:-2]:
        again.apply(k, None)
    assert not again.has_weights(7) and 7 in again.manifests
    # a corrupted chunk fails the hash check
    bad = VersionStore()
    for k, v in msgs:
        if k.endswith(b"chunk/000001"):
            v = msgpack.packb({"version": 7, "i": 1, "data": b"x" * 10}, use_bin_type=True)
        bad.apply(k, v)
    assert bad.latest_complete() is None
    bad.apply(b"v/xx/manifest", b"junk")  # ignored, counted
    assert bad.bad == 1


def test_online_settings_from_env():
    s = OnlineSettings.from_settings(None, env={"SEQSTREAM_ONLINE": "0", "SEQSTREAM_ONLINE_EVERY_N": "50",
                                                "SEQSTREAM_ONLINE_TRAINER": "external"})
    assert (s.enabled, s.every_n, s.trainer) == (False, 50, "external")
    assert OnlineSettings.from_settings(None, env={}).enabled is True

    class Lead:  # a Settings with the lead's optional fields wins over the environment
        online = False
        online_every_s = 5.0

    s = OnlineSettings.from_settings(Lead(), env={"SEQSTREAM_ONLINE": "1"})
    assert (s.enabled, s.every_s) == (False, 5.0)
    with pytest.raises(ValueError):
        OnlineSettings.from_settings(None, env={"SEQSTREAM_ONLINE_TRAINER": "nope"})


def test_capture_matches_string_item_ids_and_keeps_string_users():
    from models.ids import id_key

    user = "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    st = UserState(user_id=user)
    preds = []
    for k, (ts, sku) in enumerate([(T0, "B07XJ8C8F5"), (T0 + 1000, "B01N5IB20Q")]):
        insert_event(st, RingEntry(id_key(sku), -1, 0, ts), ring_size=10)  # what the scorer stores
        ev = Event(user_id=user, item_id=sku, action="click", ts=ts, topic="click", offset=k)
        preds.append(Prediction(user, ev, 1, {a: 1 / 3 for a in ACTIONS}, [], 0.0, False, k + 1))
    sent = []

    async def send(key, value):
        sent.append((key, value))

    asyncio.run(SampleCapture(send)({user: st}, preds))
    assert [k for k, _ in sent] == [user.encode()]
    sample = decode_sample(sent[0][1])
    assert sample.user_id == user and sample.items == (id_key("B07XJ8C8F5"), id_key("B01N5IB20Q"))
