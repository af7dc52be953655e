"""The spine end to end on the real broker: kafka-python in, a `seqstream worker` process in the
middle, kafka-python out. One prediction per valid event, every bad one in dead-letter with its
reason, and user state that survives a restart (recovered from the changelog)."""
from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaProducer

from models.schema import ACTIONS, LogEvent
from stream.events import MAX_VALUE_BYTES, Reason, encode_value, input_topic, user_key
from tests.integration.workers import (WorkerProcess, consume_until, send_events,
                                       untrained_checkpoint)

T0 = 1_700_000_000_000
N_USERS, N_ITEMS = 40, 200


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", N_ITEMS, 10,
                                version=3)


def make_events(n: int, seed: int = 0) -> list[LogEvent]:
    rng = random.Random(seed)
    clock = {u: T0 + u * 1000 for u in range(N_USERS)}
    out = []
    for _ in range(n):
        u = rng.randrange(N_USERS)
        clock[u] += rng.randint(1, 300) * 1000
        out.append(LogEvent(u, rng.randrange(N_ITEMS), rng.choice(ACTIONS), clock[u],
                            category_id=rng.randrange(10)))
    return out


def malformed_corpus() -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(action topic, key, value, expected reason)."""
    ok = {"user_id": 5, "item_id": 1, "ts": T0}
    pack = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    return [
        ("click", b"5", b"\xc1\xc1garbage", Reason.NOT_MSGPACK),
        ("cart", b"5", pack(["not", "a", "map"]), Reason.NOT_A_MAP),
        ("purchase", b"5", pack({"user_id": 5, "ts": T0}), Reason.MISSING_FIELD),
        ("click", b"5", pack({**ok, "item_id": ""}), Reason.BAD_TYPE),
        ("click", b"5", pack({**ok, "ts": -1}), Reason.BAD_TIMESTAMP),
        ("cart", b"5", pack({**ok, "ts": 99_999_999_999_999}), Reason.BAD_TIMESTAMP),
        ("click", b"5", pack({**ok, "blob": "x" * (MAX_VALUE_BYTES + 10)}), Reason.OVERSIZED),
        ("purchase", b"6", pack(ok), Reason.KEY_MISMATCH),
        ("click", None, pack(ok), Reason.KEY_MISMATCH),
    ]


def check_profiles(bootstrap: str, settings, msgs: list[dict]) -> None:
    """The compacted `profiles` topic, read by a plain kafka-python consumer as a downstream
    system would: one profile per material change, the newest per user still current."""
    from kafka import KafkaConsumer

    from models.interests import changed_materially

    consumer = KafkaConsumer(settings.profiles_topic, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=5000)
    records = list(consumer)
    consumer.close()
    profiles = [msgpack.unpackb(r.value, raw=False) for r in records]
    users = {m["user_id"] for m in msgs}
    assert len(users) <= len(profiles) < len(msgs)  # the first interests, then only changes
    newest: dict = {}
    for rec, p in zip(records, profiles):
        assert rec.key == user_key(p["user_id"])
        assert set(p) == {"user_id", "interests", "event_ts", "model_version"}
        assert p["model_version"] == 3 and 1 <= len(p["interests"]) <= 5
        assert all(0 <= w <= 1 for _, w in p["interests"])
        newest[p["user_id"]] = p  # one partition per user: in order
    assert set(newest) == users
    final, newest_ts = {}, {}
    for m in msgs:  # a user's predictions are in one partition: consumed in scoring order
        final[m["user_id"]] = m
        newest_ts[m["user_id"]] = max(newest_ts.get(m["user_id"], 0), m["event"]["ts"])
    for u, m in final.items():
        assert 1 <= len(m["interests"]) <= 5
        # no material change since the newest profile, or a newer one would have gone out
        assert not changed_materially(newest[u]["interests"], m["interests"], settings.profiles_threshold)
        assert newest[u]["event_ts"] <= newest_ts[u]  # as of the newest event time it had seen


def test_predictions_dead_letters_and_state_across_restart(kafka_bootstrap, deployment, checkpoint,
                                                          tmp_path):
    settings = deployment
    events = make_events(300)
    corpus = malformed_corpus()
    worker = WorkerProcess(settings, checkpoint, tmp_path / "state-a", tmp_path / "worker.log")
    try:
        # valid and malformed messages interleaved on all three topics
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        bad_iter = iter(corpus)
        for i, ev in enumerate(events):
            producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                          value=encode_value(ev))
            if i % 30 == 0:
                bad = next(bad_iter, None)
                if bad:
                    producer.send(settings.topic(bad[0]), key=bad[1], value=bad[2])
        for bad in bad_iter:
            producer.send(settings.topic(bad[0]), key=bad[1], value=bad[2])
        producer.flush(30)
        producer.close()

        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(events), 120, [worker])
        dead = consume_until(kafka_bootstrap, settings.dead_letter_topic, len(corpus), 30, [worker])

        # exactly one prediction per valid event, keyed by its user
        assert len(preds) == len(events), worker.tail()
        msgs = [msgpack.unpackb(r.value, raw=False) for r in preds]
        sources = {(m["event"]["topic"], m["event"]["partition"], m["event"]["offset"]) for m in msgs}
        assert len(sources) == len(events)
        for rec, m in zip(preds, msgs):
            assert rec.key == user_key(m["user_id"])
            assert set(m) >= {"user_id", "event", "model_version", "next_action", "next_items",
                              "churn_risk", "produced_at"}
            assert m["model_version"] == 3
            assert len(m["next_items"]) == 20
            assert abs(sum(m["next_action"].values()) - 1) < 1e-3
        sent = sorted((e.user_id, e.item_id, e.ts_ms) for e in events)
        got = sorted((m["user_id"], m["event"]["item_id"], m["event"]["ts"]) for m in msgs)
        assert got == sent

        # every bad message is in dead-letter with the right reason and its original bytes
        assert len(dead) == len(corpus)
        reasons = sorted(msgpack.unpackb(r.value, raw=False)["reason"] for r in dead)
        assert reasons == sorted(c[3] for c in corpus)
        originals = {msgpack.unpackb(r.value, raw=False)["value"] for r in dead}
        assert originals == {c[2] for c in corpus}

        # per user, the last prediction counts all of that user's events
        count = {u: sum(e.user_id == u for e in events) for u in range(N_USERS)}
        last = {}
        for m in msgs:
            last[m["user_id"]] = max(last.get(m["user_id"], 0), m["user_events"])
        assert last == {u: c for u, c in count.items() if c}
        check_profiles(kafka_bootstrap, settings, msgs)
    finally:
        worker.stop()

    # Restart with an EMPTY data dir: state must come back from the changelog, not reset.
    user = max(count, key=count.get)
    worker = WorkerProcess(settings, checkpoint, tmp_path / "state-b", tmp_path / "worker2.log")
    try:
        later = LogEvent(user, 1, "cart", T0 + 10**9, category_id=1)
        send_events(kafka_bootstrap, settings, [later])
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(events) + 1, 120, [worker])
        assert len(preds) == len(events) + 1, worker.tail()
        [newest] = [m for m in map(lambda r: msgpack.unpackb(r.value, raw=False), preds)
                    if m["event"]["ts"] == later.ts_ms]
        assert newest["user_id"] == user
        assert newest["user_events"] == count[user] + 1
    finally:
        worker.stop()
