"""The one source of "now".

Everything that needs the time takes a :class:`Clock`; tests pass a
:class:`FakeClock` and move it forward instead of sleeping (Mailman's
``factory.fast_forward``).
"""

from __future__ import annotations

import datetime as dt
import threading

UTC = dt.UTC


class Clock:
    """Wall-clock time, always timezone-aware UTC."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def timestamp(self) -> int:
        """Whole seconds since the epoch (what itsdangerous signs)."""
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
