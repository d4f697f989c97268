"""An alert's delivery rows counted by state, for ``alerts show``/``list``, the fan-out's
report and housekeeping's ``final_counts``.

``held`` (issue 18 item 5) is the part of ``queued`` that waits for the residents' own
hours: counted apart, so ``queued`` is what the fan-out could send now.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from maild.store.models import (
    DELIVERY_DEFERRED,
    DELIVERY_FAILED,
    DELIVERY_QUEUED,
    DELIVERY_SENT,
    Delivery,
)

HELD = "held"
STATUSES = (DELIVERY_QUEUED, DELIVERY_SENT, DELIVERY_DEFERRED, DELIVERY_FAILED)


def empty() -> dict[str, int]:
    return dict.fromkeys((*STATUSES, HELD), 0)


def delivery_counts(
    session: Session, ids: list[int], now: dt.datetime
) -> dict[int, dict[str, int]]:
    if not ids:
        return {}
    held = and_(Delivery.status == DELIVERY_QUEUED, Delivery.not_before > now)
    columns = [func.sum(case((Delivery.status == s, 1), else_=0)) for s in STATUSES]
    rows = session.execute(
        select(Delivery.alert_id, *columns, func.sum(case((held, 1), else_=0)))
        .where(Delivery.alert_id.in_(ids))
        .group_by(Delivery.alert_id)
    ).all()
    result = {}
    for row in rows:
        counts = {s: int(row[i + 1] or 0) for i, s in enumerate(STATUSES)}
        counts[HELD] = int(row[-1] or 0)
        counts[DELIVERY_QUEUED] -= counts[HELD]
        result[row[0]] = counts
    return result
