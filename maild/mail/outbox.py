"""The persistent outbox for single mails (registration answers and notices).

A mail is written to the ``outbox`` table in the same transaction as the change
it announces, and leaves it only once the relay has taken it: a crash or a
relay outage delays a mail, never loses it. 4xx replies and connection failures
are retried with backoff; a 5xx reply marks the mail failed.

Several nodes may send from one outbox (PostgreSQL). A sender claims a batch before
sending it: one UPDATE of rows picked ``FOR UPDATE SKIP LOCKED``, setting a lease
(``claimed_until``) and its node's name (``claimed_by``), so two nodes never take the
same mail. The lease is renewed while the batch goes out; if the node dies, its
claims run out after :data:`LEASE` and another node sends them. At start a node frees
the claims of its own previous run at once, and no one else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select, update
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
# A dead node's answers go out from another within a minute or so: the lease, then an idle
# poll. A live node renews its claims every third of it (real seconds), so a slow relay
# (each try is bounded by the relay's own timeouts) never lets another node in.
LEASE = dt.timedelta(seconds=60)
RENEW_SECONDS = LEASE.total_seconds() / 3


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
    """Sends due outbox mails through the relay; one instance per daemon (per node)."""

    def __init__(
        self,
        db: Database,
        relay: Relay,
        clock: Clock,
        concurrency: int = 4,
        *,
        node: str,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self.db = db
        self.relay = relay
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.node = node
        self.renew_seconds = renew_seconds
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

    def release_claims(self) -> int:
        """At the daemon's start: this node's claims of a previous run (a crash) are free
        again at once. Other nodes' claims are theirs until their lease runs out."""
        with self.db.engine.begin() as connection:
            result = connection.execute(
                update(OutboxMail)
                .where(OutboxMail.claimed_by == self.node)
                .values(claimed_until=None, claimed_by=None)
            )
        return int(result.rowcount or 0)

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
        """Claim and send one batch of due mails; returns how many were tried."""
        due = await asyncio.to_thread(self._claim, self.clock.now())
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

        renewing = asyncio.create_task(self._keep_claims([mail.id for mail in due]))
        try:
            results = await asyncio.gather(*(one(m) for m in due))
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        await asyncio.to_thread(self._record, results, self.clock.now())
        return len(due)

    def _claim(self, now: dt.datetime) -> list[_Due]:
        due = (
            select(OutboxMail.id)
            .where(
                OutboxMail.status == QUEUED,
                OutboxMail.next_attempt_at <= now,
                or_(OutboxMail.claimed_until.is_(None), OutboxMail.claimed_until < now),
            )
            .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
        )
        with self.db.engine.begin() as connection:
            rows = connection.execute(
                update(OutboxMail)
                .where(OutboxMail.id.in_(due.scalar_subquery()))
                .values(claimed_until=now + LEASE, claimed_by=self.node)
                .returning(
                    OutboxMail.id,
                    OutboxMail.envelope_from,
                    OutboxMail.recipient,
                    OutboxMail.data,
                    OutboxMail.attempts,
                    OutboxMail.created_at,
                )
            ).all()
        return sorted((_Due(*row) for row in rows), key=lambda mail: mail.id)

    async def _keep_claims(self, ids: list[int]) -> None:
        """Renew the batch's lease every ``renew_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                await asyncio.to_thread(self._renew, ids, self.clock.now())
            except Exception:
                log.exception("renewing the outbox claims failed; trying again")

    def _renew(self, ids: list[int], now: dt.datetime) -> None:
        with self.db.engine.begin() as connection:
            connection.execute(
                update(OutboxMail)
                .where(
                    OutboxMail.id.in_(ids),
                    OutboxMail.claimed_by == self.node,
                    OutboxMail.status == QUEUED,
                )
                .values(claimed_until=now + LEASE)
            )

    def _record(self, results: list[tuple[_Due, DeliveryError | None]], now: dt.datetime) -> None:
        sent = [mail for mail, error in results if error is None]
        unclaimed = {"claimed_until": None, "claimed_by": None}
        with self.db.engine.begin() as connection:
            if sent:
                # Whoever holds the row now: it has gone, and saying so spares a second copy.
                connection.execute(
                    update(OutboxMail)
                    .where(OutboxMail.id.in_([mail.id for mail in sent]))
                    .values(status=SENT, finished_at=now, last_error=None, **unclaimed)
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
                # Only while still ours: had the lease run out (a stalled node), another
                # node's try is the one that counts.
                connection.execute(
                    update(OutboxMail)
                    .where(OutboxMail.id == mail.id, OutboxMail.claimed_by == self.node)
                    .values(**values, **unclaimed)
                )
        if sent:
            # One line per batch rather than per mail: under load the lines were a fair
            # share of the work. Each mail is still there, by id and masked recipient.
            log.info(
                "outbox: %d sent: %s",
                len(sent),
                ", ".join(f"{mail.id} to {mask(mail.recipient)}" for mail in sent),
            )
