"""Group commit: requests queued while a group is written go together in the next one.

The write function here is a plain function that records its groups; a
``threading.Event`` holds the first group in its worker thread so that the test
decides what is queued meanwhile. Nothing sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest

from maild.store.groupcommit import GroupCommit

TIMEOUT = 10.0


class Writer:
    """Records each group; the first one waits for ``release`` (set by the test)."""

    def __init__(self, result: Callable[[str], str | Exception] = str.upper) -> None:
        self.groups: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.result = result
        self.fail_with: Exception | None = None

    def __call__(self, requests: list[str]) -> Sequence[str | Exception]:
        self.groups.append(list(requests))
        self.started.set()
        assert self.release.wait(TIMEOUT), "the test never released the first group"
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return [self.result(r) for r in requests]


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for something another task or thread does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def held_first_group(
    writer: Writer, commit: GroupCommit[str, str], first: str, then: list[str]
) -> tuple[asyncio.Task[str], list[asyncio.Task[str]]]:
    """Submit ``first``; once its group is being written, queue ``then`` behind it."""
    head = asyncio.create_task(commit.submit(first))
    await asyncio.to_thread(writer.started.wait, TIMEOUT)
    rest = [asyncio.create_task(commit.submit(r)) for r in then]
    await until(lambda: commit.queued == len(then))
    return head, rest


def test_requests_queued_during_a_write_form_the_next_group() -> None:
    writer = Writer()

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer)
        head, rest = await held_first_group(writer, commit, "a", ["b", "c", "d"])
        assert writer.groups == [["a"]]
        assert not head.done()  # its group is not committed yet
        writer.release.set()
        assert await head == "A"
        assert [await t for t in rest] == ["B", "C", "D"]
        assert writer.groups == [["a"], ["b", "c", "d"]]
        assert (commit.groups, commit.written) == (2, 4)

    asyncio.run(scenario())


def test_groups_are_cut_at_max_group() -> None:
    writer = Writer()

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer, max_group=2)
        head, rest = await held_first_group(writer, commit, "a", ["b", "c", "d", "e", "f"])
        writer.release.set()
        await asyncio.gather(head, *rest)
        assert writer.groups == [["a"], ["b", "c"], ["d", "e"], ["f"]]

    asyncio.run(scenario())


def test_a_failed_write_fails_its_whole_group_and_only_that() -> None:
    writer = Writer()
    writer.fail_with = RuntimeError("database is down")

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer)
        head, rest = await held_first_group(writer, commit, "a", ["b"])
        writer.release.set()
        with pytest.raises(RuntimeError, match="database is down"):
            await head
        assert await rest[0] == "B"
        # The next request after a quiet moment starts a group of its own again.
        assert await commit.submit("c") == "C"
        assert writer.groups == [["a"], ["b"], ["c"]]

    asyncio.run(scenario())


def test_an_exception_as_a_result_goes_to_its_own_caller_only() -> None:
    def result(request: str) -> str | Exception:
        return ValueError(request) if request == "bad" else request.upper()

    writer = Writer(result)

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer)
        head, rest = await held_first_group(writer, commit, "a", ["bad", "c"])
        writer.release.set()
        assert await head == "A"
        with pytest.raises(ValueError, match="bad"):
            await rest[0]
        assert await rest[1] == "C"

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_disturb_its_group() -> None:
    writer = Writer()

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer)
        head, rest = await held_first_group(writer, commit, "a", ["b", "c"])
        rest[0].cancel()  # the client hung up while waiting
        writer.release.set()
        assert await head == "A"
        assert await rest[1] == "C"
        assert rest[0].cancelled()
        assert writer.groups == [["a"], ["b", "c"]]  # written all the same

    asyncio.run(scenario())


def test_a_wrong_number_of_results_fails_the_group() -> None:
    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(lambda requests: ["only one", "too many"])
        with pytest.raises(RuntimeError, match="2 results for 1 requests"):
            await commit.submit("a")

    asyncio.run(scenario())


def test_a_lone_request_is_written_at_once_whatever_the_delay() -> None:
    writer = Writer()
    writer.release.set()

    async def scenario() -> None:
        commit: GroupCommit[str, str] = GroupCommit(writer, delay=3600, siblings=lambda: 1)
        assert await asyncio.wait_for(commit.submit("a"), TIMEOUT) == "A"

    asyncio.run(scenario())


def test_the_writer_waits_for_callers_under_way() -> None:
    writer = Writer()
    writer.release.set()

    async def scenario() -> None:
        # Three sessions in mid-transaction, one request queued: worth waiting for the rest.
        commit: GroupCommit[str, str] = GroupCommit(writer, delay=0.05, siblings=lambda: 3)
        first = asyncio.create_task(commit.submit("a"))
        for _ in range(3):
            await asyncio.sleep(0)  # the writer has started, and is waiting
        assert writer.groups == []
        rest = [asyncio.create_task(commit.submit(r)) for r in ("b", "c")]
        assert await asyncio.gather(first, *rest) == ["A", "B", "C"]
        assert writer.groups == [["a", "b", "c"]]

    asyncio.run(scenario())
