"""When held alerts go out: one APScheduler job per scheduled alert, derived from the table.

The alerts table is the truth. Each scheduled alert gets an APScheduler 3 job
(``release-ID``, in a memory job store) that fires at its release time and calls
``Alerts.release``; that call is the only thing that releases an alert, and it is
guarded in the database, so an alert is released exactly once however often a
job fires. Nothing is persisted in the scheduler: at start :meth:`sync` builds the
jobs from the table, so an alert that came due while the daemon was down fires at
once, and a job store left by an older version (0.1.0 pickled
``maild.scheduler:release_job`` into ``apscheduler_jobs``) is never read; migration
0005 drops that table.

One periodic chore stays, :meth:`sync` every ``SYNC_SECONDS``. It releases
nothing; it only adds, moves and removes jobs, for two things the scheduler
cannot see by itself:

- changes made by another process: ``maild alerts approve`` / ``send-now`` /
  ``cancel`` write the table from the command line, and the daemon has no other
  way to hear of them (tests/test_alerts_flow.py::test_approval_rules fails
  without it);
- a service clock that is not the wall clock. APScheduler waits on the wall
  clock; a job's wall-clock time is its release time minus the clock's offset
  from the wall clock, and when that offset changes (a test rewrites the clock
  file) the jobs are moved with ``modify_job`` so due ones fire at once
  (tests/test_release.py shows both).

With the system clock the offset is zero, and a sync that finds nothing changed
touches no job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from maild.alerts.workflow import Alerts
from maild.common.clock import Clock

log = logging.getLogger("maild.alerts.release")

SYNC_SECONDS = 1.0
# A job closer than this to where it should be is left alone (a fake clock's offset
# drifts by the time between two readings).
TOLERANCE = dt.timedelta(milliseconds=500)
RELEASES = "releases"  # the job store of release jobs
CHORES = "chores"  # periodic jobs (the sync itself, housekeeping)
# How long the stop waits for jobs under way (a housekeeping pass erasing many rows).
SHUTDOWN_WAIT_SECONDS = 60.0

P = ParamSpec("P")
R = TypeVar("R")


class _UnderWay:
    """How many jobs are running now.

    The stop waits for them itself: AsyncIOScheduler runs blocking jobs in the loop's
    default executor, whose ``shutdown(wait=True)`` does not wait (and APScheduler 3.11
    queues the shutdown onto the loop), while the daemon closes the database next.
    """

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def counted(self, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._changed:
                self._count += 1
            try:
                return func(*args, **kwargs)
            finally:
                with self._changed:
                    self._count -= 1
                    self._changed.notify_all()

        return run

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)


def job_id(alert_id: int) -> str:
    return f"release-{alert_id}"


class ReleaseScheduler:
    def __init__(
        self,
        alerts: Alerts,
        clock: Clock,
        on_release: Callable[[int], None] = lambda alert_id: None,
        sync_every: float = SYNC_SECONDS,
    ) -> None:
        self.alerts = alerts
        self.sync_every = sync_every
        self.clock = clock
        self.on_release = on_release
        self._sync_lock = threading.Lock()  # intake and the periodic sync may overlap
        self._under_way = _UnderWay()
        self._scheduler = AsyncIOScheduler(
            jobstores={RELEASES: MemoryJobStore(), CHORES: MemoryJobStore()},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=dt.UTC,
        )

    def start(self) -> None:
        """Start on the running loop; the first sync (the start-up reconcile) runs at once."""
        self._scheduler.start()
        self.every(dt.timedelta(seconds=self.sync_every), self.sync, "sync")

    async def shutdown(self) -> None:
        """Stop, and wait for the jobs under way (housekeeping, the heartbeat): the daemon
        closes the database next, and a job still holding a connection would outlive it."""
        if not self._scheduler.running:
            return
        self._scheduler.shutdown(wait=False)
        while self._scheduler.running:  # the shutdown may be queued onto this loop
            await asyncio.sleep(0.01)
        if not await asyncio.to_thread(self._under_way.wait_idle, SHUTDOWN_WAIT_SECONDS):
            log.warning("jobs still running after %.0f s; stopping anyway", SHUTDOWN_WAIT_SECONDS)

    def every(self, interval: dt.timedelta, func: Callable[[], object], name: str) -> None:
        """Run ``func`` (blocking; in a worker thread) every ``interval``, first at start."""
        self._scheduler.add_job(
            self._under_way.counted(func),
            "interval",
            seconds=interval.total_seconds(),
            id=name,
            jobstore=CHORES,
            next_run_time=dt.datetime.now(dt.UTC),
            replace_existing=True,
        )

    def run_now(self, name: str) -> None:
        """Run the periodic job ``name`` once now; its interval goes on from there."""
        self._scheduler.modify_job(name, jobstore=CHORES, next_run_time=dt.datetime.now(dt.UTC))

    def release(self, alert_id: int) -> int | None:
        """The job function: release if due by the service clock (blocking; a worker thread).

        A job that fires early (the service clock was moved back) releases nothing; the
        next sync gives the alert a new job.
        """
        count = self.alerts.release(alert_id)
        if count is not None:
            self.on_release(alert_id)
        return count

    def waiting(self) -> list[int]:
        """The alerts that have a release job, soonest first."""
        jobs = self._scheduler.get_jobs(jobstore=RELEASES)
        return [int(job.id.removeprefix("release-")) for job in jobs]

    def sync(self) -> None:
        """Make the jobs match the scheduled alerts of the table (blocking: a worker thread)."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        offset = self.clock.now() - dt.datetime.now(dt.UTC)
        scheduled = dict(self.alerts.due())
        for alert_id, release_at in scheduled.items():
            fire_at = release_at - offset
            job = self._scheduler.get_job(job_id(alert_id), jobstore=RELEASES)
            if job is None:
                self._scheduler.add_job(
                    self._under_way.counted(self.release),
                    "date",
                    run_date=fire_at,
                    args=[alert_id],
                    id=job_id(alert_id),
                    jobstore=RELEASES,
                )
            elif job.next_run_time is None or abs(job.next_run_time - fire_at) > TOLERANCE:
                self._scheduler.modify_job(job.id, jobstore=RELEASES, next_run_time=fire_at)
        for job in self._scheduler.get_jobs(jobstore=RELEASES):
            if int(job.id.removeprefix("release-")) not in scheduled:
                try:
                    self._scheduler.remove_job(job.id, jobstore=RELEASES)
                except JobLookupError:  # it fired meanwhile
                    pass
