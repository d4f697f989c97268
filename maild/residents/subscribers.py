"""A subscriber's life in the table: erased (their own cancel, an operator's ``remove``)
and revived after a suspension when they show they are there."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import (
    delete,
    select,
)
from sqlalchemy.orm import Session

from maild.common import addresses
from maild.store.db import Database
from maild.store.models import ACTIVE, SUSPENDED, OutboxMail, Subscriber, SubscriberArea

log = logging.getLogger("maild.residents.subscribers")


# --- erasure ---------------------------------------------------------------------------


def erase(session: Session, subscriber_id: int, address: str) -> None:
    """Erase one subscriber: the row, their areas, and any mail still waiting for them.

    The one way a subscriber is erased (their own cancel, an operator's ``remove``), so
    nothing that names them is left behind (operating rules §7(1)).
    """
    # Explicit rather than trusting ON DELETE CASCADE: a connection without SQLite's
    # foreign_keys pragma would otherwise leave the areas behind.
    session.execute(delete(SubscriberArea).where(SubscriberArea.subscriber_id == subscriber_id))
    session.execute(delete(OutboxMail).where(OutboxMail.recipient == address))
    session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))


def remove(db: Database, address: str) -> bool:
    """Erase the subscriber with ``address`` and their areas; True if there was one.

    Their link key goes with the row, so every manage, unsubscribe and register link they
    were sent stops working. Raises :class:`maild.common.addresses.InvalidAddress` for text that is
    no address. Deliveries keep the bare id (no address), as after a resident's own cancel.
    """
    normalized = addresses.normalize(address)
    with db.transaction() as session:
        subscriber_id = session.scalar(
            select(Subscriber.id).where(Subscriber.address == normalized)
        )
        if subscriber_id is None:
            return False
        erase(session, subscriber_id, normalized)
    log.info("subscriber %d erased by an operator (%s)", subscriber_id, addresses.mask(normalized))
    return True


def revive(subscriber: Subscriber, now: dt.datetime) -> bool:
    """The resident showed they are there: a suspended subscriber is active again, and
    the score starts over. Call inside the transaction that loaded ``subscriber``;
    returns True when they had been suspended. Pending subscribers are left alone."""
    if subscriber.status not in (ACTIVE, SUSPENDED):
        return False
    revived = subscriber.status == SUSPENDED
    subscriber.bounce_score = 0
    subscriber.last_bounce_at = None
    if revived:
        subscriber.status = ACTIVE
        subscriber.updated_at = now
        log.info("subscriber %d revived after suspension", subscriber.id)
    return revived
