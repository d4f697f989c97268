"""Logging set-up: one line per event on stderr, for the journal.

A last-line filter masks anything that still looks like an address or a
signed token, so a careless log call cannot leak one (operating rules §7).
waitress's per-request "Task queue depth" warning is let through once a minute.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable

from maild.addresses import mask, mask_token

WAITRESS_QUEUE = "waitress.queue"  # "Task queue depth is N", once per queued request
QUEUE_LOG_INTERVAL = 60.0  # seconds

_ADDRESS = re.compile(
    r"(\"[^\"\s]{1,64}\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})@([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
_TOKEN = re.compile(r"\b[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{20,}\b")


def scrub(text: str) -> str:
    text = _ADDRESS.sub(
        lambda m: mask(m.group(0)) if "***@" not in m.group(0) else m.group(0), text
    )
    return _TOKEN.sub(lambda m: mask_token(m.group(0)), text)


class Sampled(logging.Filter):
    """Lets one record through per ``interval`` seconds; the next one says how many were held.

    For waitress's "Task queue depth is N": under load it comes once per request, thousands
    of lines a minute in the journal, and its work (a record, a format, a write) lands on
    the web threads while they are the busiest. The count is approximate: no lock is taken.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self.interval
        if self._held:
            held, self._held = self._held, 0
            record.msg = f"{record.getMessage()} (and {held} more in the last {self.interval:g} s)"
            record.args = ()
        return True


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    # The journal stamps each line itself; elsewhere a time helps.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("waitress", "mail.log", "apscheduler", "alembic", "aiosmtplib", "flufl.bounce"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    queue = logging.getLogger(WAITRESS_QUEUE)
    queue.filters[:] = [Sampled(QUEUE_LOG_INTERVAL)]
