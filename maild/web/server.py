"""The HTTP server for the pages: waitress, with two changes to how its threads wait.

Both are about the GIL. A page is a fraction of a millisecond of Python; whenever a
thread lets go of the GIL (for a ``send``, for each step of an SQLite query) while
other threads want it, getting it back costs a couple of context switches, which on
this project's 2-core VM cost more than the page itself. ``wrk -c16`` against
``GET /register/TOKEN`` in the daemon, stock waitress with 8 threads: 28 context
switches and about 0.8 ms of CPU a page; with both changes: 6 and 0.5 ms.

:class:`QuietChannel`: waitress's main thread selects on every connection with output
buffered. While a worker is sending a response it holds that connection's output lock,
so the main thread can send nothing, yet ``select`` says the socket is writable and the
loop spins; spinning, it lets go of the GIL only for the instant of each ``select``,
and a worker back from a system call waits out the whole switch interval (5 ms) to get
it back. A trivial app on one thread answered 57 requests a second at 120 % CPU. A
connection whose request is still being served is therefore not offered for writing:
the worker sends what it writes itself (waitress flushes in ``write_soon``) and wakes
the main loop when the request is done, so whatever the socket could not take then goes
out from the main loop as before. The one wait on the main loop during a request, a
worker holding more than ``outbuf_high_watermark`` bytes, still gets it. (A streaming
response whose app pauses between chunks would wait for its next chunk to send the
rest; maild has none.)

:class:`ThriftyDispatcher`: with eight threads taking requests as they come, all eight
want the GIL at once under load. Pages are CPU work that never waits on a client
(waitress's main loop reads requests and buffers answers), so one thread serves them
as fast as eight; the other threads are for a request that does wait, for SQLite's
write lock behind a long transaction. So the thread that is serving takes the next
request itself, and another thread joins only when every serving thread has been on
its request for longer than ``stall`` (50 ms, about a hundred pages).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

THREADS = 8
STALL_SECONDS = 0.05
IDENT = "maild"


class QuietChannel(HTTPChannel):  # type: ignore[misc]  # waitress has no type hints
    def writable(self) -> bool:
        if (
            self.requests
            and not (self.will_close or self.close_when_flushed)
            and self.total_outbufs_len <= self.adj.outbuf_high_watermark
        ):
            return False
        return bool(super().writable())


class ThriftyDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """waitress's thread pool, serving on as few threads as keep up (see the module).

    The state waitress's own dispatcher keeps (``queue``, ``active_count``,
    ``stop_count``, ``threads``, under ``lock``) means what it meant there, so
    ``set_thread_count`` and ``shutdown`` work unchanged.
    """

    def __init__(
        self, stall: float = STALL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.stall = stall
        self.clock = clock
        self._started: dict[int, float] = {}  # thread number → when its request began
        self._standby = False  # an idle thread is checking back every `stall` seconds

    def _keeping_up(self) -> bool:
        """Whether a thread is on a request it began less than ``stall`` ago: it will
        take the next one soon enough."""
        now = self.clock()
        return any(now - began < self.stall for began in self._started.values())

    def handler_thread(self, thread_no: int) -> None:
        with self.lock:
            while True:
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    return
                if self.queue and not self._keeping_up():
                    task = self.queue.popleft()
                    self._started[thread_no] = self.clock()
                    if self.queue and not self._standby:
                        self.queue_cv.notify()  # someone to check on us while requests wait
                    self.lock.release()
                    try:
                        task.service()
                    except BaseException:
                        self.logger.exception("Exception when servicing %r", task)
                    finally:
                        self.lock.acquire()
                        del self._started[thread_no]
                    continue
                self.active_count -= 1
                if self.queue and not self._standby:
                    # Requests wait for a thread that is keeping up; check that it still is.
                    self._standby = True
                    self.queue_cv.wait(self.stall)
                    self._standby = False
                else:
                    self.queue_cv.wait()
                self.active_count += 1

    def add_task(self, task: Any) -> None:
        with self.lock:
            self.queue.append(task)
            # A thread that keeps up takes it; wake one only if none does, or to stand by.
            if not (self._standby and self._keeping_up()):
                self.queue_cv.notify()


def web_server(app: Any, host: str, port: int, threads: int = THREADS) -> Any:
    """A waitress server for ``app`` on ``host:port`` (port 0: one the OS picks), not yet
    running; ``.run()`` serves until ``.close()``. The benchmark's reference app is
    served by this too, so both have the same settings."""
    dispatcher = ThriftyDispatcher()
    dispatcher.set_thread_count(threads)
    try:
        server = create_server(
            app, host=host, port=port, threads=threads, ident=IDENT, _dispatcher=dispatcher
        )
    except BaseException:
        dispatcher.shutdown()
        raise
    server.channel_class = QuietChannel
    return server
