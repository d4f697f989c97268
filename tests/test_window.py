"""The sending window against the real Japanese calendar (holidays package, no mocks)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from maild.alerts.window import (
    WindowRules,
    closes_at,
    is_closed_day,
    is_open,
    next_open,
    release_time,
)
from maild.common.config import WindowConfig

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
def rules() -> WindowRules:
    return WindowRules.from_config(WindowConfig(), "Asia/Tokyo")


def jst(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=TOKYO)


# --- closed days ---------------------------------------------------------------


def test_ordinary_weekday_is_open(rules: WindowRules) -> None:
    assert is_closed_day(rules, dt.date(2026, 12, 1)) is None  # a Tuesday


def test_weekend_is_closed(rules: WindowRules) -> None:
    assert is_closed_day(rules, dt.date(2026, 12, 5)) == "weekend"
    assert is_closed_day(rules, dt.date(2026, 12, 6)) == "weekend"


@pytest.mark.parametrize(
    ("day", "name"),
    [
        (dt.date(2026, 2, 23), "天皇誕生日"),
        (dt.date(2026, 5, 6), "振替休日"),  # こどもの日 … 憲法記念日 on Sunday 5/3
        (dt.date(2025, 2, 24), "振替休日"),  # 天皇誕生日 on Sunday 2/23
        (dt.date(2026, 9, 22), "国民の休日"),  # between 敬老の日 9/21 and 秋分の日 9/23
        (dt.date(2026, 9, 21), "敬老の日"),
        (dt.date(2026, 9, 23), "秋分の日"),
    ],
)
def test_national_holidays_are_closed(rules: WindowRules, day: dt.date, name: str) -> None:
    assert day.weekday() < 5
    assert is_closed_day(rules, day) == f"holiday: {name}"


def test_year_end_dates_are_closed(rules: WindowRules) -> None:
    # 2026-12-29 is a Tuesday and no national holiday: only closed_dates closes it.
    assert is_closed_day(rules, dt.date(2026, 12, 29)) == "closed date 12-29"
    assert is_closed_day(rules, dt.date(2027, 1, 1)) == "holiday: 元日"
    assert is_closed_day(rules, dt.date(2026, 12, 28)) is None


def test_days_not_listed_are_closed() -> None:
    rules = WindowRules.from_config(
        WindowConfig(days=("mon", "tue", "thu", "fri", "sat")), "Asia/Tokyo"
    )
    assert is_closed_day(rules, dt.date(2026, 12, 2)) == "no sending on wed"
    assert is_closed_day(rules, dt.date(2026, 12, 5)) is None  # Saturday listed
    assert is_closed_day(rules, dt.date(2026, 12, 6)) == "weekend"


def test_holidays_can_be_turned_off() -> None:
    rules = WindowRules.from_config(WindowConfig(holidays=""), "Asia/Tokyo")
    assert is_closed_day(rules, dt.date(2026, 5, 6)) is None


# --- minutes at the edges ----------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (jst(2026, 12, 1, 8, 29, 59), False),
        (jst(2026, 12, 1, 8, 30), True),
        (jst(2026, 12, 1, 12, 0), True),
        (jst(2026, 12, 1, 17, 14, 59), True),
        (jst(2026, 12, 1, 17, 15), False),
        (jst(2026, 12, 1, 23, 59, 59), False),
        (jst(2026, 12, 5, 12, 0), False),  # Saturday
        (jst(2026, 5, 6, 12, 0), False),  # 振替休日
    ],
)
def test_is_open_edges(rules: WindowRules, moment: dt.datetime, expected: bool) -> None:
    assert is_open(rules, moment) is expected


def test_next_open_is_at_itself_when_open(rules: WindowRules) -> None:
    moment = jst(2026, 12, 1, 17, 14, 59)
    assert next_open(rules, moment) == moment
    assert next_open(rules, jst(2026, 12, 1, 8, 30)) == jst(2026, 12, 1, 8, 30)


def test_next_open_before_start_is_the_same_morning(rules: WindowRules) -> None:
    assert next_open(rules, jst(2026, 12, 1, 8, 29, 59)) == jst(2026, 12, 1, 8, 30)
    assert next_open(rules, jst(2026, 12, 1, 0, 0)) == jst(2026, 12, 1, 8, 30)


def test_next_open_after_end_is_the_next_morning(rules: WindowRules) -> None:
    assert next_open(rules, jst(2026, 12, 1, 17, 15)) == jst(2026, 12, 2, 8, 30)


def test_next_open_over_golden_week(rules: WindowRules) -> None:
    # Thu 4/30 evening → Fri 5/1 open; Fri 5/1 evening → 5/2-5/6 closed → Thu 5/7.
    assert next_open(rules, jst(2026, 4, 30, 18, 0)) == jst(2026, 5, 1, 8, 30)
    assert next_open(rules, jst(2026, 5, 1, 17, 15)) == jst(2026, 5, 7, 8, 30)


def test_next_open_over_silver_week(rules: WindowRules) -> None:
    # Fri 9/18 evening; Sat, Sun, 敬老の日, 国民の休日, 秋分の日 → Thu 9/24.
    assert next_open(rules, jst(2026, 9, 18, 17, 15)) == jst(2026, 9, 24, 8, 30)


def test_next_open_over_substitute_holiday_2025(rules: WindowRules) -> None:
    assert next_open(rules, jst(2025, 2, 21, 17, 15)) == jst(2025, 2, 25, 8, 30)


def test_year_end_2025(rules: WindowRules) -> None:
    # 2025-12-26 is the last Friday; 12-27/28 weekend, 12-29..01-03 closed,
    # 2026-01-04 a Sunday, so the next opening is Monday 2026-01-05.
    assert dt.date(2025, 12, 26).weekday() == 4
    assert is_open(rules, jst(2025, 12, 26, 17, 14))
    assert next_open(rules, jst(2025, 12, 26, 17, 14)) == jst(2025, 12, 26, 17, 14)
    assert next_open(rules, jst(2025, 12, 26, 17, 15)) == jst(2026, 1, 5, 8, 30)


def test_year_end_2026(rules: WindowRules) -> None:
    # 2026-12-26 is a Saturday: the last open day is Monday 12-28; the next
    # opening is Monday 2027-01-04 (成人の日 is 01-11 that year).
    assert dt.date(2026, 12, 26).weekday() == 5
    assert next_open(rules, jst(2026, 12, 25, 17, 15)) == jst(2026, 12, 28, 8, 30)
    assert next_open(rules, jst(2026, 12, 28, 17, 15)) == jst(2027, 1, 4, 8, 30)
    assert next_open(rules, jst(2026, 12, 31, 23, 0)) == jst(2027, 1, 4, 8, 30)


def test_next_open_is_in_the_rules_zone(rules: WindowRules) -> None:
    result = next_open(rules, dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC))
    assert result is not None
    assert result.tzinfo == TOKYO
    assert result.utcoffset() == dt.timedelta(hours=9)


def test_no_open_day_at_all() -> None:
    rules = WindowRules.from_config(WindowConfig(days=()), "Asia/Tokyo")
    assert next_open(rules, jst(2026, 12, 1, 9, 0)) is None
    assert release_time(rules, jst(2026, 12, 1, 9, 0), urgent=False, send_after=None) is None
    assert release_time(rules, jst(2026, 12, 1, 9, 0), urgent=True, send_after=None) == jst(
        2026, 12, 1, 9, 0
    )


# --- time zones --------------------------------------------------------------------


def test_moments_in_other_zones_are_converted(rules: WindowRules) -> None:
    # 08:30 JST on Tue 2026-12-01 is 23:30 UTC and 18:30 EST on Mon 11-30.
    assert not is_open(rules, dt.datetime(2026, 11, 30, 23, 29, 59, tzinfo=dt.UTC))
    assert is_open(rules, dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC))
    assert not is_open(rules, dt.datetime(2026, 11, 30, 18, 29, tzinfo=NEW_YORK))
    assert is_open(rules, dt.datetime(2026, 11, 30, 18, 30, tzinfo=NEW_YORK))
    # Monday noon in New York is Tuesday 02:00 in Tokyo: closed until 08:30.
    assert next_open(rules, dt.datetime(2026, 11, 30, 12, 0, tzinfo=NEW_YORK)) == jst(
        2026, 12, 1, 8, 30
    )
    # Friday 2026-12-04 15:00 UTC is Saturday 00:00 JST.
    assert next_open(rules, dt.datetime(2026, 12, 4, 15, 0, tzinfo=dt.UTC)) == jst(
        2026, 12, 7, 8, 30
    )


def test_foreign_deployment_without_holidays() -> None:
    rules = WindowRules.from_config(
        WindowConfig(start="09:00", end="17:00", holidays="", closed_dates=("12-24",)),
        "Europe/Berlin",
    )
    # Japanese holidays do not apply; Berlin wall-clock time does.
    assert is_open(rules, dt.datetime(2026, 5, 6, 9, 0, tzinfo=BERLIN))
    assert is_open(rules, dt.datetime(2026, 5, 6, 7, 0, tzinfo=dt.UTC))  # CEST: 09:00
    assert not is_open(rules, dt.datetime(2026, 5, 6, 6, 59, tzinfo=dt.UTC))
    assert is_open(rules, dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC))  # CET: 09:00
    assert is_closed_day(rules, dt.date(2026, 12, 24)) == "closed date 12-24"
    # Across the spring DST change (Sunday 2026-03-29) the opening is still 09:00 local.
    result = next_open(rules, dt.datetime(2026, 3, 27, 17, 0, tzinfo=BERLIN))
    assert result == dt.datetime(2026, 3, 30, 9, 0, tzinfo=BERLIN)
    assert result is not None and result.utcoffset() == dt.timedelta(hours=2)


def test_holiday_names_follow_the_country() -> None:
    rules = WindowRules.from_config(WindowConfig(holidays="DE"), "Europe/Berlin")
    reason = is_closed_day(rules, dt.date(2026, 10, 3))  # Tag der Deutschen Einheit, a Saturday
    assert reason == "weekend"
    assert is_closed_day(rules, dt.date(2025, 10, 3)) == "holiday: Tag der Deutschen Einheit"


# --- closes_at and release_time -----------------------------------------------------


def test_closes_at(rules: WindowRules) -> None:
    assert closes_at(rules, jst(2026, 12, 1, 9, 0)) == jst(2026, 12, 1, 17, 15)
    assert closes_at(rules, dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)) == jst(
        2026, 12, 1, 17, 15
    )
    assert closes_at(rules, jst(2026, 12, 1, 17, 15)) is None
    assert closes_at(rules, jst(2026, 12, 5, 12, 0)) is None


def test_release_inside_window_is_now(rules: WindowRules) -> None:
    at = jst(2026, 12, 1, 10, 0)
    assert release_time(rules, at, urgent=False, send_after=None) == at


def test_release_outside_window_waits(rules: WindowRules) -> None:
    at = jst(2026, 12, 1, 20, 0)
    assert release_time(rules, at, urgent=False, send_after=None) == jst(2026, 12, 2, 8, 30)


def test_urgent_ignores_the_window(rules: WindowRules) -> None:
    at = jst(2026, 12, 5, 2, 0)  # Saturday night
    assert release_time(rules, at, urgent=True, send_after=None) == at
    assert release_time(rules, jst(2026, 12, 31, 23, 0), urgent=True, send_after=None) == jst(
        2026, 12, 31, 23, 0
    )


def test_urgent_still_waits_for_send_after(rules: WindowRules) -> None:
    at = jst(2026, 12, 5, 2, 0)
    later = jst(2026, 12, 5, 3, 0)
    assert release_time(rules, at, urgent=True, send_after=later) == later
    earlier = jst(2026, 12, 4, 3, 0)
    assert release_time(rules, at, urgent=True, send_after=earlier) == at


def test_send_after_later_than_next_opening(rules: WindowRules) -> None:
    at = jst(2026, 12, 1, 20, 0)  # next opening Wed 08:30
    assert release_time(rules, at, urgent=False, send_after=jst(2026, 12, 2, 10, 0)) == jst(
        2026, 12, 2, 10, 0
    )
    # A send_after after Friday's closing goes to Monday's opening.
    assert release_time(rules, at, urgent=False, send_after=jst(2026, 12, 4, 17, 30)) == jst(
        2026, 12, 7, 8, 30
    )


def test_send_after_in_the_past_changes_nothing(rules: WindowRules) -> None:
    at = jst(2026, 12, 1, 10, 0)
    assert release_time(rules, at, urgent=False, send_after=jst(2026, 11, 1, 10, 0)) == at


def test_release_time_is_in_the_rules_zone(rules: WindowRules) -> None:
    at = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # 10:00 JST
    result = release_time(rules, at, urgent=True, send_after=None)
    assert result == at
    assert result is not None and result.tzinfo == TOKYO


# --- programming errors -------------------------------------------------------------


def test_naive_datetimes_are_refused(rules: WindowRules) -> None:
    naive = dt.datetime(2026, 12, 1, 10, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(rules, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_open(rules, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        closes_at(rules, naive)
    with pytest.raises(ValueError, match="send_after"):
        release_time(rules, jst(2026, 12, 1, 10, 0), urgent=True, send_after=naive)


@pytest.mark.parametrize(
    ("window", "timezone", "message"),
    [
        (WindowConfig(), "Mars/Olympus", "time zone"),
        (WindowConfig(days=("mon", "someday")), "Asia/Tokyo", "weekday"),
        (WindowConfig(start="17:15", end="08:30"), "Asia/Tokyo", "later than start"),
        (WindowConfig(start="8h30"), "Asia/Tokyo", "HH:MM"),
        (WindowConfig(closed_dates=("02-30",)), "Asia/Tokyo", "MM-DD"),
        (WindowConfig(holidays="XX"), "Asia/Tokyo", "country code"),
    ],
)
def test_bad_rules_are_refused(window: WindowConfig, timezone: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowRules.from_config(window, timezone)


def test_rules_are_frozen_and_comparable(rules: WindowRules) -> None:
    again = WindowRules.from_config(WindowConfig(), "Asia/Tokyo")
    assert again == rules
    assert hash(again) == hash(rules)
    with pytest.raises(AttributeError):
        rules.start = dt.time(9, 0)  # type: ignore[misc]
