"""Claims: which process of which node sends which delivery rows, and for how long.

A claim is one batch of one fan-out process: up to :data:`BATCH` due rows taken in ONE
statement per alert (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), marked with a random
token in ``claim``, the node in ``claimed_by`` and a lease in ``claimed_until``. Two
processes, here or on other machines, never take the same row. A lease that is not
renewed ends after :data:`LEASE`: how long a dead node's batch waits before another
node sends it. Statements are built once and read as Core tuples, a batch at a time.
What a claim sent is marked a group of messages at a time on PostgreSQL
(:class:`SentRecords`), and once a batch on SQLite (:func:`mark_sent`, from the sent
journal).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update

from maild.store.bookkeeper import Bookkeeper
from maild.store.db import Database
from maild.store.models import (
    ACTIVE,
    DELIVERY_DEFERRED,
    DELIVERY_QUEUED,
    DELIVERY_SENT,
    SENDING,
    Alert,
    Delivery,
    Subscriber,
)

BATCH = 500
# Renewed every LEASE / 4 while the batch goes out (maild.delivery.fanout).
LEASE = dt.timedelta(seconds=60)


# Made per recipient: slotted, not frozen, which costs a fifth as much.
@dataclass(slots=True)
class Row:
    delivery_id: int
    alert_id: int
    attempts: int
    subscriber_id: int
    address: str | None  # None: the subscriber was erased or is no longer active
    link_key: str


_SENDING = select(Alert.id).where(Alert.status == SENDING).order_by(Alert.urgent.desc(), Alert.id)
# One alert at a time and no ORDER BY, so the (alert, status, time) index finds the
# rows and the scan stops at the limit, however long the list.
_DUE = (
    select(Delivery.id)
    .where(
        Delivery.alert_id == bindparam("alert"),
        Delivery.status.in_((DELIVERY_QUEUED, DELIVERY_DEFERRED)),
        Delivery.next_attempt_at <= bindparam("now"),
        (Delivery.claimed_until.is_(None)) | (Delivery.claimed_until < bindparam("now")),
    )
    .limit(bindparam("wanted"))
    .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it
)
_TAKE = (
    update(Delivery)
    .where(Delivery.id.in_(_DUE.scalar_subquery()))
    .values(
        claimed_until=bindparam("lease_end"), claim=bindparam("token"), claimed_by=bindparam("node")
    )
)
_CLAIMED = (
    select(
        Delivery.id,
        Delivery.alert_id,
        Delivery.attempts,
        Delivery.subscriber_id,
        Subscriber.address,
        Subscriber.link_key,
        Subscriber.status,
    )
    .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
    .where(Delivery.claim == bindparam("token"))
    .order_by(Delivery.id)
)
_HELD = Delivery.claim == bindparam("token"), Delivery.claimed_until.is_not(None)


def claim_batch(db: Database, node: str, now: dt.datetime) -> tuple[str, list[Row]]:
    """Up to BATCH due rows, urgent alerts first, as this node's; the claim's token."""
    token = secrets.token_hex(16)
    with db.engine.begin() as connection:
        wanted = BATCH
        for alert_id in connection.scalars(_SENDING).all():
            taken = connection.execute(
                _TAKE,
                {
                    "alert": alert_id,
                    "now": now,
                    "wanted": wanted,
                    "lease_end": now + LEASE,
                    "token": token,
                    "node": node,
                },
            )
            wanted -= taken.rowcount
            if wanted <= 0:
                break
        if wanted == BATCH:
            return token, []
        found = connection.execute(_CLAIMED, {"token": token}).all()
    return token, [
        Row(
            delivery_id=delivery_id,
            alert_id=alert_id,
            attempts=attempts,
            subscriber_id=subscriber_id,
            address=address if status == ACTIVE else None,
            link_key=link_key or "",
        )
        for delivery_id, alert_id, attempts, subscriber_id, address, link_key, status in found
    ]


def renew(db: Database, token: str, now: dt.datetime) -> None:
    """The claim's rows still being sent are this node's for another LEASE."""
    with db.bookkeeping() as connection:
        connection.execute(
            update(Delivery).where(*_HELD).values(claimed_until=now + LEASE), {"token": token}
        )


def release(db: Database, token: str) -> None:
    """The claim's rows not yet sent are free for any process at once."""
    with db.bookkeeping() as connection:
        connection.execute(
            update(Delivery).where(*_HELD).values(claimed_until=None), {"token": token}
        )


def release_node(db: Database, node: str) -> None:
    """Every claim of ``node`` is free at once: at its daemon's start, before any of its
    workers runs, what a crashed run left (its workers died with it)."""
    with db.engine.begin() as connection:
        connection.execute(
            update(Delivery)
            .where(Delivery.claimed_until.is_not(None), Delivery.claimed_by == node)
            .values(claimed_until=None)
        )


def mark_sent(connection: Connection, delivery_ids: Sequence[int]) -> None:
    """Mark ``delivery_ids`` sent within the caller's transaction (on SQLite, a batch's
    ids from the sent journal, :mod:`maild.delivery.journal`)."""
    for start in range(0, len(delivery_ids), BATCH):
        connection.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids[start : start + BATCH]))
            .values(status=DELIVERY_SENT, claimed_until=None, last_error=None)
        )


class SentRecords:
    """PostgreSQL's record of what the fan-out sent (SQLite's is the sent journal,
    :mod:`maild.delivery.journal`): delivery rows marked sent a group at a time (the
    group commit), from the event loop through a
    :class:`~maild.store.bookkeeper.Bookkeeper`; :meth:`close` when the batch is done.

    A group commits every few milliseconds, a few dozen rows, so what surrounds the
    UPDATE costs more than the UPDATE: SQLAlchemy's rendering of an expanding ``IN``
    each time was as much as the statement. Hence the driver's own SQL, one text for
    every group size (``= ANY(%s)`` takes the list as one parameter).
    """

    def __init__(self, db: Database) -> None:
        if db.engine.dialect.name != "postgresql":
            raise ValueError("SentRecords is PostgreSQL's; SQLite keeps a sent journal")
        self._keeper = Bookkeeper(db)

    async def write(self, delivery_ids: Sequence[int]) -> None:
        await self._keeper.execute(_SENT_POSTGRESQL, (DELIVERY_SENT, list(delivery_ids)))

    async def close(self) -> None:
        await self._keeper.close()


# The same values as mark_sent's, in psycopg's paramstyle.
_SENT_POSTGRESQL = (
    f"UPDATE {Delivery.__tablename__} SET status = %s, claimed_until = NULL, last_error = NULL"
    " WHERE id = ANY(%s)"
)
