"""When held alerts go out: APScheduler jobs in the database, and a reconcile pass.

Each scheduled alert has an APScheduler 3 job (``release-ID``) in a persistent
SQLAlchemy job store in maild's own database, firing at its release time; a
release missed while the daemon was down runs at start (``misfire_grace_time``
None). The alert row stays the truth: a short reconcile pass releases what is
due by the service clock and keeps jobs in step with changes made by other
processes (``maild alerts approve`` / ``send-now`` / ``cancel``). Releasing is
guarded in the database (``Alerts.release``), so however many paths fire,
each alert is released exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from maild.alerts.workflow import Alerts
from maild.common.clock import Clock
from maild.store.db import Database

log = logging.getLogger("maild.alerts.release")

JOB_TABLE = "apscheduler_jobs"
RECONCILE_SECONDS = 1.0

_active: ReleaseScheduler | None = None


def release_job(alert_id: int) -> None:
    """The job function, referenced by name from the job store
    (``maild.alerts.release:release_job``)."""
    if _active is not None:
        _active.release(alert_id)


def job_id(alert_id: int) -> str:
    return f"release-{alert_id}"


class ReleaseScheduler:
    def __init__(
        self,
        db: Database,
        alerts: Alerts,
        clock: Clock,
        on_release: Callable[[int], None] = lambda alert_id: None,
    ) -> None:
        self.db = db
        self.alerts = alerts
        self.clock = clock
        self.on_release = on_release
        self._scheduler = AsyncIOScheduler(
            jobstores={
                "default": SQLAlchemyJobStore(engine=db.engine, tablename=JOB_TABLE),
                # Periodic chores are re-added at every start; nothing to persist.
                "memory": MemoryJobStore(),
            },
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=dt.UTC,
        )

    def start(self) -> None:
        global _active
        _active = self
        self._scheduler.start()

    def shutdown(self) -> None:
        global _active
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if _active is self:
            _active = None

    def schedule(self, alert_id: int, release_at: dt.datetime) -> None:
        self._scheduler.add_job(
            "maild.alerts.release:release_job",
            "date",
            run_date=release_at,
            args=[alert_id],
            id=job_id(alert_id),
            replace_existing=True,
        )

    def every(self, interval: dt.timedelta, func: Callable[[], object], name: str) -> None:
        """Run ``func`` (blocking; in a worker thread) every ``interval``, first at start."""
        self._scheduler.add_job(
            func,
            "interval",
            seconds=interval.total_seconds(),
            id=name,
            jobstore="memory",
            next_run_time=dt.datetime.now(dt.UTC),
            replace_existing=True,
        )

    def unschedule(self, alert_id: int) -> None:
        try:
            self._scheduler.remove_job(job_id(alert_id))
        except JobLookupError:
            pass

    def release(self, alert_id: int) -> int | None:
        """Release now if due (blocking: runs in a worker thread)."""
        count = self.alerts.release(alert_id)
        if count is not None:
            self.on_release(alert_id)
        return count

    async def run(self, stopping: asyncio.Event) -> None:
        """The reconcile pass, every second until stopping."""
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.reconcile)
            except Exception:
                log.exception("reconcile pass failed; retrying")
            try:
                await asyncio.wait_for(stopping.wait(), RECONCILE_SECONDS)
            except TimeoutError:
                pass

    def reconcile(self) -> None:
        now = self.clock.now()
        scheduled = dict(self.alerts.due())
        for alert_id, release_at in scheduled.items():
            if release_at <= now:
                self.release(alert_id)
                self.unschedule(alert_id)
            else:
                job = self._scheduler.get_job(job_id(alert_id))
                if job is None or job.next_run_time != release_at:
                    self.schedule(alert_id, release_at)
        for job in self._scheduler.get_jobs(jobstore="default"):
            alert_id = int(job.id.removeprefix("release-"))
            if alert_id not in scheduled:
                self.unschedule(alert_id)
