"""Log readers: every format on tiny files, bad rows with line numbers, skip vs stop."""
from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from models.datasets.common import BadRow, ErrorReport
from models.datasets.dump import write_jsonl, write_msgpack
from models.datasets.reader import read_events
from models.datasets.rees46 import session_id_from_string
from models.schema import ACTIONS, LogEvent

pytestmark = pytest.mark.unit

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_taobao_mapping_and_fav_flag(tmp_path):
    p = _write(
        tmp_path,
        "t.csv",
        "1,10,100,pv,1511848894\n1,11,100,cart,1511848900\n2,12,101,fav,1511848901\n2,12,101,buy,1511848902\n",
    )
    evs = list(read_events(p, "taobao"))
    assert [e.action for e in evs] == ["click", "cart", "click", "purchase"]
    assert [e.flag for e in evs] == [None, None, "fav", None]
    assert evs[0] == LogEvent(1, 10, "click", 1511848894000, category_id=100, row=0)
    assert [e.row for e in evs] == [0, 1, 2, 3]


def test_retailrocket(tmp_path):
    p = _write(
        tmp_path,
        "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n",
    )
    evs = list(read_events(p, "retailrocket"))
    assert [e.action for e in evs] == ["click", "cart", "purchase"]
    assert evs[0] == LogEvent(257597, 355908, "click", 1433221332117, category_id=None, row=0)
    assert evs[2].row == 2


def test_rees46_keeps_remove_from_cart_as_a_flagged_click(tmp_path):
    # EVALUATION.md keeps every action as an event; like Taobao's fav, it is a click with a flag
    p = _write(
        tmp_path,
        "r.csv",
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c\n"
        '2019-10-01 00:00:01 UTC,remove_from_cart,3900821,2053013552326770905,"appliances.environment.water_heater",aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\n'
        "2019-10-02 12:30:05 UTC,purchase,3900821,2053013552326770905,,aqua,33.20,554748717,\n",
    )
    report = ErrorReport()
    evs = list(read_events(p, "rees46", errors=report))
    assert [e.action for e in evs] == ["click", "click", "purchase"]
    assert [e.flag for e in evs] == [None, "remove_from_cart", None]
    assert evs[0].ts_ms == 1569888000000  # 2019-10-01T00:00:00Z
    assert evs[2].ts_ms == 1569888000000 + (86400 + 12 * 3600 + 30 * 60 + 5) * 1000
    assert evs[0].category_id == 2103807459595387724
    assert evs[1].category_id == 2053013552326770905
    assert evs[0].session_id == session_id_from_string("72d76fde-8bb3-4e00-8c23-a032dfed738c")
    assert evs[2].session_id is None
    assert [e.row for e in evs] == [0, 1, 2]
    assert report.count == 0


def test_otto(tmp_path):
    sessions = [
        {"session": 7, "events": [{"aid": 1, "ts": 1000, "type": "clicks"}, {"aid": 2, "ts": 2000, "type": "carts"}]},
        {"session": 8, "events": [{"aid": 3, "ts": 3000, "type": "orders"}]},
    ]
    p = _write(tmp_path, "o.jsonl", "".join(json.dumps(s) + "\n" for s in sessions))
    evs = list(read_events(p, "otto"))
    assert [(e.user_id, e.item_id, e.action, e.ts_ms, e.row) for e in evs] == [
        (7, 1, "click", 1000, 0),
        (7, 2, "cart", 2000, 1),
        (8, 3, "purchase", 3000, 2),
    ]
    assert all(e.category_id is None and e.session_id == e.user_id for e in evs)


def _sample_events() -> list[LogEvent]:
    return [
        LogEvent(1, 10, "click", 1000, category_id=5, session_id=3, row=0),
        LogEvent(1, 11, "cart", 2000, row=1),
        LogEvent(2, 12, "purchase", 3000, category_id=6, row=2, flag="fav"),
    ]


@pytest.mark.parametrize("fmt,writer", [("jsonl", write_jsonl), ("msgpack", write_msgpack)])
def test_dump_roundtrip(tmp_path, fmt, writer):
    p = tmp_path / f"dump.{fmt}"
    assert writer(_sample_events(), p) == 3
    assert list(read_events(p, fmt, on_error="stop")) == _sample_events()


def test_jsonl_optional_price_quantity(tmp_path):
    p = _write(tmp_path, "d.jsonl", '{"user_id":1,"item_id":2,"action":"purchase","ts":5,"price":9.5,"quantity":2}\n')
    assert list(read_events(p, "jsonl")) == [LogEvent(1, 2, "purchase", 5)]


def test_gzip_transparent(tmp_path):
    import gzip

    p = tmp_path / "t.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("1,10,100,pv,1\n")
    assert [e.item_id for e in read_events(p, "taobao")] == [10]


# ----------------------------------------------------------------------------- bad rows

BAD_FILES = {
    # fmt: (file content, expected bad line numbers, expected good rows)
    "taobao": ("1,10,100,pv,1\n1,,100,pv,2\n1,10,100,zz,3\n1,10\n1,11,100,buy,4\n", [2, 3, 4], [0, 4]),
    "retailrocket": (
        "timestamp,visitorid,event,itemid,transactionid\n1,1,view,5,\n2,1,jump,5,\n3,1,view,5\n4,1,view,6,\n",
        [3, 4],
        [0, 3],
    ),
    "rees46": (
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "2019-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s\n"
        "2019-13-01 00:00:00 UTC,view,1,2,,,1.0,3,s\n"
        "2019-10-01 00:00:00 UTC,view,,2,,,1.0,3,s\n"
        "2019-10-01 00:00:09 UTC,cart,1,2,,,1.0,3,s\n",
        [3, 4],
        [0, 3],
    ),
    "otto": (
        '{"session":1,"events":[{"aid":1,"ts":1,"type":"clicks"},{"aid":2,"ts":2,"type":"bogus"}]}\n'
        "not json\n"
        '{"session":2,"events":[{"aid":3,"ts":3,"type":"orders"}]}\n',
        [1, 2],
        [0, 3],
    ),
    "jsonl": (
        '{"user_id":1,"item_id":2,"action":"click","ts":1}\n'
        '{"user_id":1,"item_id":2,"action":"view","ts":1}\n'
        "{broken\n"
        '{"user_id":1,"item_id":2,"ts":1}\n'
        '{"user_id":1,"item_id":3,"action":"cart","ts":2}\n',
        [2, 3, 4],
        [0, 4],
    ),
}


@pytest.mark.parametrize("fmt", sorted(BAD_FILES))
def test_bad_rows_skip_reports_line_numbers(tmp_path, fmt):
    text, bad_lines, good_rows = BAD_FILES[fmt]
    p = _write(tmp_path, f"bad.{fmt}", text)
    report = ErrorReport()
    evs = list(read_events(p, fmt, on_error="skip", errors=report))
    assert [e.row for e in evs] == good_rows
    assert report.count == len(bad_lines)
    assert [int(m.split(":")[1]) for m in report.messages] == bad_lines
    assert all(m.startswith(f"{p}:") for m in report.messages)


@pytest.mark.parametrize("fmt", sorted(BAD_FILES))
def test_bad_rows_stop_raises_with_first_line(tmp_path, fmt):
    text, bad_lines, _ = BAD_FILES[fmt]
    p = _write(tmp_path, f"bad.{fmt}", text)
    with pytest.raises(BadRow) as exc:
        list(read_events(p, fmt, on_error="stop"))
    assert isinstance(exc.value, ValueError)
    assert exc.value.line == bad_lines[0]
    assert str(exc.value).startswith(f"{p}:{bad_lines[0]}: ")


def test_msgpack_bad_objects(tmp_path):
    p = tmp_path / "bad.msgpack"
    packer = msgpack.Packer()
    with open(p, "wb") as f:
        f.write(packer.pack({"user_id": 1, "item_id": 2, "action": "click", "ts": 1}))
        f.write(packer.pack([1, 2, 3]))
        f.write(packer.pack({"user_id": 1, "item_id": 3, "action": "buy", "ts": 2}))
        f.write(packer.pack({"user_id": 1, "item_id": 4, "action": "cart", "ts": 3}))
    report = ErrorReport()
    assert [e.item_id for e in read_events(p, "msgpack", errors=report)] == [2, 4]
    assert report.count == 2 and report.messages[0].startswith(f"{p}:2: ")
    with pytest.raises(BadRow, match=r":2: expected an object"):
        list(read_events(p, "msgpack", on_error="stop"))


def test_error_report_keeps_first_n(tmp_path):
    p = _write(tmp_path, "t.csv", "".join(f"1,,1,pv,{i}\n" for i in range(50)))
    report = ErrorReport(max_messages=3)
    assert list(read_events(p, "taobao", errors=report)) == []
    assert report.count == 50 and len(report.messages) == 3
    assert "and 47 more" in report.summary()


def test_bad_header_is_a_file_error(tmp_path):
    p = _write(tmp_path, "e.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="lacks column"):
        list(read_events(p, "retailrocket"))


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        list(read_events(tmp_path / "x", "parquet"))


def test_streaming_is_lazy(tmp_path):
    # A generator: nothing is read before iteration, and the first event comes before the end.
    p = _write(tmp_path, "t.csv", "1,10,100,pv,1\n" * 1000 + "bad\n")
    it = read_events(p, "taobao", on_error="stop")
    assert next(it).row == 0  # would have raised if the whole file were parsed eagerly


# ----------------------------------------------------------------------------- shared data


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")
def test_shared_data_files():
    report = ErrorReport()
    users = list(read_events(SHARED_DATA / "taobao_users.csv", "taobao", on_error="stop", errors=report))
    assert len(users) == 10_000 and report.count == 0
    assert len({e.user_id for e in users}) == 114
    assert sum(e.flag == "fav" for e in users) == 212
    counts = {a: sum(e.action == a for e in users) for a in ACTIONS}
    assert counts == {"click": 9046 + 212, "cart": 536, "purchase": 206}
    assert [e.row for e in users] == list(range(10_000))

    otto = list(read_events(SHARED_DATA / "otto_sessions.jsonl", "otto", on_error="stop"))
    assert len(otto) == 862 and len({e.user_id for e in otto}) == 20
    assert {a: sum(e.action == a for e in otto) for a in ACTIONS} == {"click": 800, "cart": 52, "purchase": 10}

    n = sum(1 for _ in read_events(SHARED_DATA / "taobao_timeslice.csv", "taobao", on_error="stop"))
    assert n == 110_300


# ------------------------------------------------------------------ ids as shops have them


def test_string_and_numeric_string_ids_in_every_csv_format(tmp_path):
    taobao = _write(tmp_path, "t.csv", "541312140,B07XJ8C8F5,shoes,pv,1511848894\n 7 , 007 ,3,buy,1511848895\n")
    assert [(e.user_id, e.item_id, e.category_id) for e in read_events(taobao, "taobao", on_error="stop")] == [
        (541312140, "B07XJ8C8F5", "shoes"), (7, "007", 3)]
    rr = _write(tmp_path, "r.csv", "timestamp,visitorid,event,itemid,transactionid\n"
                                   "1,9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b,view,B01N5IB20Q,\n")
    ev = next(read_events(rr, "retailrocket", on_error="stop"))
    assert (ev.user_id, ev.item_id) == ("9f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "B01N5IB20Q")
    rees = _write(tmp_path, "e.csv",
                  "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
                  "2019-10-01 00:00:00 UTC,view,SKU-1,2053013555631882655,,,1.0,u-9,s\n"
                  "2019-10-01 00:00:01 UTC,view,44600062,,,,1.0,541312140,s\n")
    assert [(e.user_id, e.item_id, e.category_id) for e in read_events(rees, "rees46", on_error="stop")] == [
        ("u-9", "SKU-1", 2053013555631882655), (541312140, 44600062, None)]


def test_string_ids_in_dumps_round_trip(tmp_path):
    events = [LogEvent("541312140", "B07XJ8C8F5", "click", 5, category_id="shoes"),
              LogEvent("u-1", 42, "cart", 6, category_id=3)]
    for fmt, writer in (("jsonl", write_jsonl), ("msgpack", write_msgpack)):
        p = tmp_path / f"d.{fmt}"
        writer(events, p)
        back = list(read_events(p, fmt, on_error="stop"))
        # "541312140" is normalised to the integer on the way back in: one id, one form
        assert [(e.user_id, e.item_id, e.category_id) for e in back] == [
            (541312140, "B07XJ8C8F5", "shoes"), ("u-1", 42, 3)]


@pytest.mark.parametrize("line,why", [
    ('{"user_id":"","item_id":2,"action":"click","ts":1}', "'user_id' is an empty string"),
    ('{"user_id":1,"item_id":true,"action":"click","ts":1}', "'item_id' must be an integer or a string"),
    ('{"user_id":1,"item_id":2.5,"action":"click","ts":1}', "'item_id' must be an integer or a string"),
    ('{"user_id":1,"item_id":[2],"action":"click","ts":1}', "'item_id' must be an integer or a string"),
    ('{"user_id":1,"item_id":"' + "x" * 129 + '","action":"click","ts":1}', "129 UTF-8 bytes"),
    ('{"user_id":1,"item_id":2,"category_id":{},"action":"click","ts":1}', "'category_id'"),
])
def test_malformed_ids_are_bad_rows_naming_the_field(tmp_path, line, why):
    p = _write(tmp_path, "bad.jsonl", line + "\n")
    with pytest.raises(BadRow, match=why.replace("[", r"\[")):
        list(read_events(p, "jsonl", on_error="stop"))
