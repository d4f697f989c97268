"""Log lines for events that come in floods, at most one a minute per kind.

Blank mails past the hourly answer limit are refused one by one, and a flood of them
wrote one WARNING line per mail: tens of thousands a minute, until journald's per-service
rate limit dropped the lines that mattered. :class:`LogThrottle` logs the first event of
a kind at once, then keeps count; the next event of that kind after the interval is
logged with the number of those not logged since. The exact numbers are in /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 60.0


@dataclass
class _Window:
    started: float
    quiet: int = 0  # events since ``started`` that were not logged


class LogThrottle:
    """``warning(kind, msg, *args)``: like ``logger.warning``, throttled per ``kind``.

    Safe from several threads (the web server's) and the event loop at once.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.monotonic = monotonic
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = self.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window.started < self.interval:
                window.quiet += 1
                return
            quiet = window.quiet if window is not None else 0
            self._windows[kind] = _Window(now)
        if quiet:
            self.logger.warning(
                msg + " (and %d more like it in the last %d s, not logged)",
                *args,
                quiet,
                round(self.interval),
            )
        else:
            self.logger.warning(msg, *args)

    def flush(self) -> None:
        """Log the counts still held (at shutdown)."""
        with self._lock:
            held = [(kind, w.quiet) for kind, w in self._windows.items() if w.quiet]
            self._windows.clear()
        for kind, quiet in held:
            self.logger.warning("%d more %s not logged", quiet, kind)
