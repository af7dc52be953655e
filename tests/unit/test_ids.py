"""Id normalisation (models/ids.py) and the labelled vocabulary (models/vocab.py), checkpoints
with string SKUs, and loading checkpoints written before string ids."""
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig, UNKNOWN
from models.gru import SeqModel
from models.ids import MAX_ID, BadId, IdLabels, id_key, normalize_id
from models.vocab import Vocab

pytestmark = pytest.mark.unit

SKUS = ["B07XJ8C8F5", "B01N5IB20Q", "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "0e8a4c1f-7d62-4b0e-9c3a-5f2d1e6b7a89", "007"]


@pytest.mark.parametrize("value,canonical", [
    (7, 7), ("7", 7), ("0", 0), ("541312140", 541312140), (str(MAX_ID), MAX_ID),
    ("007", "007"), ("00", "00"), ("-7", "-7"), ("+7", "+7"), (" 7", " 7"), ("7.0", "7.0"),
    ("1e3", "1e3"), ("٣", "٣"),  # Arabic-Indic digit: a string, not 3
    (str(MAX_ID + 1), str(MAX_ID + 1)),  # too big for an int id: an opaque code
    ("B07XJ8C8F5", "B07XJ8C8F5"),
])
def test_normalisation(value, canonical):
    got = normalize_id(value, "item_id")
    assert got == canonical and type(got) is type(canonical)


@pytest.mark.parametrize("value", ["", "x" * 129, "ü" * 65, True, 1.0, None, [], {}, b"7", -1,
                                   MAX_ID + 1, "\ud800"])
def test_malformed(value):
    with pytest.raises(BadId, match="'item_id'"):
        normalize_id(value, "item_id")


def test_keys_never_collide_with_integers_or_the_no_category_sentinel():
    keys = [id_key(s) for s in SKUS + [str(i) + "x" for i in range(5000)]]
    assert all(k <= -2 for k in keys) and len(set(keys)) == len(keys)
    assert id_key(5) == 5 and id_key(normalize_id("5", "x")) == 5


def test_labels_refuse_a_collision():
    labels = IdLabels()
    key = labels.key("B07XJ8C8F5")
    assert labels.ident(key) == "B07XJ8C8F5" and labels.ident(12) == 12
    with pytest.raises(ValueError, match="collision"):
        IdLabels([(key, "B07XJ8C8F5"), (key, "another")])


def test_vocab_of_strings_and_ints_answers_each_in_its_type():
    v = Vocab.of_ids(SKUS + [42], capacity=16)
    idx = v.index_ids(["B01N5IB20Q", 42, "42", "unknown-sku", "007", 7])
    assert idx.tolist() == [3, 7, 7, UNKNOWN, 6, UNKNOWN]
    assert v.ids_of(np.array([[2, 3], [7, 0]])) == [["B07XJ8C8F5", "B01N5IB20Q"], [42, -1]]
    back = Vocab.from_dict(v.to_dict())
    assert back.ids_of(np.arange(2, 8)) == SKUS + [42]


def test_vocab_needs_labels_for_string_keys():
    with pytest.raises(ValueError, match="no label"):
        Vocab([id_key("B07XJ8C8F5")], 4)
    with pytest.raises(ValueError, match="labels"):
        Vocab.from_parts(np.array([id_key("B07XJ8C8F5")]), 4, None)


def test_integer_vocab_is_unchanged():
    v = Vocab.build(np.array([5, 5, 9, 3]), 8)
    assert v.ids.tolist() == [5, 3, 9] and v.ids_of(np.array([2, 3, 4, 1])) == [5, 3, 9, -1]
    assert v.to_dict()["labels"] == []


def _model(n_items: int, n_cats: int) -> SeqModel:
    torch.manual_seed(0)
    return SeqModel(ModelConfig(n_items=n_items, n_categories=n_cats, hidden=8, emb=8, ring=4))


def test_checkpoint_round_trip_with_string_skus(tmp_path):
    items = Vocab.of_ids(SKUS + [541312140], 10)
    cats = Vocab.of_ids(["shoes", 3, "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"], 6)
    model = _model(len(items), len(cats))
    save_checkpoint(tmp_path / "m.pt", model, items, cats, version=3, meta={})
    cp = load_checkpoint(tmp_path / "m.pt", device="cpu")
    assert cp.item_vocab.ids_of(np.arange(2, len(items))) == SKUS + [541312140]
    assert cp.category_vocab.ids_of(np.arange(2, 5)) == ["shoes", 3, "9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"]
    assert cp.item_vocab.index_ids(["B07XJ8C8F5", "541312140"]).tolist() == [2, 7]


def test_checkpoint_written_before_string_ids_still_loads(tmp_path):
    # the format before this change: vocab blobs had no "labels" key
    path = tmp_path / "old.pt"
    model = _model(5, 3)
    save_checkpoint(path, model, Vocab([10, 20, 30], 5), Vocab([7], 3), version=2, meta={"a": 1})
    blob = torch.load(path, weights_only=True)
    for name in ("item_vocab", "category_vocab"):
        del blob[name]["labels"]
    torch.save(blob, path)
    cp = load_checkpoint(path, device="cpu")
    assert cp.item_vocab.ids_of(np.array([2, 3, 4])) == [10, 20, 30]
    assert cp.item_vocab.index_ids([20, "20", "B07"]).tolist() == [3, 3, UNKNOWN]
    assert cp.version == 2 and cp.category_vocab.ids.tolist() == [7]
