"""Residents' own hours (issue 18 item 5): the rule, and the not-before the release writes."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.delivery.fanout import FanoutSender
from maild.mail.relay import open_relay
from maild.residents.hours import ANY_TIME, Hours, HoursError, not_before, parse_hours
from maild.service.services import Services, build_services
from maild.store.models import Delivery, Subscriber, SubscriberArea
from tests.configs import make_config
from tests.smtpsink import SmtpSink

TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=TOKYO)


DAY_HOURS = Hours(7 * 60, 21 * 60)
NIGHT_HOURS = Hours(22 * 60, 6 * 60)  # crosses midnight


@pytest.mark.parametrize(
    ("hours", "urgent", "released", "expected"),
    [
        (DAY_HOURS, False, tokyo(5, 17), None),
        (DAY_HOURS, False, tokyo(5, 7), None),  # the start is inside
        (DAY_HOURS, False, tokyo(5, 21), tokyo(6, 7)),  # the end is not
        (DAY_HOURS, False, tokyo(5, 22, 30), tokyo(6, 7)),
        (DAY_HOURS, False, tokyo(5, 6, 59), tokyo(5, 7)),
        (DAY_HOURS, False, tokyo(5, 0, 0), tokyo(5, 7)),
        (DAY_HOURS, True, tokyo(5, 22, 30), None),  # urgent goes at once by default
        (Hours(7 * 60, 21 * 60, urgent_too=True), True, tokyo(5, 22, 30), tokyo(6, 7)),
        (NIGHT_HOURS, False, tokyo(5, 23), None),
        (NIGHT_HOURS, False, tokyo(5, 3), None),
        (NIGHT_HOURS, False, tokyo(5, 6), tokyo(5, 22)),
        (NIGHT_HOURS, False, tokyo(5, 12), tokyo(5, 22)),
        (NIGHT_HOURS, False, tokyo(5, 21, 59), tokyo(5, 22)),
        (ANY_TIME, False, tokyo(5, 3), None),
    ],
)
def test_not_before(
    hours: Hours, urgent: bool, released: dt.datetime, expected: dt.datetime | None
) -> None:
    assert not_before(hours, urgent, released, TOKYO) == expected


def test_parse_hours() -> None:
    assert parse_hours("07:00", "21:00", False) == DAY_HOURS
    assert parse_hours("22:00", "06:00", True) == Hours(1320, 360, True)
    assert parse_hours("", "", True) == ANY_TIME
    for start, end in [("07:00", "07:00"), ("07:00", ""), ("7", "21:00"), ("07:10", "21:00")]:
        with pytest.raises(HoursError):
            parse_hours(start, end, False)
    with pytest.raises(HoursError, match="same time"):
        parse_hours("07:00", "07:00", False)
    assert DAY_HOURS.describe() == "07:00〜21:00（緊急の情報は時間外でもすぐ届きます）"
    assert ANY_TIME.describe("en") == "any time"


# --- the release writes it, in SQL, for many at once ------------------------------------

DRAFT = AlertDraft("件名", ("aoba",), "other", False, None, None, "本文", "utf-8")
URGENT = AlertDraft("件名", ("aoba",), "other", True, None, None, "本文", "utf-8")
RESIDENTS = {
    "day": DAY_HOURS,
    "night": NIGHT_HOURS,
    "always": ANY_TIME,
    "strict": Hours(7 * 60, 21 * 60, urgent_too=True),
}


def site(tmp_path: Path, at: dt.datetime) -> Services:
    s = build_services(make_config(tmp_path), FakeClock(at.astimezone(dt.UTC)))
    with s.db.transaction() as session:
        for name, hours in RESIDENTS.items():
            subscriber = Subscriber(
                address=f"{name}@example.jp",
                status="active",
                category_mask=31,
                link_key="k",
                created_at=at,
                updated_at=at,
                bounce_score=0,
                hours_start=hours.start,
                hours_end=hours.end,
                hours_urgent=hours.urgent_too,
            )
            subscriber.areas = [SubscriberArea(area_id="aoba")]
            session.add(subscriber)
    return s


def written(s: Services, alert_id: int) -> dict[str, dt.datetime | None]:
    with s.db.transaction() as session:
        rows = session.execute(
            select(Subscriber.address, Delivery.not_before, Delivery.next_attempt_at)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.alert_id == alert_id)
        ).all()
    for _, held, due in rows:
        assert due == (held or s.clock.now())  # the claim waits for the not-before
    return {address.partition("@")[0]: held for address, held, _ in rows}


@pytest.mark.parametrize(
    ("draft", "released", "expected"),
    [
        (DRAFT, tokyo(5, 17), {"night": tokyo(5, 22)}),
        (DRAFT, tokyo(5, 22, 30), {"day": tokyo(6, 7), "strict": tokyo(6, 7)}),
        (URGENT, tokyo(5, 22, 30), {"strict": tokyo(6, 7)}),
        (DRAFT, tokyo(5, 12), {"night": tokyo(5, 22)}),
        (URGENT, tokyo(5, 12), {}),
        (DRAFT, tokyo(5, 3), {"day": tokyo(5, 7), "strict": tokyo(5, 7)}),
    ],
)
def test_the_release_writes_each_rows_not_before(
    tmp_path: Path, draft: AlertDraft, released: dt.datetime, expected: dict[str, dt.datetime]
) -> None:
    s = site(tmp_path, released)
    alert_id = s.alerts.intake(draft, Source(None, "sato"))
    s.alerts.send_now(alert_id, "sato")
    assert s.alerts.release(alert_id) == 4
    assert written(s, alert_id) == {name: expected.get(name) for name in RESIDENTS}
    counts = s.alerts.show(alert_id)["counts"]
    assert counts["held"] == len(expected)
    assert counts["queued"] == 4 - len(expected)
    s.db.dispose()


def test_held_rows_keep_the_alert_sending_until_they_went(tmp_path: Path) -> None:
    s = site(tmp_path, tokyo(5, 22, 30))
    alert_id = s.alerts.intake(DRAFT, Source(None, "sato"))
    s.alerts.send_now(alert_id, "sato")
    s.alerts.release(alert_id)
    with s.db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.not_before.is_(None)).values(status="sent"))
        assert not s.alerts.finish_if_done(session, alert_id, s.clock.now())
    assert s.alerts.show(alert_id)["status"] == "sending"
    released = [e for e in s.alerts.show(alert_id)["audit"] if e["action"] == "released"]
    assert released[0]["detail"] == "4 recipients, 2 held for their own hours"
    assert isinstance(s.clock, FakeClock)
    s.clock.set(tokyo(6, 7).astimezone(dt.UTC))
    assert s.alerts.show(alert_id)["counts"]["held"] == 0  # due now: queued
    assert s.alerts.show(alert_id)["counts"]["queued"] == 2
    s.db.dispose()


def test_a_held_row_gets_its_day_of_retries_from_its_not_before(
    tmp_path: Path, sink: SmtpSink
) -> None:
    """Held from 22:30 to 07:00 and then refused for a while by the phone company: it is
    retried for a day from 07:00, not given up a day after the release."""
    s = site(tmp_path, tokyo(7, 22, 30))
    s.config = make_config(tmp_path, relay={"url": sink.url})
    clock = s.clock
    assert isinstance(clock, FakeClock)
    alert_id = s.alerts.intake(DRAFT, Source(None, "sato"))
    s.alerts.send_now(alert_id, "sato")
    s.alerts.release(alert_id)
    for name in RESIDENTS:
        if name != "day":
            sink.accept(f"{name}@example.jp")
    sink.fail_temporarily("day@example.jp")

    async def scenario() -> None:
        relay = open_relay(s.config.relay, s.config.smtp.hostname)
        fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, clock)
        try:
            await fanout.send_batch()  # 22:30: the ones not held
            clock.set(tokyo(8, 7).astimezone(dt.UTC))
            assert await fanout.send_batch()  # 07:00: day's first try, refused
            clock.set(tokyo(8, 23).astimezone(dt.UTC))  # 24.5 h after the release
            assert await fanout.send_batch()
        finally:
            await relay.close()

    asyncio.run(scenario())
    with s.db.transaction() as session:
        status = session.scalar(
            select(Delivery.status)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.address == "day@example.jp")
        )
    assert status == "deferred"
    s.db.dispose()
