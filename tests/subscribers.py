"""Active subscribers written straight into a test's database, for tests that need many
recipients and are not about how residents register."""

from __future__ import annotations

import datetime as dt

from maild.service.services import Services
from maild.store.models import Subscriber, SubscriberArea


def add_active(
    s: Services, count: int, at: dt.datetime, *, area: str = "aoba", prefix: str = "u"
) -> None:
    """``count`` active subscribers ``{prefix}{n}@example.jp`` of ``area``, every category."""
    with s.db.transaction() as session:
        for n in range(count):
            subscriber = Subscriber(
                address=f"{prefix}{n}@example.jp",
                status="active",
                category_mask=31,
                link_key="k",
                created_at=at,
                updated_at=at,
                bounce_score=0,
            )
            subscriber.areas = [SubscriberArea(area_id=area)]
            session.add(subscriber)
