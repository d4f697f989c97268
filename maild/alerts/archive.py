"""The public archive's reading of the alerts (docs/web-routes.md): sent alerts only, and of
them only what the mail showed.

An alert is archived once its status is ``sent``, which is final: a cancelled one (before or
during sending) and a failed one never are, and a test send (``maild submit --test``) is no
alert at all. :class:`ArchivedAlert` carries no requester, approver, counts or audit, so no
page, feed or CAP document made from it can show them.

The area filter is delivery's own piece matching
(:meth:`~maild.residents.areas.AreaMap.matching_area_ids`): an alert is listed for an area
when it would have reached a resident who chose that area, so 青葉区 shows the alerts for
青葉区, for its stations, for 中央ブロック and for 県内全域.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, literal, or_, select

from maild.alerts.place import Place, stored_place
from maild.residents.areas import AreaMap
from maild.store.db import Database
from maild.store.models import ALERT_SENT, Alert

PAGE_SIZE = 20
# How many entries a feed carries: aggregators poll often, so the newest are enough.
FEED_SIZE = 50


@dataclass(frozen=True)
class ArchivedAlert:
    """What the archive may show of a sent alert: what its mail said and when it went."""

    id: int
    subject: str  # as the operator wrote it (maild.alerts.mailtext adds the rest)
    body: str
    sender: str | None
    category: str
    area_ids: tuple[str, ...]
    urgent: bool
    sent_at: dt.datetime  # its release: when the first mails went out
    place: Place | None = None  # its point already coarse (maild.alerts.place)


@dataclass(frozen=True)
class ArchivePage:
    alerts: tuple[ArchivedAlert, ...]
    number: int  # from 1
    has_next: bool


class Archive:
    """Queries for the archive pages and feeds; ``areas`` is passed per call so that each
    request uses the area map in force when it began."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def page(
        self,
        areas: AreaMap,
        area_id: str | None = None,
        category: str | None = None,
        number: int = 1,
        size: int = PAGE_SIZE,
    ) -> ArchivePage:
        """Page ``number`` (from 1) of the archive, newest first, filtered by area and category."""
        number = max(number, 1)
        query = _filtered(areas, area_id, category).offset((number - 1) * size).limit(size + 1)
        with self.db.transaction() as session:
            rows = session.scalars(query).all()
            alerts = tuple(_archived(a) for a in rows[:size])
        return ArchivePage(alerts, number, len(rows) > size)

    def latest(
        self,
        areas: AreaMap,
        area_id: str | None = None,
        category: str | None = None,
        size: int = FEED_SIZE,
    ) -> tuple[ArchivedAlert, ...]:
        """The newest ``size`` archived alerts of a feed."""
        return self.page(areas, area_id, category, 1, size).alerts

    def get(self, alert_id: int) -> ArchivedAlert | None:
        """One archived alert, or None if there is none of that id or it is not archived."""
        with self.db.transaction() as session:
            alert = session.scalar(_archived_alerts().where(Alert.id == alert_id))
            return None if alert is None else _archived(alert)


def _archived_alerts() -> Select[Alert]:
    return select(Alert).where(Alert.status == ALERT_SENT, Alert.released_at.is_not(None))


def _filtered(areas: AreaMap, area_id: str | None, category: str | None) -> Select[Alert]:
    query = _archived_alerts()
    if category is not None:
        query = query.where(Alert.category == category)
    if area_id is not None:
        # The alert's areas share a piece with the chosen one exactly when one of them is
        # among the areas sharing a piece with it (the symmetric matching delivery uses).
        matching = sorted(areas.matching_area_ids([area_id]))
        query = query.where(or_(*(_lists_area(a) for a in matching)))
    return query.order_by(Alert.released_at.desc(), Alert.id.desc())


def _lists_area(area_id: str) -> ColumnElement[bool]:
    # Alert.areas is ids separated by single spaces; ids are [a-z0-9-] (areafile), so they
    # hold no LIKE wildcard.
    padded = literal(" ").concat(Alert.areas).concat(" ")
    return padded.like(f"% {area_id} %")


def _archived(alert: Alert) -> ArchivedAlert:
    assert alert.released_at is not None  # _archived_alerts
    return ArchivedAlert(
        id=alert.id,
        subject=alert.subject,
        body=alert.body,
        sender=alert.sender,
        category=alert.category,
        area_ids=alert.area_ids,
        urgent=alert.urgent,
        sent_at=alert.released_at,
        place=stored_place(alert.place),
    )
