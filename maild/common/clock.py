"""The one source of "now".

Everything that needs the time takes a :class:`Clock`; tests pass a
:class:`FakeClock` and move it forward instead of sleeping (Mailman's
``factory.fast_forward``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

UTC = dt.UTC


def local_text(at: dt.datetime, tz: dt.tzinfo) -> str:
    """``at`` as operators read it: ISO 8601 in the service's time zone, to the second.
    Microseconds are noise to a person and make two listings of one moment differ."""
    return at.astimezone(tz).replace(microsecond=0).isoformat()


class Clock:
    """Wall-clock time, always timezone-aware UTC."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def timestamp(self) -> int:
        """Whole seconds since the epoch (what itsdangerous signs)."""
        if type(self).now is Clock.now:
            # The same system clock without building a datetime: every page signs and
            # checks a token, and the datetime was a tenth of that.
            return int(time.time())
        return int(self.now().timestamp())


class FakeClock(Clock):
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def set(self, moment: dt.datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("FakeClock.set needs a timezone-aware moment")
        with self._lock:
            self._now = moment.astimezone(UTC)

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._now += dt.timedelta(**delta)


class FileClock(Clock):
    """Reads "now" from a file holding an ISO 8601 moment: the daemon's clock for tests.

    A test (or a rehearsal of a holiday send) passes the file's path in
    ``MAILD_CLOCK_FILE`` and rewrites the file to move the daemon's time; nothing
    sleeps. An unreadable file is a hard error rather than a silent fall-back.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def now(self) -> dt.datetime:
        with open(self.path, encoding="ascii") as f:
            moment = dt.datetime.fromisoformat(f.read().strip())
        if moment.tzinfo is None:
            raise ValueError(f"{self.path}: the moment needs a UTC offset")
        return moment.astimezone(UTC)


def clock_from_environment() -> Clock:
    import os

    path = os.environ.get("MAILD_CLOCK_FILE")
    return FileClock(path) if path else Clock()
