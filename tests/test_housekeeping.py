"""Housekeeping erases what is no longer needed and keeps what operators still ask about."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, select, update

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.service.housekeeping import Housekeeping
from maild.service.services import Services, build_services
from maild.store.models import Delivery, OutboxMail, Subscriber
from tests.configs import make_config

START = dt.datetime(2026, 12, 7, 0, 0, tzinfo=dt.UTC)  # Monday 09:00 in Tokyo: window open


def services(tmp_path: Path, clock: FakeClock) -> Services:
    return build_services(make_config(tmp_path, housekeeping={"keep_days": 30}), clock)


def count(s: Services, model: type) -> int:
    with s.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_unfinished_registrations_and_sent_mails_are_erased(tmp_path: Path) -> None:
    clock = FakeClock(START)
    s = services(tmp_path, clock)
    s.registrations.request_signup("left@example.jp")
    with s.db.transaction() as session:
        session.execute(update(OutboxMail).values(status="sent", finished_at=START))
    clock.advance(hours=12)
    s.registrations.request_signup("fresh@example.jp")
    keeper = Housekeeping(s.config, s.db, s.alerts, clock)

    clock.advance(hours=13)  # the first is 25 h old, the second 13 h
    pruned = keeper.run()
    assert pruned is not None
    assert pruned.registrations == 1 and pruned.outbox == 1
    with s.db.transaction() as session:
        assert session.scalars(select(Subscriber.address)).all() == ["fresh@example.jp"]
        assert session.scalar(select(func.count()).select_from(OutboxMail)) == 1  # still queued


def test_delivery_rows_of_old_alerts_are_pruned_but_counts_stay(tmp_path: Path) -> None:
    clock = FakeClock(START)
    s = services(tmp_path, clock)
    with s.db.transaction() as session:
        for n in range(3):
            session.add(
                Subscriber(
                    address=f"u{n}@example.jp",
                    status="active",
                    category_mask=31,
                    link_key="k",
                    created_at=START,
                    updated_at=START,
                    bounce_score=0,
                    areas=[],
                )
            )
    with s.db.transaction() as session:
        from maild.store.models import SubscriberArea

        for n in (1, 2, 3):
            session.add(SubscriberArea(subscriber_id=n, area_id="aoba"))
    draft = AlertDraft("件名", ("aoba",), "other", True, None, None, "本文", "utf-8")
    alert_id = s.alerts.intake(draft, Source(None, "op"))
    assert s.alerts.release(alert_id) == 3
    with s.db.transaction() as session:
        session.execute(update(Delivery).values(status="sent"))
        assert s.alerts.finish_if_done(session, alert_id, clock.now())
    keeper = Housekeeping(s.config, s.db, s.alerts, clock)

    clock.advance(days=29)
    assert (pruned := keeper.run()) is not None and pruned.deliveries == 0
    clock.advance(days=2)
    assert (pruned := keeper.run()) is not None and pruned.deliveries == 3
    assert count(s, Delivery) == 0
    shown = s.alerts.show(alert_id)
    assert shown["counts"] == {"queued": 0, "sent": 3, "deferred": 0, "failed": 0, "held": 0}
    assert shown["status"] == "sent"
