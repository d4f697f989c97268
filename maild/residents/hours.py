"""A resident's own receiving hours (issue 18 item 5), as plain data.

A resident may take non-urgent alerts only between two local times of the service time
zone, say 07:00–21:00; a window whose start is later than its end crosses midnight
(22:00–06:00). Urgent alerts go at once unless they also chose "urgent alerts too".
Times are minutes after local midnight, in steps of :data:`STEP` so that the pages offer
a short list and the release can map every possible start to its next time in one
statement (:mod:`maild.alerts.hours`). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from maild.residents.choices import ChoiceError
from maild.residents.terms import HOURS

STEP = 30  # minutes between the times a resident can choose
DAY = 24 * 60
CHOICES = tuple(range(0, DAY, STEP))

# The words of the pages and the completion mail.
HOURS_JA, HOURS_EN = HOURS.ja, HOURS.en
ANY_TIME_JA, ANY_TIME_EN = "いつでも", "any time"
URGENT_TOO_JA = "緊急の情報も時間帯を守る"
URGENT_TOO_EN = "urgent alerts also wait for these hours"
URGENT_AT_ONCE_JA = "緊急の情報は時間外でもすぐ届きます"
URGENT_AT_ONCE_EN = "urgent alerts come at once, even outside these hours"


class HoursError(ChoiceError):
    """The chosen hours cannot be saved; the text is for the page."""


@dataclass(frozen=True)
class Hours:
    start: int | None = None  # None: any time
    end: int | None = None
    urgent_too: bool = False

    @property
    def any_time(self) -> bool:
        return self.start is None or self.end is None

    def contains(self, minute: int) -> bool:
        """Whether ``minute`` (after local midnight) is inside the window."""
        if self.start is None or self.end is None:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # crosses midnight

    def holds(self, urgent: bool) -> bool:
        """Whether an alert of this urgency waits for the window at all."""
        return not self.any_time and (self.urgent_too or not urgent)

    def describe(self, lang: str = "ja") -> str:
        """「07:00〜21:00（緊急の情報は時間外でもすぐ届きます）」, or 「いつでも」."""
        if self.start is None or self.end is None:
            return ANY_TIME_EN if lang == "en" else ANY_TIME_JA
        span = f"{clock_text(self.start)}–{clock_text(self.end)}"
        if lang == "en":
            return f"{span} ({URGENT_TOO_EN if self.urgent_too else URGENT_AT_ONCE_EN})"
        span = span.replace("–", "〜")
        return f"{span}（{URGENT_TOO_JA if self.urgent_too else URGENT_AT_ONCE_JA}）"


ANY_TIME = Hours()


def clock_text(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_clock(text: str) -> int | None:
    """``"07:00"`` → 420; ``""`` → None; anything else (or off the steps) raises."""
    text = text.strip()
    if not text:
        return None
    hour, sep, minute = text.partition(":")
    if not (sep and hour.isdigit() and minute.isdigit() and len(minute) == 2):
        raise _bad_time()
    value = int(hour) * 60 + int(minute)
    if int(hour) > 23 or int(minute) > 59 or value % STEP:
        raise _bad_time()
    return value


def parse_hours(start: str, end: str, urgent_too: bool) -> Hours:
    """The form's two times (both empty: any time) and its "urgent too" box."""
    first, last = parse_clock(start), parse_clock(end)
    if first is None and last is None:
        return ANY_TIME
    if first is None or last is None:
        raise HoursError(
            f"{HOURS_JA}は、始まりと終わりの両方を選んでください（「{ANY_TIME_JA}」なら両方とも空に）。",
            f"Choose both the start and the end of the {HOURS_EN} (or neither, for any time).",
        )
    if first == last:
        raise HoursError(
            f"{HOURS_JA}の始まりと終わりが同じです。違う時刻を選んでください。",
            f"The {HOURS_EN} start and end at the same time; choose two different times.",
        )
    return Hours(first, last, urgent_too)


# The subscribers CSV's ``hours`` field (docs/csv.md): empty for any time, "07:00-21:00",
# and " urgent" after it when urgent alerts wait for the hours too.
CSV_URGENT = ("urgent", "緊急も")
_CSV_HOURS = re.compile(r"(\d{1,2}:\d{2})\s*[-~〜–]\s*(\d{1,2}:\d{2})\s*(.*)")


def csv_text(hours: Hours) -> str:
    """``hours`` as the CSV writes it: ``""``, ``"07:00-21:00"`` or ``"07:00-21:00 urgent"``."""
    if hours.start is None or hours.end is None:
        return ""
    text = f"{clock_text(hours.start)}-{clock_text(hours.end)}"
    return f"{text} {CSV_URGENT[0]}" if hours.urgent_too else text


def parse_csv(text: str) -> Hours:
    """A CSV ``hours`` field (full-width digits too, as Excel may save them)."""
    normal = unicodedata.normalize("NFKC", text).strip()
    if not normal:
        return ANY_TIME
    found = _CSV_HOURS.fullmatch(normal)
    rest = found.group(3).strip().casefold() if found else ""
    try:
        if found is None or rest not in ("", *CSV_URGENT):
            raise ValueError(normal)
        return parse_hours(found.group(1), found.group(2), bool(rest))
    except ValueError:  # HoursError too: the page's wording does not fit a file
        raise HoursError(
            f"{HOURS_JA}が正しくありません。30分きざみの違う2つの時刻を 07:00-21:00 のように"
            "（緊急の情報も待つなら 07:00-21:00 urgent、いつでもなら空欄）",
            f"the {HOURS_EN} are not valid: two different times on the half hour, as"
            " 07:00-21:00 (07:00-21:00 urgent if urgent alerts wait too; empty for any time)",
        ) from None


def _bad_time() -> HoursError:
    return HoursError(
        f"{HOURS_JA}の時刻が正しくありません。一覧から選んでください。",
        f"A time of the {HOURS_EN} is not valid; choose one from the list.",
    )


def next_starts(now: dt.datetime, tz: ZoneInfo) -> dict[int, dt.datetime]:
    """For every time a window can start, when it next starts (UTC) at or after ``now``.

    Local wall-clock times: a start that a DST change skips is read as the zoneinfo
    library reads it (shifted by the gap), which is never earlier than asked.
    """
    local = now.astimezone(tz)
    today = local.date()
    result: dict[int, dt.datetime] = {}
    for minute in CHOICES:
        for day in (today, today + dt.timedelta(days=1)):
            start = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=tz)
            if start >= local:
                result[minute] = start.astimezone(dt.UTC)
                break
    return result


def not_before(hours: Hours, urgent: bool, now: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
    """When an alert released at ``now`` may go to a resident with ``hours`` (None: at once).

    The release itself computes this in SQL for many residents at once
    (:mod:`maild.alerts.hours`); this is the same rule for one, and what its tests check.
    """
    local = now.astimezone(tz)
    if not hours.holds(urgent) or hours.contains(local.hour * 60 + local.minute):
        return None
    assert hours.start is not None
    return next_starts(now, tz).get(hours.start)
