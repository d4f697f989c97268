"""The persistent outbox for single mails (registration answers and notices).

A mail is written to the ``outbox`` table in the same transaction as the change
it announces, and leaves it only once the relay has taken it: a crash or a
relay outage delays a mail, never loses it. 4xx replies and connection failures
are retried with backoff; a 5xx reply marks the mail failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.orm import Session

from maild.common.addresses import mask
from maild.common.clock import Clock
from maild.mail.errors import DeliveryError, PermanentFailure
from maild.mail.relay import Relay
from maild.store.db import Database
from maild.store.models import FAILED, QUEUED, SENT, OutboxMail

log = logging.getLogger("maild.delivery")

FIRST_RETRY = dt.timedelta(seconds=5)
MAX_RETRY = dt.timedelta(minutes=30)
# A registration link dies after 24 h; a mail older than that is no use to anyone.
GIVE_UP_AFTER = dt.timedelta(hours=24)
BATCH = 50
IDLE_POLL_SECONDS = 5.0


def enqueue(
    session: Session,
    *,
    purpose: str,
    envelope_from: str,
    recipient: str,
    data: bytes,
    now: dt.datetime,
) -> OutboxMail:
    mail = OutboxMail(
        purpose=purpose,
        envelope_from=envelope_from,
        recipient=recipient,
        data=data,
        status=QUEUED,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(mail)
    return mail


_INSERT = insert(OutboxMail)


def queued(
    *, purpose: str, envelope_from: str, recipient: str, data: bytes, now: dt.datetime
) -> dict[str, Any]:
    """One outbox row for :func:`enqueue_many`: the same columns :func:`enqueue` writes."""
    return {
        "purpose": purpose,
        "envelope_from": envelope_from,
        "recipient": recipient,
        "data": data,
        "status": QUEUED,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def enqueue_many(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Queue :func:`queued` rows with one executemany, inside the caller's transaction."""
    if rows:
        connection.execute(_INSERT, list(rows))


def retry_delay(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s … capped at 30 min: quick while a relay restarts, gentle when it is down."""
    doublings = min(max(attempts - 1, 0), 20)
    return min(FIRST_RETRY * (1 << doublings), MAX_RETRY)


def queued_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(OutboxMail.status == QUEUED)) or 0


@dataclass(frozen=True)
class _Due:
    id: int
    envelope_from: str
    recipient: str
    data: bytes
    attempts: int
    created_at: dt.datetime


class OutboxSender:
    """Sends due outbox mails through the relay; one instance per daemon."""

    def __init__(self, db: Database, relay: Relay, clock: Clock, concurrency: int = 4) -> None:
        self.db = db
        self.relay = relay
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Callable from any thread (the web server's): a mail was queued."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # loop closing during shutdown
            pass

    async def run(self, stopping: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        while not stopping.is_set():
            self._wake.clear()
            try:
                sent = await self.send_due()
            except Exception:
                # Catch at the boundary (STYLE §6): a database hiccup must not end the sender.
                log.exception("outbox pass failed; retrying shortly")
                sent = 0
            if sent:
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=IDLE_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()

    async def send_due(self) -> int:
        """Send one batch of due mails; returns how many were tried."""
        due = await asyncio.to_thread(self._due, self.clock.now())
        if not due:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def one(mail: _Due) -> tuple[_Due, DeliveryError | None]:
            async with gate:
                try:
                    await self.relay.send(mail.envelope_from, mail.recipient, mail.data)
                except DeliveryError as e:
                    return mail, e
                return mail, None

        results = await asyncio.gather(*(one(m) for m in due))
        await asyncio.to_thread(self._record, results, self.clock.now())
        return len(due)

    def _due(self, now: dt.datetime) -> list[_Due]:
        with self.db.engine.connect() as connection:
            rows = connection.execute(
                select(
                    OutboxMail.id,
                    OutboxMail.envelope_from,
                    OutboxMail.recipient,
                    OutboxMail.data,
                    OutboxMail.attempts,
                    OutboxMail.created_at,
                )
                .where(OutboxMail.status == QUEUED, OutboxMail.next_attempt_at <= now)
                .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
                .limit(BATCH)
            ).all()
        return [_Due(*row) for row in rows]

    def _record(self, results: list[tuple[_Due, DeliveryError | None]], now: dt.datetime) -> None:
        sent = [mail for mail, error in results if error is None]
        with self.db.engine.begin() as connection:
            if sent:
                connection.execute(
                    update(OutboxMail)
                    .where(OutboxMail.id.in_([mail.id for mail in sent]))
                    .values(status=SENT, finished_at=now, last_error=None)
                )
            for mail, error in results:
                if error is None:
                    continue
                values: dict[str, object]
                who = mask(mail.recipient)
                if isinstance(error, PermanentFailure) or now - mail.created_at > GIVE_UP_AFTER:
                    values = {"status": FAILED, "finished_at": now, "last_error": str(error)}
                    log.warning("outbox mail %d to %s failed: %s", mail.id, who, error)
                else:
                    attempts = mail.attempts + 1
                    values = {
                        "attempts": attempts,
                        "next_attempt_at": now + retry_delay(attempts),
                        "last_error": str(error),
                    }
                    log.info(
                        "outbox mail %d to %s deferred (attempt %d): %s",
                        mail.id,
                        who,
                        attempts,
                        error,
                    )
                connection.execute(
                    update(OutboxMail).where(OutboxMail.id == mail.id).values(**values)
                )
        if sent:
            # One line per batch rather than per mail: under load the lines were a fair
            # share of the work. Each mail is still there, by id and masked recipient.
            log.info(
                "outbox: %d sent: %s",
                len(sent),
                ", ".join(f"{mail.id} to {mask(mail.recipient)}" for mail in sent),
            )
