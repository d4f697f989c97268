"""maild.common.throttle: a flood of one kind of event is one log line a minute."""

from __future__ import annotations

import logging

import pytest

from maild.common.throttle import LogThrottle


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_at_once_then_once_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    ticks = Ticks()
    throttle = LogThrottle(logging.getLogger("maild.test"), monotonic=ticks)
    with caplog.at_level(logging.WARNING, logger="maild.test"):
        for second in range(180):  # three minutes of ten refusals a second
            ticks.now = float(second)
            for _ in range(10):
                throttle.warning(
                    "deferred:hourly", "mail from %s deferred: %s limit", "p", "hourly"
                )
        throttle.warning("deferred:per-ip", "mail from %s deferred: %s limit", "q", "per-ip")
        throttle.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "mail from p deferred: hourly limit"
    assert lines[1] == (
        "mail from p deferred: hourly limit (and 599 more like it in the last 60 s, not logged)"
    )
    assert lines[2].endswith("(and 599 more like it in the last 60 s, not logged)")
    assert lines[3] == "mail from q deferred: per-ip limit"  # another kind: at once
    assert lines[4] == "599 more deferred:hourly not logged"
    assert len(lines) == 5  # 1,801 events, 5 lines
