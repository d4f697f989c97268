"""Residents' own hours at the release (issue 18 item 5): each delivery row's not-before.

The release writes recipients by the ten thousand with INSERT … SELECT; the not-before is
one more column of that SELECT, a CASE over the subscriber's hours, so the fan-out stays
one statement a part. The local time of the release is the same for the whole part, so
whether it falls inside a window and when each possible start next comes are computed
here once (:func:`maild.residents.hours.next_starts`) and bound as parameters. The row's
``next_attempt_at`` is the same time: the fan-out's claim (``next_attempt_at <= now``)
leaves a held row alone until then, with the usual claims, leases and retries after it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, false, func, literal, null, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from maild.residents.hours import next_starts
from maild.store.models import Delivery, Subscriber

# What the release writes of each delivery row (Alerts._write_part).
ROW_COLUMNS = ("alert_id", "subscriber_id", "status", "attempts", "next_attempt_at", "not_before")
_TIME = Delivery.__table__.c.next_attempt_at.type


def not_before_column(urgent: bool, now: dt.datetime, tz: ZoneInfo) -> ColumnElement[Any]:
    """The not-before of a recipient of an alert released at ``now``, over ``Subscriber``:
    NULL (send at once) without hours, for an urgent alert unless they chose "urgent
    too", or when ``now`` is inside their window; otherwise the next start of it."""
    local = now.astimezone(tz)
    minute = local.hour * 60 + local.minute
    start, end = Subscriber.hours_start, Subscriber.hours_end
    inside = or_(
        and_(start < end, start <= minute, end > minute),
        and_(start > end, or_(start <= minute, end > minute)),  # crosses midnight
    )
    free = [start.is_(None), end.is_(None), inside]
    if urgent:
        free.append(Subscriber.hours_urgent == false())
    starts = next_starts(now, tz)
    return case(
        (or_(*free), null()),
        *((start == m, literal(at, type_=_TIME)) for m, at in starts.items()),
        else_=null(),
    )


def next_attempt_column(not_before: ColumnElement[Any], now: dt.datetime) -> ColumnElement[Any]:
    """A held row is first due at its not-before; any other at once."""
    return func.coalesce(not_before, literal(now, type_=_TIME))


def held_note(session: Session, alert_id: int) -> str:
    """For the audit's ``released`` and ``recipients`` lines: how many of the rows written
    so far wait for their residents' hours ("" when none do)."""
    held = session.scalar(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.alert_id == alert_id, Delivery.not_before.is_not(None))
    )
    return f", {held} held for their own hours" if held else ""
