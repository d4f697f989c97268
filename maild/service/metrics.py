"""Prometheus metrics (``GET /metrics`` on the web listener).

Counters are fed by hooks the components already call (registration
outcomes, delivery results, SMTP sessions); what lives in the database
(alerts by status, outbox depth, subscribers by status) is read at scrape time
by a collector, so the numbers are right even after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from maild.mail.errors import DeliveryError, PermanentFailure
from maild.mail.relay import Relay
from maild.store.db import Database
from maild.store.models import ALERT_STATUSES, QUEUED, Alert, OutboxMail, Subscriber


class Metrics:
    def __init__(
        self,
        db: Database,
        sessions: Callable[[], int] = lambda: 0,
        refusals: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registrations = Counter(
            "maild_registrations",
            "Registration requests by outcome (register, manage, throttled, ignored:…, deferred:…)",
            ["outcome"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "maild_deliveries",
            "Messages handed to the relay by kind (alert, outbox) and result",
            ["kind", "result"],
            registry=self.registry,
        )
        self.relay_latency = Histogram(
            "maild_relay_reply_seconds",
            "Time from handing a message to the relay to its final reply",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(db, sessions))
        self.registry.register(_RefusalCollector(refusals))

    def registration(self, outcome: str) -> None:
        self.registrations.labels(outcome).inc()

    def delivery(self, kind: str, result: str) -> None:
        self.deliveries.labels(kind, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timed(self, relay: Relay, kind: str) -> Relay:
        """``relay`` with each send timed and counted."""
        return _TimedRelay(relay, self, kind)


class _TimedRelay:
    def __init__(self, relay: Relay, metrics: Metrics, kind: str) -> None:
        self._relay = relay
        self._metrics = metrics
        self._kind = kind

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        started = time.perf_counter()
        try:
            await self._relay.send(envelope_from, recipient, data)
        except DeliveryError as e:
            result = "failed" if isinstance(e, PermanentFailure) else "deferred"
            self._metrics.delivery(self._kind, result)
            if e.stage != "connect":
                self._metrics.relay_latency.observe(time.perf_counter() - started)
            raise
        self._metrics.relay_latency.observe(time.perf_counter() - started)
        self._metrics.delivery(self._kind, "sent")

    async def close(self) -> None:
        await self._relay.close()


class _RefusalCollector(Collector):
    """Registration answers refused by the answer budget, by limit (mail and web)."""

    def __init__(self, refusals: Callable[[], Mapping[str, int]]) -> None:
        self.refusals = refusals

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "maild_answer_refusals",
            "Registration answers refused by a limit (hourly, per-ip), blank mails and /signup",
            labels=["limit"],
        )
        for limit, count in sorted(self.refusals().items()):
            family.add_metric([limit], count)
        yield family


class _DatabaseCollector(Collector):
    def __init__(self, db: Database, sessions: Callable[[], int]) -> None:
        self.db = db
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        alerts = GaugeMetricFamily("maild_alerts", "Alerts by status", labels=["status"])
        subscribers = GaugeMetricFamily(
            "maild_subscribers", "Subscribers by status", labels=["status"]
        )
        with self.db.transaction() as session:
            by_status = dict(
                session.execute(select(Alert.status, func.count()).group_by(Alert.status)).all()
            )
            people = dict(
                session.execute(
                    select(Subscriber.status, func.count()).group_by(Subscriber.status)
                ).all()
            )
            depth = session.scalar(
                select(func.count()).select_from(OutboxMail).where(OutboxMail.status == QUEUED)
            )
        for status in ALERT_STATUSES:
            alerts.add_metric([status], by_status.get(status, 0))
        for status, count in sorted(people.items()):
            subscribers.add_metric([status], count)
        yield alerts
        yield subscribers
        yield GaugeMetricFamily(
            "maild_outbox_depth", "Registration mails and notices waiting", value=depth or 0
        )
        yield GaugeMetricFamily(
            "maild_smtp_sessions_open", "Inbound SMTP sessions open now", value=self.sessions()
        )
