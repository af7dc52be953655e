"""A shop with string SKUs end to end on one machine: dump -> reader -> train -> checkpoint ->
scorer (predictions answer SKUs), and the evaluation protocol on the same log."""
import dataclasses
import uuid

import numpy as np
import pytest

from models.checkpoint import checkpoint_bytes, checkpoint_from_bytes
from models.datasets.dump import write_jsonl
from models.datasets.reader import read_events
from models.evaluate.data import EventTable, build_eval_data
from models.evaluate.protocol import run_evaluation
from models.train.config import TrainConfig
from models.train.run import train_model
from stream.events import decode_event, encode_value, input_topic, user_key
from stream.scoring import Scorer, ScoringModel
from tests.unit.test_train import planted_events

pytestmark = pytest.mark.unit


def sku(item: int) -> str:
    return f"B0{item:08X}"  # "B000003E8": an Amazon-like SKU, never a canonical decimal


def user_of(u: int) -> str:
    # half the users are UUIDs, half numeric strings (which normalise to integers)
    return str(uuid.UUID(int=u + 1)) if u % 2 else str(541312140 + u)


def as_shop(events):
    return [dataclasses.replace(e, user_id=user_of(int(e.user_id)), item_id=sku(int(e.item_id)),
                                category_id=f"cat-{e.category_id}") for e in events]


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("shop") / "log.jsonl"
    write_jsonl(as_shop(planted_events(40, 25, seed=1, pairs=5)), path)
    return list(read_events(path, "jsonl", on_error="stop"))


def test_reader_normalises_numeric_user_strings(shop_log):
    users = {e.user_id for e in shop_log}
    assert {type(u) for u in users} == {int, str}
    assert 541312140 in users and all(type(e.item_id) is str for e in shop_log)


CFG = TrainConfig(epochs=2, batch=8, lr=2e-2, dropout=0.0, seed=0, progress=False, vocab_cutoff=None,
                  hidden=16, emb=16, ring=8, negatives=64, device="cpu")


def test_trained_string_catalogue_answers_skus_through_the_wire(shop_log):
    ck = checkpoint_from_bytes(_trained_bytes(shop_log), device="cpu")
    skus = {e.item_id for e in shop_log}
    assert set(ck.item_vocab.ids_of(np.arange(2, len(ck.item_vocab)))) <= skus
    scorer = Scorer(ScoringModel.from_checkpoint(ck), ring_size=8, top_k=5)
    user = shop_log[0].user_id
    # the events come in as a producer sends them (strings, numeric user as a string)
    wire = [decode_event(user_key(user), encode_value(dataclasses.replace(e, user_id=str(user))),
                         topic=input_topic(e.action)) for e in shop_log if e.user_id == user][:6]
    preds = scorer.score_batch({}, wire)
    assert len(preds) == 6 and all(p.user_id == user for p in preds)
    for p in preds:
        msg = p.to_message(0)
        assert len(msg["next_items"]) == 5
        assert all(type(i) is str and i in skus for i, _ in msg["next_items"]), msg["next_items"]
        assert type(msg["event"]["item_id"]) is str


def test_integer_catalogue_still_answers_integers():
    events = planted_events(20, 15, seed=3, pairs=5)
    ck = checkpoint_from_bytes(_trained_bytes(events), device="cpu")
    scorer = Scorer(ScoringModel.from_checkpoint(ck), ring_size=8, top_k=5)
    wire = [decode_event(user_key(e.user_id), encode_value(e), topic=input_topic(e.action))
            for e in events[:3]]
    for p in scorer.score_batch({}, wire):
        assert all(type(i) is int for i, _ in p.next_items)


def _trained_bytes(events) -> bytes:
    ck = train_model(events, CFG)
    return checkpoint_bytes(ck.model, ck.item_vocab, ck.category_vocab, version=1, meta={})


def test_evaluation_of_a_string_log_equals_the_integer_log():
    ints = planted_events(40, 25, seed=1, pairs=5)
    shop = as_shop(ints)
    for target in ("item", "category"):
        a, b = (build_eval_data(EventTable.from_events(log), target) for log in (ints, shop))
        assert (a.n_V, a.n_users, a.n_events, a.n_removed) == (b.n_V, b.n_users, b.n_events, b.n_removed)
        assert a.is_scored.sum() == b.is_scored.sum()
    ra, rb = run_evaluation(ints, "item"), run_evaluation(shop, "item")
    assert (ra["n"], ra["V"]) == (rb["n"], rb["V"])
    # the baselines see ids only as keys: a string catalogue scores the same as its integer twin
    for name in ("pop", "repeat", "item-knn"):
        assert rb["models"][name]["R@20"] == pytest.approx(ra["models"][name]["R@20"], abs=1e-9), name
