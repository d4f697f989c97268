"""The fan-out's group commit of sent messages (maild.delivery.recorder)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from maild.delivery.recorder import SentRecorder


def appender(written: list[list[int]]) -> Callable[[list[int]], Awaitable[None]]:
    async def write(ids: list[int]) -> None:
        written.append(ids)

    return write


def test_every_id_is_written_and_each_waiter_released_after_its_commit() -> None:
    written: list[list[int]] = []
    gate = threading.Event()

    async def write(ids: list[int]) -> None:
        await asyncio.to_thread(gate.wait, 5)
        written.append(ids)

    async def scenario() -> None:
        recorder = SentRecorder(write)
        running = asyncio.create_task(recorder.run())
        first = recorder.add(1)
        await asyncio.sleep(0.05)  # the commit of [1] has started and waits at the gate
        later = [recorder.add(n) for n in (2, 3, 4)]
        assert not first.done() and all(not f.done() for f in later)
        gate.set()
        await first
        assert written[0] == [1]
        await asyncio.gather(*later)
        recorder.close()
        await running
        # One commit for what came while the first was under way: a group commit.
        assert written == [[1], [2, 3, 4]] and recorder.commits == 2

    asyncio.run(scenario())


def test_closed_before_it_ran_still_writes_what_was_added() -> None:
    # The lanes may all end before the recorder's task first runs: close() then comes
    # before the first commit, and run() must commit and return, not wait forever.
    written: list[list[int]] = []

    async def scenario() -> None:
        recorder = SentRecorder(appender(written))
        done = recorder.add(7)
        recorder.close()
        await asyncio.wait_for(recorder.run(), 5)
        assert done.done() and written == [[7]]

    asyncio.run(scenario())


def test_a_failed_commit_fails_its_waiters_and_the_close() -> None:
    async def write(ids: list[int]) -> None:
        raise RuntimeError("database is gone")

    async def scenario() -> None:
        recorder = SentRecorder(write)
        running = asyncio.create_task(recorder.run())
        waiter = recorder.add(1)
        with pytest.raises(RuntimeError):
            await waiter
        recorder.close()
        with pytest.raises(RuntimeError):
            await running

    asyncio.run(scenario())


def test_a_commit_waits_for_one_id_from_each_lane_still_sending() -> None:
    written: list[list[int]] = []

    async def scenario() -> None:
        recorder = SentRecorder(appender(written), lanes=3)
        running = asyncio.create_task(recorder.run())
        recorder.add(1)
        await asyncio.sleep(0)  # the recorder sees one id of three: it waits
        recorder.add(2)
        await asyncio.sleep(0)
        third = recorder.add(3)
        await third
        assert written == [[1, 2, 3]]
        # Two lanes have ended: one id from the last one fills a group.
        recorder.lane_done()
        recorder.lane_done()
        await recorder.add(4)
        recorder.close()
        await running
        assert written == [[1, 2, 3], [4]]

    asyncio.run(scenario())


def test_a_group_that_does_not_fill_is_committed_after_a_moment() -> None:
    written: list[list[int]] = []

    async def scenario() -> None:
        recorder = SentRecorder(appender(written), lanes=8)
        running = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.add(1), 1)  # the other lanes are slow or failing
        recorder.close()
        await running
        assert written == [[1]]

    asyncio.run(scenario())


def test_without_gathering_what_the_lanes_added_is_written_at_the_loop_s_next_turn() -> None:
    # A file's write costs next to nothing: one lane's id does not wait for the others'
    # (a group commit to the database waits up to GATHER_SECONDS for them).
    written: list[list[int]] = []

    async def scenario() -> None:
        recorder = SentRecorder(appender(written), lanes=4, gather=0.0)
        running = asyncio.create_task(recorder.run())
        await asyncio.sleep(0)
        first = recorder.add(1)
        second = recorder.add(2)  # in the same turn of the loop: the same write
        for _ in range(3):
            await asyncio.sleep(0)
        assert first.done() and second.done() and written == [[1, 2]]
        recorder.close()
        await running

    asyncio.run(scenario())
