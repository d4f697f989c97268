"""The release scheduler in-process: APScheduler jobs built from the alerts table.

The periodic sync is set to an hour here, so each step below is one explicit sync
(what the daemon's periodic one does) and the jobs it leaves behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path

from maild.alerts.alertfile import AlertDraft
from maild.alerts.release import ReleaseScheduler
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.service.services import Services, build_services
from tests.configs import make_config

SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo, closed
MONDAY = dt.datetime(2026, 12, 6, 23, 31, tzinfo=dt.UTC)  # 08:31 in Tokyo, open
HELD = AlertDraft("件名", ("aoba",), "other", False, None, None, "本文", "utf-8")
QUIET = 3600.0  # no periodic sync during a test


def services(tmp_path: Path) -> tuple[Services, FakeClock]:
    clock = FakeClock(SATURDAY)
    return build_services(make_config(tmp_path), clock), clock


async def settle(released: list[int], count: int, within: float = 5.0) -> None:
    """Wait (polling, real time) until ``count`` releases happened; then a little more."""
    deadline = time.monotonic() + within
    while len(released) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # room for a second, wrong release to show up


def test_a_held_alert_fires_once_when_the_clock_moves_past_its_time(tmp_path: Path) -> None:
    s, clock = services(tmp_path)
    alert_id = s.alerts.intake(HELD, Source("claim-1", "sato"))
    released: list[int] = []

    async def main() -> None:
        scheduler = ReleaseScheduler(s.alerts, clock, released.append, sync_every=QUIET)
        scheduler.start()  # the start-up sync gives the held alert its job
        try:
            await settle(released, 1, within=0.3)
            assert released == []
            assert scheduler.waiting() == [alert_id]
            clock.set(MONDAY)
            # Without a sync the job still waits for Monday by the wall clock: observing
            # the clock's move is what makes it fire.
            await settle(released, 1, within=0.3)
            assert released == []
            await asyncio.to_thread(scheduler.sync)
            await settle(released, 1)
            assert released == [alert_id]
            await asyncio.to_thread(scheduler.sync)
            await settle(released, 2, within=0.3)
            assert released == [alert_id]  # exactly once
        finally:
            await scheduler.shutdown()

    try:
        asyncio.run(main())
        assert s.alerts.show(alert_id)["status"] in ("sending", "sent")
    finally:
        s.db.dispose()


def test_what_came_due_while_down_fires_at_start(tmp_path: Path) -> None:
    s, clock = services(tmp_path)
    alert_id = s.alerts.intake(HELD, Source("claim-1", "sato"))
    clock.set(MONDAY)  # the daemon was down over the opening
    released: list[int] = []

    async def main() -> None:
        scheduler = ReleaseScheduler(s.alerts, clock, released.append, sync_every=QUIET)
        scheduler.start()
        try:
            await settle(released, 1)
        finally:
            await scheduler.shutdown()

    try:
        asyncio.run(main())
        assert released == [alert_id]
    finally:
        s.db.dispose()


def test_a_cancelled_alert_loses_its_job_and_is_never_released(tmp_path: Path) -> None:
    s, clock = services(tmp_path)
    alert_id = s.alerts.intake(HELD, Source("claim-1", "sato"))
    released: list[int] = []

    async def main() -> None:
        scheduler = ReleaseScheduler(s.alerts, clock, released.append, sync_every=QUIET)
        scheduler.start()
        try:
            await settle(released, 1, within=0.3)
            # Another process (``maild alerts cancel``) changes the table; a sync sees it.
            s.alerts.cancel(alert_id, "sato")
            await asyncio.to_thread(scheduler.sync)
            assert scheduler.waiting() == []
            clock.set(MONDAY)
            await asyncio.to_thread(scheduler.sync)
            await settle(released, 1, within=0.3)
        finally:
            await scheduler.shutdown()

    try:
        asyncio.run(main())
        assert released == []
    finally:
        s.db.dispose()


def test_shutdown_waits_for_the_jobs_under_way(tmp_path: Path) -> None:
    """The daemon closes the database right after: a housekeeping pass still running
    would hold a connection past it (a psycopg ResourceWarning on PostgreSQL)."""
    s, clock = services(tmp_path)
    started = threading.Event()
    finished = threading.Event()

    def chore() -> None:
        started.set()
        time.sleep(0.5)
        finished.set()

    async def main() -> None:
        scheduler = ReleaseScheduler(s.alerts, clock, sync_every=QUIET)
        scheduler.start()
        try:
            scheduler.every(dt.timedelta(hours=1), chore, "chore")
            assert await asyncio.to_thread(started.wait, 5.0)
        finally:
            await scheduler.shutdown()
        assert finished.is_set()

    try:
        asyncio.run(main())
    finally:
        s.db.dispose()
