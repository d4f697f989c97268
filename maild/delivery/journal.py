"""The sent journal: on SQLite, each fan-out process's record of what it sent, in a file.

A lane hands the relay its next message only once the last one is on record
(:mod:`maild.delivery.fanout`). On SQLite every process of the machine shares one
write lock, and a record committed a few dozen messages at a time stood each process's
lanes still whenever another writer held that lock: the other process's records, a
claim, a part of an alert's recipients. So on SQLite the record is a line in a file
of this process's own, ``<state_dir>/sent/<pid>-<random>.ids``: one ``write()`` for
what the lanes sent meanwhile, no lock shared with anyone. Once a batch, its ids are
marked sent in the database (with its failures, one transaction) and the file is
emptied.

The file is in the kernel's page cache once written, so it outlives the process (kill
-9); like SQLite's ``synchronous=NORMAL`` it is not flushed to disk, so a crash of the
machine may undo the last moment of records, which sends those messages again, never
misses them. PostgreSQL keeps the record in the database instead: several machines
share it, and a machine that dies takes its files with it.

A live process holds an exclusive ``flock`` on its file. A file whose lock is free
belongs to a process that has ended: :func:`apply_left` marks its ids sent and removes
it. Every claim does that first, so no row that a dead process sent is claimed again
(its claim's lease has ended, or its daemon's start released it, after the process
died), and the daemon does it at its start, waiting a moment for the workers of the
run before, which die with their daemon but a moment later.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("maild.delivery")

FOLDER = "sent"
SUFFIX = ".ids"
# How long the daemon's start waits for the files of the last run's workers.
START_WAIT = 5.0
_POLL = 0.02


def folder_of(state_dir: Path) -> Path:
    return state_dir / FOLDER


class SentJournal:
    """This process's journal file, locked while the process lives. Use from one thread
    at a time: the fan-out appends from its event loop and empties the file once the
    batch is recorded, while no lane is sending."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        # Made under a name no one takes, locked, then renamed: a file under its final
        # name is never without its lock while this process lives.
        hidden = folder / f".{name}"
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = folder / f"{name}{SUFFIX}"
        os.rename(hidden, self.path)
        self.ids: list[int] = []  # in the file, not yet marked in the database
        self._size = 0  # the file's length: whole lines, one per id of self.ids

    async def append(self, delivery_ids: Sequence[int]) -> None:
        """Put ``delivery_ids`` on record (a coroutine for :class:`SentRecorder`)."""
        data = b"".join(b"%d\n" % i for i in delivery_ids)
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk, a file size limit
                raise OSError(f"the sent journal {self.path} took {written} of {len(data)} bytes")
        except OSError:
            # Never a line cut short with more after it: "12" then "345\n" would read as
            # 12345, a message never sent marked sent.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += written
        self.ids.extend(delivery_ids)

    def clear(self) -> None:
        """The ids are marked in the database: the file starts again empty."""
        os.ftruncate(self._fd, 0)
        self._size = 0
        self.ids.clear()

    def close(self) -> None:
        """At the process's end: an empty file goes; one with ids stays for
        :func:`apply_left` (the database could not take them)."""
        if not self.ids:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


def read_ids(data: bytes) -> list[int]:
    """The ids of a journal's text; a line cut short by a crash mid-write is left out."""
    lines = data.split(b"\n")
    return [int(line) for line in lines[:-1] if line.isdigit()]


def apply_left(folder: Path, mark_sent: Callable[[list[int]], None], wait: float = 0.0) -> int:
    """Mark sent, with ``mark_sent``, the ids in the journals of processes that have
    ended, and remove those files; the number of ids. A file still locked ``wait``
    seconds on belongs to a live process and is left alone."""
    if not folder.is_dir():
        return 0
    applied = 0
    deadline = time.monotonic() + wait
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        with _locked(path, deadline) as data:
            if data is None:
                continue
            ids = read_ids(data)
            if ids:
                mark_sent(ids)
                applied += len(ids)
            path.unlink(missing_ok=True)
    if applied:
        log.info("%d messages sent by an ended process are on record now", applied)
    return applied


@contextmanager
def _locked(path: Path, deadline: float) -> Iterator[bytes | None]:
    """The file's content while its lock is ours; None if it is gone or stays locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield None
                    return
                time.sleep(_POLL)
        with os.fdopen(os.dup(fd), "rb") as file:
            yield file.read()
    finally:
        os.close(fd)
