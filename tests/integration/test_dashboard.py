"""The dashboard in a real browser: a `seqstream worker` with its web server on (and a token),
a few hundred events (some malformed) sent with kafka-python, and the page loaded in headless
Chromium (Debian's /usr/bin/chromium, driven by Selenium through Debian's chromedriver). What the
page shows must be what /metrics says, and /metrics what an independent consumer saw.

Set SEQSTREAM_SCREENSHOT=path to also save a screenshot of the page with live traffic (that is
how docs/dashboard.png is made); without it the test writes nothing outside its temp dir.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import msgpack
import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.schema import ACTIONS, LogEvent
from stream.broker.process import free_port
from stream.events import Reason, encode_value, input_topic, user_key
from tests.integration.workers import WorkerProcess, consume_until, untrained_checkpoint

CHROMIUM = os.environ.get("SEQSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SEQSTREAM_CHROMEDRIVER", "/usr/bin/chromedriver")


def _no_browser() -> str:
    """Why the browser test cannot run here ("" when it can); checked before any broker starts."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (f"no headless Chromium ({', '.join(missing)} missing): install Debian's chromium "
                "and chromium-driver (deploy/setup.sh does, as root)")
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -e '.[test]'"
    return ""


pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(_no_browser()), reason=_no_browser() or "-")]
N_USERS, N_ITEMS, N_EVENTS = 60, 200, 300
MODEL_VERSION = 3
TOKEN = "dash-test-token-7f3a"
LABELS = ("topic", "partition", "reason", "result", "kind")  # the page's data-<label> attributes


# ------------------------------------------------------------------ inputs

QUIET = range(8)  # users who stop early: churn alerts (the worker alerts after 30 s event time)
WORKER_ARGS = ("--churn-inactivity-ms", "30000", "--allowed-lateness-ms", "5000", "--churn-sweep-s", "1")


def make_events(n: int, seed: int = 0) -> list[LogEvent]:
    """About four minutes of event time, an hour ago (a plausible backfill lag); the QUIET users
    only in its first third, the others at random (their gaps give alerts and returns too)."""
    rng = random.Random(seed)
    t = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(n):
        t += rng.randint(200, 1500)
        u = rng.randrange(N_USERS) if i < n // 3 else rng.randrange(len(QUIET), N_USERS)
        out.append(LogEvent(u, rng.randrange(N_ITEMS), rng.choice(ACTIONS), t,
                            category_id=rng.randrange(10)))
    return out


def malformed(now_ms: int) -> list[tuple[str, bytes | None, bytes, str]]:
    """(action topic, key, value, reason): uneven counts per reason, so a mix-up shows."""
    ok = {"user_id": 5, "item_id": 1, "ts": now_ms}
    pack = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
    return ([("click", b"5", b"\xc1\xc1 not msgpack", Reason.NOT_MSGPACK)] * 4
            + [("cart", b"5", pack([1, 2, 3]), Reason.NOT_A_MAP)] * 3
            + [("purchase", b"5", pack({"user_id": 5, "ts": now_ms}), Reason.MISSING_FIELD)] * 2
            + [("click", b"5", pack({**ok, "item_id": ""}), Reason.BAD_TYPE)]
            + [("purchase", b"6", pack(ok), Reason.KEY_MISMATCH)] * 2)


def produce(bootstrap: str, settings, events: list[LogEvent], bad: list) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    futures = []
    every = max(len(events) // max(len(bad), 1), 1)
    bad_iter = iter(bad)
    for i, ev in enumerate(events):
        futures.append(producer.send(input_topic(ev.action, settings.prefix),
                                     key=user_key(ev.user_id), value=encode_value(ev)))
        if i % every == 0 and (b := next(bad_iter, None)):
            futures.append(producer.send(settings.topic(b[0]), key=b[1], value=b[2]))
    for b in bad_iter:
        futures.append(producer.send(settings.topic(b[0]), key=b[1], value=b[2]))
    producer.flush(30)
    for f in futures:
        f.get(timeout=30)
    producer.close()


# ------------------------------------------------------------------ /metrics, read independently

def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """/metrics parsed by prometheus_client's own parser: {sample name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def get_json(port: int, path: str, token: str | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def total(m: dict, name: str, **labels: str) -> float:
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def by_label(m: dict, name: str, label: str, nonzero: bool = False) -> dict[str, float]:
    out: Counter = Counter()
    for lab, v in m.get(name, []):
        out[lab[label]] += v
    return {k: v for k, v in out.items() if v or not nonzero}


def histogram_quantile(q: float, m: dict, name: str) -> float | None:
    """Prometheus' bucketQuantile (promql/quantile.go) over the cumulative buckets of `name`."""
    acc: Counter = Counter()
    for lab, v in m.get(name + "_bucket", []):
        acc[float(lab["le"])] += v
    bs = sorted(acc.items())
    if len(bs) < 2 or bs[-1][0] != float("inf"):
        return None
    counts = [c for _, c in bs]
    for i in range(1, len(counts)):
        counts[i] = max(counts[i], counts[i - 1])
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    b = next((i for i in range(len(bs) - 1) if counts[i] >= rank), len(bs) - 1)
    if b == len(bs) - 1:
        return bs[-2][0]
    if b == 0 and bs[0][0] <= 0:
        return bs[0][0]
    start, end, count = 0.0, bs[b][0], counts[b]
    if b > 0:
        start, count, rank = bs[b - 1][0], counts[b] - counts[b - 1], rank - counts[b - 1]
    return start + (end - start) * (rank / count)


def expected(m: dict, fig: dict) -> float | None:
    """What a page figure (its data-* attributes) must read, computed from a scrape."""
    name = fig["metric"]
    if "quantile" in fig:
        return histogram_quantile(float(fig["quantile"]), m, name)
    if fig.get("stat") == "mean":
        count = total(m, name + "_count")
        return total(m, name + "_sum") / count if count else None
    if fig.get("stat") == "count":
        return total(m, name + "_count")
    return total(m, name, **{k: fig[k] for k in LABELS if k in fig})


# ------------------------------------------------------------------ the browser

@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                              options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    body = driver.execute_script("return document.body.dataset")
    pytest.fail(f"dashboard: {what} not within {timeout_s}s (page state {body})")


def page_state(driver) -> dict:
    return driver.execute_script("""
      const b = document.body.dataset;
      return {state: b.state, updates: Number(b.updates), updated_ms: Number(b.updatedMs),
              banner: document.getElementById('banner').hidden ? '' : document.getElementById('banner').innerText};""")


def read_page(driver) -> dict:
    """Every figure on the page (elements with data-metric and data-value), the lag panel's
    partitions and the predictions table, in one script run (one consistent moment)."""
    return driver.execute_script("""
      const figs = [...document.querySelectorAll('[data-metric][data-value]')].map((e) => {
        const f = Object.assign({}, e.dataset); f.text = e.textContent; return f; });
      const lag = [...document.querySelectorAll('#lag [data-metric="seqstream_consumer_lag"]')]
        .map((e) => [e.dataset.topic, e.dataset.partition, Number(e.dataset.value)]);
      const rows = [...document.querySelectorAll('#feed tbody tr')].map((r) =>
        ({user: r.dataset.user, key: r.dataset.key, cells: [...r.cells].map((c) => c.textContent)}));
      return {figures: figs, lag, rows, updated_ms: Number(document.body.dataset.updatedMs),
              state: document.body.dataset.state, note: document.getElementById('feed-note').textContent};""")


def fig(page: dict, metric: str, **attrs: str) -> dict:
    found = [f for f in page["figures"] if f["metric"] == metric
             and all(f.get(k) == v for k, v in attrs.items())]
    assert found, f"no figure {metric} {attrs} on the page"
    return found[0]


def js_errors(driver) -> list[str]:
    """Console errors other than the 401 the page was meant to get without its token."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "status of 401" not in e["message"]]


# ------------------------------------------------------------------ the test

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", N_ITEMS, 10,
                                version=MODEL_VERSION)


@pytest.mark.timeout(420)
def test_dashboard_shows_what_metrics_say(browser, kafka_bootstrap, deployment, checkpoint, tmp_path):
    settings = deployment
    port = free_port()
    worker = WorkerProcess(settings, checkpoint, tmp_path / "state", tmp_path / "worker.log",
                           "--web-port", str(port), *WORKER_ARGS, env={"SEQSTREAM_WEB_TOKEN": TOKEN})
    try:
        worker.wait_ready(90)
        events = make_events(N_EVENTS)
        bad = malformed(int(time.time() * 1000))
        produce(kafka_bootstrap, settings, events, bad)

        # the judge: an independent kafka-python consumer
        preds = consume_until(kafka_bootstrap, settings.predictions_topic, len(events), 120, [worker])
        dead = consume_until(kafka_bootstrap, settings.dead_letter_topic, len(bad), 60, [worker])
        assert len(preds) == len(events), worker.tail()
        assert len(dead) == len(bad), worker.tail()
        seen_reasons = Counter(dict(r.headers)["seqstream-reason"].decode() for r in dead)
        assert seen_reasons == Counter(b[3] for b in bad)
        users_sent = {str(e.user_id) for e in events}

        # /metrics agrees with the consumers (the counters may trail the sends by a moment, the
        # lag drains to 0 with the next offset commit, and the last churn alerts come with the
        # sweeps after the last event: the event-time clock stands still from then on)
        inputs = {(settings.topic(a), str(p)) for a in ("click", "cart", "purchase") for p in range(2)}
        churn_reader = KafkaConsumer(settings.churn_alerts_topic, bootstrap_servers=kafka_bootstrap,
                                     auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
        churn_seen: Counter = Counter()
        try:
            deadline = time.monotonic() + 45
            stable_since, last = time.monotonic(), None
            while True:
                for records in churn_reader.poll(timeout_ms=300).values():
                    for r in records:
                        kind = msgpack.unpackb(r.value, raw=False)["type"]
                        churn_seen["alert" if kind == "churn" else kind] += 1
                m1 = scrape(port)
                lag = {(lab["topic"], lab["partition"]): v for lab, v in m1.get("seqstream_consumer_lag", [])}
                churn = by_label(m1, "seqstream_churn_alerts_total", "kind", nonzero=True)
                if churn != last:
                    stable_since, last = time.monotonic(), churn
                if (total(m1, "seqstream_predictions_total") == len(preds)
                        and by_label(m1, "seqstream_dead_letter_total", "reason", nonzero=True) == dict(seen_reasons)
                        and inputs <= set(lag) and not any(lag[tp] for tp in inputs)
                        and churn == dict(churn_seen) and time.monotonic() - stable_since > 4):
                    break
                assert time.monotonic() < deadline, (
                    f"/metrics never matched the consumers: predictions "
                    f"{total(m1, 'seqstream_predictions_total')} vs {len(preds)}, dead letters "
                    f"{by_label(m1, 'seqstream_dead_letter_total', 'reason')} vs {dict(seen_reasons)}, "
                    f"lag {lag}, churn {churn} vs {dict(churn_seen)}")
                time.sleep(0.5)
        finally:
            churn_reader.close()
        assert churn_seen["alert"] >= len(QUIET), churn_seen  # the quiet users at least

        url = f"http://127.0.0.1:{port}/"
        # without the token: a clear 401 message, and the open metrics still shown
        browser.get(url)
        st = wait_for(browser, lambda: (s := page_state(browser))["updates"] >= 1 and s, 30, "a first refresh")
        assert st["state"] == "unauthorized", st
        assert "401 Unauthorized" in st["banner"] and "#token=" in st["banner"], st["banner"]
        assert browser.find_element("id", "kpi-predictions").get_attribute("data-value") == str(len(preds))
        assert browser.find_element("css selector", "#feed tbody").find_elements("tag name", "tr") == []

        # with the token in the fragment (never sent to the server): the feed fills in
        browser.get(url + "#token=" + TOKEN)
        wait_for(browser, lambda: page_state(browser)["state"] == "live"
                 and browser.execute_script("return document.querySelectorAll('#feed tbody tr').length") > 0,
                 30, "the live state with a filled feed")
        assert page_state(browser)["banner"] == ""

        # A refresh that starts after scrape m1 and ends before scrape m2; nothing moves in
        # between (everything was consumed), so the page must show exactly m1 (== m2).
        m1 = scrape(port)
        feed = get_json(port, "/feed", TOKEN)
        after_ms = time.time() * 1000
        wait_for(browser, lambda: page_state(browser)["updated_ms"] > after_ms
                 and page_state(browser)["state"] == "live", 15, "a refresh after the scrape")
        time.sleep(0.5)  # the refresh's fetches started at updated_ms; let it finish drawing
        page = read_page(browser)
        m2 = scrape(port)
        compared = 0
        for f in page["figures"]:
            if f.get("derived") == "rate" or f.get("window") == "recent":
                continue  # time dependent by design
            want = expected(m1, f)
            assert want == expected(m2, f), f"/metrics moved while the page refreshed: {f}"
            assert want is not None, f"the page shows a figure /metrics does not have: {f}"
            assert float(f["value"]) == pytest.approx(want, rel=1e-9, abs=1e-12), f
            compared += 1
        assert compared >= 20, page["figures"]

        # the figures the issue names, explicitly
        assert float(fig(page, "seqstream_predictions_total")["value"]) == len(preds)
        assert fig(page, "seqstream_predictions_total")["text"].replace(",", "") == str(len(preds))
        dead_on_page = {f["reason"]: float(f["value"]) for f in page["figures"]
                        if f["metric"] == "seqstream_dead_letter_total" and "reason" in f}
        assert dead_on_page == by_label(m1, "seqstream_dead_letter_total", "reason")
        assert {k: v for k, v in dead_on_page.items() if v} == {k: float(v) for k, v in seen_reasons.items()}
        assert float(fig(page, "seqstream_dead_letter_total", agg="sum")["value"]) == len(bad)
        assert float(fig(page, "seqstream_model_version")["value"]) == MODEL_VERSION
        assert fig(page, "seqstream_model_version")["text"] == f"v{MODEL_VERSION}"
        assert f"model v{MODEL_VERSION}" in page["note"]
        events_by_topic = {f["topic"]: float(f["value"]) for f in page["figures"]
                           if f["metric"] == "seqstream_events_total" and "topic" in f}
        assert events_by_topic == by_label(m1, "seqstream_events_total", "topic")
        assert sum(events_by_topic.values()) == len(events) + len(bad)
        lag_metrics = {(lab["topic"], lab["partition"]) for lab, _ in m1.get("seqstream_consumer_lag", [])}
        lag_page = {(t, p) for t, p, _ in page["lag"]}
        assert lag_page == lag_metrics and len(page["lag"]) == len(lag_metrics)
        assert inputs <= lag_page, (inputs, lag_page)
        assert all(v == 0 for t, p, v in page["lag"] if (t, p) in inputs), page["lag"]
        p50 = fig(page, "seqstream_event_latency_seconds", quantile="0.5", window="all")
        assert float(p50["value"]) > 0

        # the latest predictions: the feed's rows, newest first, users among those sent
        rows = page["rows"]
        assert len(rows) == len(feed["predictions"]) == min(50, len(preds))
        assert [r["key"] for r in rows] == [f"{p['topic']}/{p['partition']}/{p['offset']}"
                                           for p in reversed(feed["predictions"])]
        assert {r["user"] for r in rows} <= users_sent
        for r, p in zip(rows, reversed(feed["predictions"])):
            assert r["cells"][1] == p["user"] and r["cells"][2] == p["action"] and r["cells"][3] == p["item"]
        # the churn alerts: /feed's, newest first, and the counts /metrics has
        alert_rows = browser.execute_script("""return [...document.querySelectorAll('#alerts tbody tr')]
          .map((r) => [r.dataset.user, r.dataset.kind]);""")
        assert alert_rows == [[a["user"], a["kind"]] for a in reversed(feed["alerts"])]
        assert len(alert_rows) == min(50, sum(churn_seen.values()))
        assert {u for u, _ in alert_rows} <= users_sent
        assert float(fig(page, "seqstream_churn_alerts_total", kind="alert")["value"]) == churn_seen["alert"]
        assert float(fig(page, "seqstream_churn_alerts_total", kind="returned")["value"]) == churn_seen["returned"]
        assert not js_errors(browser), js_errors(browser)

        shot = os.environ.get("SEQSTREAM_SCREENSHOT")
        if shot:
            screenshot(browser, Path(shot), kafka_bootstrap, settings)
    finally:
        worker.stop()


def screenshot(driver, path: Path, bootstrap: str, settings, seconds: float = 45) -> None:
    """Live traffic for a while (so the charts have a history), then the whole page, dark."""
    stop = threading.Event()

    def traffic() -> None:
        rng = random.Random(1)
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        clock = {u: int(time.time() * 1000) - 600_000 for u in range(N_USERS)}
        n = 0
        while not stop.is_set():
            for _ in range(rng.randint(20, 60)):
                u = rng.randrange(N_USERS)
                clock[u] = max(clock[u] + 1000, int(time.time() * 1000) - rng.randint(0, 30_000))
                ev = LogEvent(u, rng.randrange(N_ITEMS), rng.choice(ACTIONS), clock[u],
                              category_id=rng.randrange(10))
                producer.send(input_topic(ev.action, settings.prefix), key=user_key(ev.user_id),
                              value=encode_value(ev))
                n += 1
                if n % 97 == 0:
                    producer.send(settings.topic("click"), key=b"3", value=b"\xc1 not msgpack")
            time.sleep(0.5)
        producer.flush(10)
        producer.close()

    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(seconds)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, height + 20)
        time.sleep(3.0)  # a refresh redraws the charts at the new size
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        stop.set()
        thread.join(15)
