"""The clocks' timestamps: the system clock's, and the ones tests move by hand."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from maild.common.clock import UTC, Clock, FakeClock, FileClock


def test_the_system_clock_stamps_the_current_second() -> None:
    before = int(time.time())
    stamp = Clock().timestamp()
    assert before <= stamp <= int(time.time())
    assert abs(stamp - Clock().now().timestamp()) < 2


def test_clocks_that_tell_their_own_time_stamp_that_time(tmp_path: Path) -> None:
    moment = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    fake = FakeClock(moment)
    assert fake.timestamp() == int(moment.timestamp())
    fake.set(moment + dt.timedelta(hours=1))
    assert fake.timestamp() == int(moment.timestamp()) + 3600
    path = tmp_path / "now"
    path.write_text("2031-05-06T07:08:09+09:00", encoding="ascii")
    assert FileClock(str(path)).timestamp() == int(moment.timestamp()) - 9 * 3600
