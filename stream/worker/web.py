"""The worker's pages on faust's web server (settings.web_host:settings.web_port, on when web_port > 0).

- GET /metrics  Prometheus text format (stream/worker/exporter.py); open, no user ids
- GET /healthz  200 "ok" while live, else 503 + one line (stream/worker/health.py); open
- GET /readyz   200 "ready" once ready, else 503 + one line; open
- GET /feed     the last predictions and churn alerts as JSON (stream/worker/feed.py). They hold
                user ids: with settings.web_token set it needs `Authorization: Bearer <token>`
- GET /         the dashboard page (stream/worker/dashboard.html); holds no data itself

A non-loopback web host without a token is refused at start (`check_exposure`).
"""
from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Any

from stream.config import ConfigError, Settings
from stream.worker.exporter import CONTENT_TYPE, make_registry, render

DASHBOARD = Path(__file__).with_name("dashboard.html")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


def check_exposure(settings: Settings) -> None:
    """A feed of user ids on a non-local address must not be open to whoever reaches it."""
    if settings.web_port > 0 and not is_loopback(settings.web_host) and not settings.web_token:
        raise ConfigError(f"--web-host {settings.web_host} exposes user ids on /feed: "
                          "set SEQSTREAM_WEB_TOKEN")


def authorized(token: str, header: str | None) -> bool:
    """Whether an Authorization header carries the bearer token (always, when no token is set)."""
    if not token:
        return True
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def register_pages(wiring: Any, pipeline: Any) -> None:
    """Call before faust starts (pages are routes on faust's aiohttp server)."""
    settings: Settings = pipeline.settings
    if settings.web_port <= 0:
        return
    app = wiring.app
    _drop_faust_index(app)
    registry = make_registry(pipeline)
    pipeline.registry = registry
    plain = "text/plain"

    @app.page("/metrics")
    async def metrics_page(view, request):  # noqa: ANN001 - faust's view and aiohttp's request
        return view.bytes(render(registry), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/healthz")
    async def healthz(view, request):  # noqa: ANN001
        reason = pipeline.health.liveness()
        return view.text("ok\n" if reason is None else reason + "\n", content_type=plain,
                         status=200 if reason is None else 503)

    @app.page("/readyz")
    async def readyz(view, request):  # noqa: ANN001
        reason = pipeline.health.readiness()
        return view.text("ready\n" if reason is None else reason + "\n", content_type=plain,
                         status=200 if reason is None else 503)

    @app.page("/feed")
    async def feed(view, request):  # noqa: ANN001
        if not authorized(settings.web_token, request.headers.get("Authorization")):
            return view.text("unauthorized: /feed needs Authorization: Bearer <SEQSTREAM_WEB_TOKEN>\n",
                             content_type=plain, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="seqstream"'})
        return view.json(pipeline.feed.to_json(model_version=pipeline.scorer.scoring.version,
                                               app_id=settings.app_id),
                         headers={"Cache-Control": "no-store"})

    @app.page("/")
    async def dashboard(view, request):  # noqa: ANN001
        try:
            page = DASHBOARD.read_text(encoding="utf-8")
        except OSError:
            return view.text("dashboard page missing\n", content_type=plain, status=404)
        return view.html(page)


def _drop_faust_index(app: Any) -> None:
    """faust mounts a placeholder index ({"status": "OK"}) at "/" when the server starts; the
    dashboard lives there instead (the blueprint list is only read at that start)."""
    blueprints = app.web.blueprints
    blueprints._enabled = [(prefix, bp) for prefix, bp in blueprints._enabled
                           if "production_index" not in str(bp)]
