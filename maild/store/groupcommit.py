"""Group commit: the requests of many callers written in one transaction.

The SMTP listener says ``250`` to a blank mail only once its answer is committed
(the sending MTA then deletes its copy). One transaction per mail costs a
commit (on SQLite a disk flush), a thread hand-off and a round of Python work
per mail, and under load those transactions queue for the one write lock
anyway. :class:`GroupCommit` instead hands every request that arrived while the
previous group was being written to ONE call of a blocking ``write`` function
in a worker thread, and gives each caller its own result when that call
returns. Under load the groups grow by themselves.

Most of a group's cost is the same whatever its size (the thread hand-off, the
transaction, the flush), so a short wait before writing pays when more requests
are surely on their way: PostgreSQL's ``commit_delay``, which waits only while
at least ``commit_siblings`` other transactions are open. Here ``siblings()``
says how many callers are under way (for the listener: SMTP sessions between
MAIL and the end of DATA); when more are under way than are queued, the writer
waits ``delay`` seconds first. A lone mail on a quiet server is written at once.

``write`` must take the whole group or nothing (one transaction): if it raises,
every request of the group gets the exception, and none was kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

MAX_GROUP = 100  # requests per transaction: bounds how long it holds the write lock
# Wait before writing a group while more callers are under way (see above). Long enough
# for a few sessions' DATA to arrive under load; nothing next to an SMTP dialogue.
DELAY = 0.002


class GroupCommit(Generic[RequestT, ResultT]):
    """Runs ``write(group)`` in a thread for the requests queued meanwhile, one group at a time.

    ``write`` returns one result per request, in order; a result that is an
    exception is raised to that request's caller alone (an invalid address, say).
    Use it from one event loop.
    """

    def __init__(
        self,
        write: Callable[[list[RequestT]], Sequence[ResultT | Exception]],
        max_group: int = MAX_GROUP,
        delay: float = DELAY,
        siblings: Callable[[], int] | None = None,
    ) -> None:
        self._write = write
        self.max_group = max(1, max_group)
        self.delay = delay
        # Callers under way, queued ones included; None: unknown, never wait.
        self.siblings = siblings
        self._queue: list[tuple[RequestT, asyncio.Future[ResultT]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = 0  # groups written (or failed): for tests and metrics
        self.written = 0  # requests in those groups

    @property
    def queued(self) -> int:
        """Requests waiting for the group being written (if any) to finish."""
        return len(self._queue)

    async def submit(self, request: RequestT) -> ResultT:
        """Queue ``request``; its result once its group is committed (or the exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._queue.append((request, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write_all(), name="group-commit")
        return await future

    def _more_coming(self) -> bool:
        if self.siblings is None or self.delay <= 0 or len(self._queue) >= self.max_group:
            return False
        return self.siblings() > len(self._queue)

    async def _write_all(self) -> None:
        group: list[tuple[RequestT, asyncio.Future[ResultT]]] = []
        try:
            while self._queue:
                if self._more_coming():
                    await asyncio.sleep(self.delay)
                group = self._queue[: self.max_group]
                del self._queue[: self.max_group]
                self.groups += 1
                self.written += len(group)
                try:
                    results = await asyncio.to_thread(self._write, [r for r, _ in group])
                    if len(results) != len(group):
                        raise RuntimeError(f"{len(results)} results for {len(group)} requests")
                except Exception as e:
                    for _, future in group:
                        if not future.done():  # its caller may have gone (cancelled)
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                group = []
        finally:
            self._writer = None
            # Only when cancelled (the loop is going away): nobody is left to answer.
            for _, future in group + self._queue:
                future.cancel()
            self._queue.clear()
