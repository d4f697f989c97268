"""Erasing what is no longer needed (operating rules §7(1)), as a periodic job.

- Registrations never completed: erased 24 hours after the blank mail, when
  their link has expired anyway.
- Registration mails and notices: erased a day after they were sent or given
  up (they hold an address and a live link).
- Delivery rows of finished alerts: erased after ``housekeeping.keep_days``;
  the alert keeps its counts in ``final_counts``, so ``alerts show`` still
  answers "how many got it".

With several nodes on one database, one of them at a time does a pass (an advisory
lock; maild.store.locks); the others skip theirs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from maild.alerts.workflow import Alerts
from maild.common.clock import Clock
from maild.common.config import Config
from maild.residents.links import REGISTER_MAX_AGE
from maild.store.db import Database
from maild.store.locks import Lock, try_lock
from maild.store.models import (
    ALERT_FAILED,
    ALERT_SENT,
    CANCELLED,
    FAILED,
    PENDING,
    SENT,
    Alert,
    Delivery,
    OutboxMail,
    Subscriber,
)

log = logging.getLogger("maild.service.housekeeping")

OUTBOX_KEEP = dt.timedelta(days=1)
# Alerts pruned per pass: bounded work, the next pass takes the rest.
ALERTS_PER_PASS = 20


@dataclass(frozen=True)
class Pruned:
    registrations: int
    outbox: int
    alerts: int
    deliveries: int


class Housekeeping:
    def __init__(self, config: Config, db: Database, alerts: Alerts, clock: Clock) -> None:
        self.config = config
        self.db = db
        self.alerts = alerts
        self.clock = clock

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): ``keep_days`` counts from the next pass."""
        self.config = config

    def run(self) -> Pruned | None:
        """One pass; None when another node holds the housekeeping lock (it is doing this
        very work, so this node skips a round)."""
        with try_lock(self.db.engine, Lock.HOUSEKEEPING) as ours:
            if not ours:
                log.debug("housekeeping: another node is at it; skipping this pass")
                return None
            return self._run()

    def _run(self) -> Pruned:
        now = self.clock.now()
        pruned = Pruned(
            registrations=self._expired_registrations(now),
            outbox=self._finished_outbox(now),
            **self._finished_deliveries(now),
        )
        if any(vars(pruned).values()):
            log.info(
                "erased %d unfinished registrations, %d sent mails, delivery rows of %d alerts "
                "(%d rows)",
                pruned.registrations,
                pruned.outbox,
                pruned.alerts,
                pruned.deliveries,
            )
        return pruned

    def _expired_registrations(self, now: dt.datetime) -> int:
        with self.db.transaction() as session:
            result = session.execute(
                delete(Subscriber).where(
                    Subscriber.status == PENDING, Subscriber.created_at < now - REGISTER_MAX_AGE
                )
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _finished_outbox(self, now: dt.datetime) -> int:
        with self.db.transaction() as session:
            result = session.execute(
                delete(OutboxMail).where(
                    OutboxMail.status.in_((SENT, FAILED)),
                    OutboxMail.finished_at < now - OUTBOX_KEEP,
                )
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _finished_deliveries(self, now: dt.datetime) -> dict[str, int]:
        cutoff = now - dt.timedelta(days=self.config.housekeeping.keep_days)
        alerts = deliveries = 0
        with self.db.transaction() as session:
            ids = session.scalars(
                select(Alert.id)
                .where(
                    Alert.status.in_((ALERT_SENT, CANCELLED, ALERT_FAILED)),
                    Alert.finished_at < cutoff,
                    Alert.final_counts.is_(None),
                )
                .limit(ALERTS_PER_PASS)
            ).all()
        for alert_id in ids:
            with self.db.transaction() as session:
                counts = self.alerts.delivery_counts(session, [alert_id]).get(alert_id, {})
                session.execute(
                    update(Alert)
                    .where(Alert.id == alert_id)
                    .values(final_counts=json.dumps(counts, sort_keys=True))
                )
                result = session.execute(delete(Delivery).where(Delivery.alert_id == alert_id))
                deliveries += int(result.rowcount or 0)  # type: ignore[attr-defined]
                alerts += 1
        return {"alerts": alerts, "deliveries": deliveries}
