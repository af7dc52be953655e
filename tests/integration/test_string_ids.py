"""Ids as shops have them, on the real broker: a worker whose model was trained on string SKUs
receives events with string item ids and numeric-string / UUID user ids (as a shop's producer
sends them), and answers predictions naming string SKUs. Judged by an independent kafka-python
consumer; malformed ids go to dead-letter as bad-type."""
from __future__ import annotations

import random
import uuid
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaProducer

from stream.events import Reason, input_topic
from tests.integration.workers import WorkerProcess, consume_until

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
SKUS = [f"B0{n:08X}" for n in range(60)] + [str(uuid.UUID(int=n + 7)) for n in range(20)]
NUMERIC_USERS = [str(541312140 + n) for n in range(6)]  # sent as strings, normalised to ints
UUID_USERS = [str(uuid.UUID(int=10**6 + n)) for n in range(6)]


def sku_checkpoint(path: Path) -> Path:
    """An untrained model whose catalogue is string SKUs (the pipeline is tested, not quality)."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.config import ModelConfig
    from models.gru import SeqModel
    from models.vocab import Vocab

    torch.manual_seed(0)
    items = Vocab.of_ids(SKUS, len(SKUS) + 2)
    cats = Vocab.of_ids(["shoes", "hats", "bags"], 5)
    model = SeqModel(ModelConfig(n_items=len(items), n_categories=len(cats), hidden=32, emb=16,
                                 dropout=0.0)).eval()
    model.set_valid(len(items), len(cats))
    save_checkpoint(path, model, items, cats, version=4, meta={"test": True})
    return path


def shop_messages(n: int, seed: int = 0) -> list[tuple[str, bytes, dict]]:
    """(action, key, value map) as a shop's producer would send them: every id a string."""
    rng = random.Random(seed)
    users = NUMERIC_USERS + UUID_USERS
    clock = {u: T0 + i * 1000 for i, u in enumerate(users)}
    out = []
    for _ in range(n):
        u = rng.choice(users)
        clock[u] += rng.randint(1, 300) * 1000
        body = {"user_id": u, "item_id": rng.choice(SKUS + ["B0NEWITEM1"]), "ts": clock[u],
                "category_id": rng.choice(["shoes", "hats", "bags", "new-cat"])}
        out.append((rng.choice(("click", "cart", "purchase")), u.encode(), body))
    return out


def test_string_sku_worker_answers_string_items(kafka_bootstrap, deployment, tmp_path):
    settings = deployment
    model = sku_checkpoint(tmp_path / "sku.pt")
    messages = shop_messages(120)
    malformed = [({"user_id": "", "item_id": "B0", "ts": T0}, b"", "'user_id'"),
                 ({"user_id": "u", "item_id": "x" * 129, "ts": T0}, b"u", "'item_id'"),
                 ({"user_id": "u", "item_id": 1.5, "ts": T0}, b"u", "'item_id'")]
    worker = WorkerProcess(settings, model, tmp_path / "state", tmp_path / "worker.log")
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        for action, key, body in messages:
            producer.send(input_topic(action, settings.prefix), key=key,
                          value=msgpack.packb(body, use_bin_type=True))
        for body, key, _ in malformed:
            producer.send(settings.topic("click"), key=key, value=msgpack.packb(body, use_bin_type=True))
        producer.flush(30)
        producer.close()
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(messages), 120, [worker])
        dead = consume_until(kafka_bootstrap, settings.dead_letter_topic, len(malformed), 30, [worker])
    finally:
        worker.stop()

    assert len(preds) == len(messages), worker.tail()
    sent_users = {m[1] for m in messages}
    catalogue = set(SKUS)
    per_user: dict[bytes, int] = {}
    for rec in preds:
        msg = msgpack.unpackb(rec.value, raw=False)
        assert rec.key in sent_users  # keyed by the user as the shop keyed it
        user = rec.key.decode()
        # a numeric string user is the integer id; a UUID stays its string
        assert msg["user_id"] == (int(user) if user in NUMERIC_USERS else user)
        assert type(msg["event"]["item_id"]) is str
        items = [item for item, _ in msg["next_items"]]
        assert len(items) == 20 and all(type(i) is str and i in catalogue for i in items), items
        per_user[rec.key] = per_user.get(rec.key, 0) + 1
        assert msg["user_events"] == per_user[rec.key]  # one state per user, whatever the id type
    reasons = [msgpack.unpackb(r.value, raw=False) for r in dead]
    assert len(reasons) == len(malformed)
    assert all(d["reason"] == Reason.BAD_TYPE for d in reasons)
    assert sorted(d["detail"].split()[1] for d in reasons) == sorted(m[2] for m in malformed)
