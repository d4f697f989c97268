"""What operators poll: ``/healthz`` (JSON; 503 unless every part is healthy) and
``/metrics`` (Prometheus text format, when the daemon passes its metrics)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import text as sql_text
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from maild.store.db import Database
from maild.web.page import Page

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

    def healthz(self, page: Page) -> Response:
        try:
            report: Mapping[str, Any] = self.health()
        except Exception:  # a failing check is an unhealthy answer, not a 500
            log.exception("health check failed")
            report = {"status": "error"}
        status, body = health_status(report)
        return Response(json.dumps(body, default=str), status=status, mimetype="application/json")

    def metrics_text(self, page: Page) -> Response:
        if self.metrics is None:
            raise NotFound()
        return Response(self.metrics(), content_type=METRICS_CONTENT_TYPE)
