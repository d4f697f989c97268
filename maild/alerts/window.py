"""The sending window (docs/alert-files.md): when a non-urgent alert may start going out.

Pure functions of the rules, the holiday calendar and a moment; nothing here
reads the clock. Callers pass "now" from their :class:`maild.common.clock.Clock`.

A day is closed when its weekday is not listed, when it is a national holiday
(the ``holidays`` package, e.g. JP with 振替休日 and 国民の休日), or when its
month-day is in ``closed_dates`` (年末年始). On an open day sending may start
from ``start`` (inclusive) until ``end`` (exclusive), wall-clock time in the
service's time zone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from maild.common.config import WEEKDAYS, WindowConfig

# Far enough to cross any run of closed days a real calendar has, near enough
# that a configuration with no open day at all (days = []) answers quickly.
SEARCH_DAYS = 2 * 366

_PREFERRED_HOLIDAY_LANGUAGE = "ja"


@dataclass(frozen=True)
class WindowRules:
    """The window configuration, converted once into the types the checks need."""

    days: frozenset[int]  # date.weekday() numbers, Monday = 0
    start: dt.time
    end: dt.time
    tz: ZoneInfo
    holiday_country: str = ""  # "" means no national holidays
    holiday_language: str | None = None
    closed_dates: frozenset[tuple[int, int]] = frozenset()  # (month, day)
    # Per-year holiday tables, built on first use: constructing a holidays
    # calendar is slow, and a window check runs for every alert and command.
    # A race between threads only builds the same table twice.
    _holiday_years: dict[int, dict[dt.date, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must be later than start {self.start}")
        if not self.days <= frozenset(range(7)):
            raise ValueError(f"window days must be weekday numbers 0-6, not {sorted(self.days)}")

    @classmethod
    def from_config(cls, window: WindowConfig, timezone: str) -> WindowRules:
        """Convert ``[window]`` and ``service.timezone``; raise ValueError on a bad value."""
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{timezone!r} is not a known time zone") from None
        days = set()
        for name in window.days:
            if name not in WEEKDAYS:
                raise ValueError(f"{name!r} is not a weekday ({', '.join(WEEKDAYS)})")
            days.add(WEEKDAYS.index(name))
        language = None
        if window.holidays:
            try:
                calendar = holidays.country_holidays(window.holidays)
            except NotImplementedError:
                raise ValueError(f"{window.holidays!r} is not a holiday country code") from None
            # Always name the language: left unset, holidays follows the
            # process locale and names would differ between machines.
            if _PREFERRED_HOLIDAY_LANGUAGE in calendar.supported_languages:
                language = _PREFERRED_HOLIDAY_LANGUAGE
            else:
                language = calendar.default_language
        return cls(
            days=frozenset(days),
            start=_parse_hhmm(window.start),
            end=_parse_hhmm(window.end),
            tz=tz,
            holiday_country=window.holidays,
            holiday_language=language,
            closed_dates=frozenset(_parse_mmdd(text) for text in window.closed_dates),
        )

    def holiday_name(self, day: dt.date) -> str | None:
        """The national holiday's name on ``day``, or None."""
        if not self.holiday_country:
            return None
        table = self._holiday_years.get(day.year)
        if table is None:
            calendar = holidays.country_holidays(
                self.holiday_country, years=day.year, language=self.holiday_language
            )
            table = {d: str(name) for d, name in calendar.items() if d.year == day.year}
            self._holiday_years[day.year] = table
        return table.get(day)


def _parse_hhmm(text: str) -> dt.time:
    try:
        hours, minutes = text.split(":")
        return dt.time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"{text!r} is not a time HH:MM") from None


def _parse_mmdd(text: str) -> tuple[int, int]:
    try:
        month, day = (int(part) for part in text.split("-"))
        dt.date(2000, month, day)  # a leap year, so 02-29 is allowed
    except ValueError:
        raise ValueError(f"{text!r} is not a date MM-DD") from None
    return month, day


def _local(rules: WindowRules, at: dt.datetime, what: str = "at") -> dt.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not naive {at.isoformat()}")
    return at.astimezone(rules.tz)


def _moment(rules: WindowRules, day: dt.date, time: dt.time) -> dt.datetime:
    # The round trip through UTC turns a wall time that does not exist (inside
    # a DST gap) into the real instant just after the gap.
    naive = dt.datetime.combine(day, time, tzinfo=rules.tz)
    return naive.astimezone(dt.UTC).astimezone(rules.tz)


def is_closed_day(rules: WindowRules, day: dt.date) -> str | None:
    """None when ``day`` is an open day; else why it is closed (for logs and ``maild window``)."""
    if day.weekday() not in rules.days:
        return "weekend" if day.weekday() >= 5 else f"no sending on {WEEKDAYS[day.weekday()]}"
    holiday = rules.holiday_name(day)
    if holiday is not None:
        return f"holiday: {holiday}"
    if (day.month, day.day) in rules.closed_dates:
        return f"closed date {day.month:02d}-{day.day:02d}"
    return None


def is_open(rules: WindowRules, at: dt.datetime) -> bool:
    """Whether sending may start at ``at`` (any aware datetime)."""
    local = _local(rules, at)
    return rules.start <= local.time() < rules.end and is_closed_day(rules, local.date()) is None


def next_open(rules: WindowRules, at: dt.datetime) -> dt.datetime | None:
    """The earliest moment >= ``at`` when sending is allowed, in the rules' zone.

    ``at`` itself when the window is open; None when no day in the next two
    years is open (e.g. ``days = []``).
    """
    local = _local(rules, at)
    day = local.date()
    if is_closed_day(rules, day) is None:
        if local.time() < rules.start:
            return max(_moment(rules, day, rules.start), local)
        if local.time() < rules.end:
            return local
    for offset in range(1, SEARCH_DAYS + 1):
        candidate = day + dt.timedelta(days=offset)
        if is_closed_day(rules, candidate) is None:
            return _moment(rules, candidate, rules.start)
    return None


def closes_at(rules: WindowRules, at: dt.datetime) -> dt.datetime | None:
    """When the window open at ``at`` closes, in the rules' zone; None if it is closed."""
    if not is_open(rules, at):
        return None
    return _moment(rules, _local(rules, at).date(), rules.end)


def release_time(
    rules: WindowRules,
    at: dt.datetime,
    *,
    urgent: bool,
    send_after: dt.datetime | None,
) -> dt.datetime | None:
    """When an alert received at ``at`` may start going out, in the rules' zone.

    Never before ``send_after``; an urgent alert ignores the window (docs/alert-files.md),
    a non-urgent one waits for the next opening. None when no opening exists.
    """
    earliest = _local(rules, at)
    if send_after is not None:
        earliest = max(earliest, _local(rules, send_after, "send_after"))
    if urgent:
        return earliest
    return next_open(rules, earliest)
