"""`generate --anomalies N`: labelled bots, brushing and bursts; without it, the same log."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.synthetic import CART, CLICK, PURCHASE, GeneratorConfig, SyntheticLog, generate
from models.synthetic_anomalies import inject_anomalies
from stream.cli.main import main

pytestmark = pytest.mark.unit

CFG = GeneratorConfig(users=300, events=30_000, items=3_000, categories=60, seed=5)
N = 6


@pytest.fixture(scope="module")
def plain() -> SyntheticLog:
    return generate(CFG)


@pytest.fixture(scope="module")
def mixed(plain: SyntheticLog) -> SyntheticLog:
    return inject_anomalies(plain, N)


def _rows(log: SyntheticLog, user: int) -> dict[str, np.ndarray]:
    m = log.user_id == user
    return {"item": log.item_id[m], "action": log.action[m], "ts": log.ts_ms[m]}


def test_labels_per_kind(plain: SyntheticLog, mixed: SyntheticLog) -> None:
    users = mixed.anomalies["users"]
    kinds = sorted(users.values())
    assert kinds == sorted(["bot"] * N + ["brushing"] * N + ["burst"] * N)
    new = {int(u) for u, k in users.items() if k in ("bot", "brushing")}
    assert min(new) > plain.user_id.max()  # fresh users
    bursts = {int(u) for u, k in users.items() if k == "burst"}
    assert bursts <= set(plain.user_id.tolist())  # existing users
    truth = json.loads(json.dumps(mixed.truth()))
    assert truth["anomalies"]["users"] == users and len(truth["anomalies"]["episodes"]) == 3 * N


def test_bot_pattern(mixed: SyntheticLog) -> None:
    for u, kind in mixed.anomalies["users"].items():
        if kind != "bot":
            continue
        r = _rows(mixed, int(u))
        gaps = np.diff(r["ts"])
        assert len(r["ts"]) >= 60 and np.median(gaps) < 1000  # sub-second
        assert gaps.std() / gaps.mean() < 0.1  # regular
        assert len(np.unique(r["item"])) == len(r["item"])  # all distinct
        assert (r["action"] == CLICK).all()


def test_brushing_pattern(mixed: SyntheticLog) -> None:
    for ep in mixed.anomalies["episodes"]:
        if ep["kind"] != "brushing":
            continue
        r = _rows(mixed, ep["user_id"])
        on_item = r["item"] == ep["item_id"]
        assert (r["action"][~on_item] == CLICK).all() and (~on_item).sum() <= 4
        assert (r["action"][on_item] == PURCHASE).sum() >= 2
        assert (r["action"][on_item] == CART).sum() >= 2


def test_burst_pattern(plain: SyntheticLog, mixed: SyntheticLog) -> None:
    for ep in mixed.anomalies["episodes"]:
        if ep["kind"] != "burst":
            continue
        before = _rows(plain, ep["user_id"])
        after = _rows(mixed, ep["user_id"])
        added = len(after["ts"]) - len(before["ts"])
        assert 40 <= added <= 80
        inside = (after["ts"] >= ep["start_ts"]) & (after["ts"] <= ep["end_ts"])
        rate = inside.sum() / max(ep["end_ts"] - ep["start_ts"], 1)
        own = len(before["ts"]) / (before["ts"][-1] - before["ts"][0])
        assert rate > 10 * own
        assert np.all(np.diff(after["ts"]) >= 0)


def test_normal_rows_untouched_and_log_sorted(plain: SyntheticLog, mixed: SyntheticLog) -> None:
    order = np.lexsort((mixed.user_id, mixed.ts_ms))
    assert np.array_equal(order, np.arange(len(mixed)))
    labelled = [e["user_id"] for e in mixed.anomalies["episodes"]]
    added = sum(len(e_rows["ts"]) for e_rows in (_rows(mixed, u) for u in labelled)) - sum(
        len(_rows(plain, u)["ts"]) for u in labelled)
    assert len(mixed) == len(plain) + added
    # everybody else is exactly the plain log, row for row
    others = ~np.isin(mixed.user_id, labelled)
    keep = ~np.isin(plain.user_id, labelled)
    for col in ("user_id", "item_id", "ts_ms", "action", "category_id", "session_id"):
        assert np.array_equal(getattr(mixed, col)[others], getattr(plain, col)[keep])
    assert inject_anomalies(plain, 0) is plain


def test_cli_without_the_flag_writes_the_same_bytes(tmp_path, plain: SyntheticLog) -> None:
    from stream.generate import write_log

    args = ["generate", "--users", "300", "--events", "30000", "--items", "3000",
            "--categories", "60", "--seed", "5", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    write_log(plain, tmp_path / "b.jsonl", progress=False)
    plain.write_truth(tmp_path / "b.jsonl.truth.json")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    truth = (tmp_path / "a.jsonl.truth.json").read_bytes()
    assert truth == (tmp_path / "b.jsonl.truth.json").read_bytes()
    assert b"anomalies" not in truth
    assert main([*args, "--anomalies", "3", "--out", str(tmp_path / "c.jsonl")]) == 0
    labelled = json.loads((tmp_path / "c.jsonl.truth.json").read_text())["anomalies"]
    assert sorted(labelled["users"].values()) == ["bot"] * 3 + ["brushing"] * 3 + ["burst"] * 3
    assert (tmp_path / "c.jsonl").stat().st_size > (tmp_path / "a.jsonl").stat().st_size
