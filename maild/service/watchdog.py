"""The systemd watchdog: ``WATCHDOG=1`` pings sent from the daemon's event loop.

maild.service sets ``WatchdogSec=``; systemd then passes ``WATCHDOG_USEC`` and
restarts the service when the pings stop. They come from a task on the one
event loop, not from a thread, so a loop that is stuck (a blocking call, a
handler that never yields) stops them: that is the failure worth a restart.
Each ping carries ``STATUS=`` so ``systemctl status maild`` says what the
daemon is doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from maild.common.text import counted
from maild.service import systemd

log = logging.getLogger("maild")


async def watchdog(stopping: asyncio.Event, status: Callable[[], str]) -> None:
    """Ping systemd every half ``WatchdogSec`` until ``stopping`` is set.

    Returns at once when systemd asked for no watchdog. ``status`` runs on the
    event loop at each ping, so it must be cheap and do no I/O (in-memory
    counters, not a database query).
    """
    interval = systemd.watchdog_interval()
    if interval is None:
        return
    # Real elapsed time, not the injectable Clock: systemd measures the pings in real
    # time, and a FakeClock in a test must not silence them.
    while not stopping.is_set():
        systemd.notify(f"WATCHDOG=1\nSTATUS={_status_line(status)}")
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except TimeoutError:
            pass


def status_text(sessions: int | None = None) -> str:
    """What ``systemctl status maild`` shows (an operator reads it: Japanese first); with
    ``sessions``, the SMTP sessions open now."""
    if sessions is None:
        return "受付中 / accepting mail"
    return (
        f"受付中、SMTP セッション {sessions} 件"
        f" / accepting mail, {counted(sessions, 'SMTP session')}"
    )


def _status_line(status: Callable[[], str]) -> str:
    # A broken status text must not stop the pings: systemd would restart a healthy daemon.
    try:
        text = status()
    except Exception:
        log.exception("watchdog: the status text could not be made")
        return "running (status unavailable)"
    # One line: the notify protocol separates assignments by newlines.
    return " ".join(text.split())
