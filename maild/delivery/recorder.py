"""The fan-out's record of sent messages: one commit for what all lanes sent meanwhile.

A lane waits for its previous message to be on record before it hands the relay the
next one (:mod:`maild.delivery.fanout`), so what a crash repeats is bounded by the
number of lanes. Each lane's wait would cost a commit per message if each wrote its
own; instead the ids of every lane go into one commit (a group commit). A commit starts
once every lane that is still sending has a message waiting for it, or after
:data:`GATHER_SECONDS`, whichever comes first: a commit costs a fair share of what
sending a message costs, so one per lane per message would be most of the fan-out's
CPU, while the lanes still sending keep the relay busy meanwhile. Nothing here knows
SQL: ``write``, a coroutine, does the commit (without blocking the loop). On SQLite
``write`` appends to the process's own file instead (:mod:`maild.delivery.journal`),
which costs next to nothing: with ``gather=0`` it writes what the lanes added while the
loop went round once, without waiting for the other lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

# How long the first id of a group waits for the other lanes' ids.
GATHER_SECONDS = 0.005


class SentRecorder:
    """Group commit of sent delivery ids. Use within one event loop; run :meth:`run`
    as a task, :meth:`add` from the lanes, :meth:`close` when the lanes have ended."""

    def __init__(
        self,
        write: Callable[[list[int]], Awaitable[None]],
        lanes: int = 1,
        gather: float = GATHER_SECONDS,
    ) -> None:
        self._write = write
        # 0 for a write that costs next to nothing (a file's): what the lanes added
        # while the loop went round once is written at once.
        self._gather = gather
        self._lanes = lanes  # lanes still sending: a group is full with one id from each
        self._ids: list[int] = []
        self._next: asyncio.Future[None] | None = None  # resolved by the commit of _ids
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False
        self.commits = 0

    def add(self, delivery_id: int) -> asyncio.Future[None]:
        """Record ``delivery_id`` as sent; the future is done once that is committed (or
        holds the commit's exception)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            # Nobody may await the last group's future (the lanes ended): retrieving its
            # exception here keeps asyncio from reporting it as never retrieved.
            self._next.add_done_callback(_retrieve)
        self._ids.append(delivery_id)
        self._wake.set()
        if len(self._ids) >= self._lanes:
            self._full.set()
        return self._next

    def lane_done(self) -> None:
        """A lane has sent its last message: groups are full with one id fewer."""
        self._lanes -= 1
        if self._ids and len(self._ids) >= self._lanes:
            self._full.set()

    async def run(self) -> None:
        """Commit until closed, a group at a time; a failed commit fails its waiters, and
        :meth:`close` raises it so that the batch is not taken as recorded."""
        failure: BaseException | None = None
        while True:
            if not self._ids:
                if self._closed:
                    if failure is not None:
                        raise failure
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if self._gather > 0 and not self._full.is_set() and not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._gather)
            self._full.clear()
            ids, done = self._ids, self._next
            self._ids, self._next = [], None
            assert done is not None
            try:
                await self._write(ids)
            except Exception as e:  # the database: the waiting lanes stop sending
                done.set_exception(e)
                failure = failure or e
            else:
                done.set_result(None)
                self.commits += 1

    def close(self) -> None:
        """No more ids: :meth:`run` commits what is left and returns."""
        self._closed = True
        self._wake.set()
        self._full.set()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
