"""Group commit: the requests of many SMTP sessions written in one transaction.

The SMTP listener says ``250`` to a blank mail only once its answer is committed
(the sending MTA then deletes its copy). One transaction per mail costs a
commit (on SQLite a disk flush), a thread hand-off and a round of Python work
per mail, and under load those transactions queue for the one write lock
anyway. :class:`GroupCommit` instead hands every request that arrived while the
previous group was being written to ONE call of a blocking ``write`` function
in a worker thread, and gives each caller its own result when that call
returns. The first request after a quiet moment is written at once (no timer,
so no added latency); under load the groups grow by themselves.

``write`` must take the whole group or nothing (one transaction): if it raises,
every request of the group gets the exception, and none was kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

MAX_GROUP = 100  # requests per transaction: bounds how long it holds the write lock


class GroupCommit(Generic[Request, Result]):
    """Runs ``write(group)`` in a thread for the requests queued meanwhile, one group at a time.

    ``write`` returns one result per request, in order; a result that is an
    exception is raised to that request's caller alone (an invalid address, say).
    Use it from one event loop.
    """

    def __init__(
        self,
        write: Callable[[list[Request]], Sequence[Result | Exception]],
        max_group: int = MAX_GROUP,
    ) -> None:
        self._write = write
        self.max_group = max(1, max_group)
        self._queue: list[tuple[Request, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = 0  # groups written (or failed): for tests and metrics
        self.written = 0  # requests in those groups

    @property
    def queued(self) -> int:
        """Requests waiting for the group being written (if any) to finish."""
        return len(self._queue)

    async def submit(self, request: Request) -> Result:
        """Queue ``request``; its result once its group is committed (or the exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((request, future))
        if self._writer is None:
            self._writer = loop.create_task(self._write_all(), name="group-commit")
        return await future

    async def _write_all(self) -> None:
        group: list[tuple[Request, asyncio.Future[Result]]] = []
        try:
            while self._queue:
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
