"""What operators poll: ``/healthz`` (JSON; 503 unless every part is healthy) and
``/metrics`` (Prometheus text format, when the daemon passes its metrics).

``/metrics`` is served by :class:`OperatorsApp` alone, on the daemon's second listener
(``[web] operators_listen``, loopback by default): the counters tell whoever reads them
how many residents sign up and when alerts go out, so the residents' listener answers
404 for it. ``/healthz`` is on both: the load balancer in front of the residents'
listener checks it on each node (docs/high-availability.md), and it says no more than
up or down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import text as sql_text
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from maild.store.db import Database
from maild.web.page import Page

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("maild.web")

Health = Callable[[], Mapping[str, Any]]
Metrics = Callable[[], bytes]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format

# Parts of a health report that count as healthy (a listener says "listening").
HEALTHY = frozenset({"ok", "listening"})


def health_status(report: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for ``/healthz``: 503 unless every part is ok or listening."""
    parts = {k: v for k, v in report.items() if k != "status"}
    ok = all(_healthy(v) for v in parts.values()) and _healthy(report.get("status", "ok"))
    return (200 if ok else 503), {"status": "ok" if ok else "error", **parts}


def _healthy(value: object) -> bool:
    return isinstance(value, str) and value in HEALTHY


def database_health(db: Database) -> Health:
    """The default health check: the database answers a trivial query."""

    def check() -> dict[str, str]:
        try:
            with db.engine.connect() as connection:
                connection.execute(sql_text("SELECT 1"))
        except Exception as e:  # any failure is the answer here, not an error of ours
            log.warning("health check: database unavailable: %s", type(e).__name__)
            return {"status": "error", "database": "error"}
        return {"status": "ok", "database": "ok"}

    return check


class HealthPages:
    def __init__(self, health: Health, metrics: Metrics | None) -> None:
        self.health = health
        self.metrics = metrics

    def healthz(self, page: Page | None = None) -> Response:
        try:
            report: Mapping[str, Any] = self.health()
        except Exception:  # a failing check is an unhealthy answer, not a 500
            log.exception("health check failed")
            report = {"status": "error"}
        status, body = health_status(report)
        return Response(json.dumps(body, default=str), status=status, mimetype="application/json")

    def metrics_text(self, page: Page | None = None) -> Response:
        if self.metrics is None:
            raise NotFound()
        return Response(self.metrics(), content_type=METRICS_CONTENT_TYPE)


OPERATORS_MAP = Map(
    [
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/metrics", endpoint="metrics", methods=["GET"]),
    ]
)


class OperatorsApp:
    """The WSGI app of the operators' listener: ``/healthz`` and ``/metrics``, plain
    answers (no pages, no templates); anything else is a plain 404 or 405."""

    def __init__(self, health: Health, metrics: Metrics | None) -> None:
        self.pages = HealthPages(health, metrics)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        return self.respond(Request(environ))(environ, start_response)

    def respond(self, request: Request) -> Response:
        try:
            endpoint, _ = OPERATORS_MAP.bind_to_environ(request.environ).match()
            if endpoint == "metrics":
                response = self.pages.metrics_text()
            else:
                response = self.pages.healthz()
        except HTTPException as e:
            answer = e.get_response(request.environ)
            assert isinstance(answer, Response)
            response = answer
        except Exception:  # the one try of this app: a 500, logged, never a traceback out
            log.exception("%s %s failed", request.method, request.path)
            response = Response("500 Internal Server Error", 500, mimetype="text/plain")
        response.headers["Cache-Control"] = "no-store"
        return response
