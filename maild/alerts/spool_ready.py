"""Which files in ``incoming/`` are ready to be taken, and which a process is still writing.

A writer that pauses (a copy over a file share, an editor that writes in two steps)
leaves a file whose size and mtime stand still while it is incomplete; taking it then
would send half an alert. inotify reports every write (``IN_MODIFY``) and every close of
a file opened for writing (``IN_CLOSE_WRITE``), whoever the writer is, so the spool
takes a file only when no write is open on it and it has been still for the settle
time after the last close (:meth:`WriteTracker.settled_since`).

The tracker knows only what happened while it watched: a file being written when the
daemon started is seen as written at its next write. Writes made by another machine
on a network file system mounted here (NFS, CIFS) raise no events; for those the
spool's own rule (size and mtime unchanged for the settle time) is what remains.
Where inotify is not available the tracker reports nothing and that rule decides alone.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

from maild.alerts.spool_files import is_ignored, printable

log = logging.getLogger("maild.alerts.spool")

IGNORED_WARNING_SECONDS = 60.0

_WATCHED = (
    flags.CREATE
    | flags.MODIFY
    | flags.CLOSE_WRITE
    | flags.MOVED_TO
    | flags.MOVED_FROM
    | flags.DELETE
)


@dataclass
class _Sighting:
    signature: tuple[int, int, int]  # inode, size, mtime_ns
    since: float  # monotonic time the signature was first seen
    warned: bool = False


class ReadyFiles:
    """Which files of a spool folder may be claimed now (the spool's stability rule)."""

    def __init__(self, folder: Path, settle: float) -> None:
        self.folder = folder
        self.settle = settle
        self._seen: dict[str, _Sighting] = {}
        self._writers: WriteTracker | None = None
        if folder.is_dir():
            self._writers = WriteTracker(folder)  # watching before the daemon says ready

    @property
    def writers(self) -> WriteTracker:
        """Started when built, or on first use if the folder did not exist yet."""
        if self._writers is None:
            self._writers = WriteTracker(self.folder)
        return self._writers

    def close(self) -> None:
        if self._writers is not None:
            self._writers.close()
            self._writers = None

    def forget(self, name: str) -> None:
        """``name`` was claimed (or taken by another watcher)."""
        self._seen.pop(name, None)

    def warn_once(self, name: str) -> bool:
        """True the first time a problem with ``name`` is to be logged."""
        sighting = self._seen.get(name)
        if sighting is None or not sighting.warned:
            if sighting is not None:
                sighting.warned = True
            return True
        return False

    def names(self, now: float) -> list[str]:
        """The names ready to be claimed, oldest mtime first."""
        self.writers.poll(now)
        wall = time.time()  # file mtimes are the kernel's real time, not the service clock
        stable: list[tuple[int, str]] = []
        present = set()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                present.add(entry.name)
                if is_ignored(entry.name):
                    self._warn_if_left(entry.name, now)
                    continue
                signature = (st.st_ino, st.st_size, st.st_mtime_ns)
                sighting = self._seen.get(entry.name)
                if self.writers.writing(entry.name, st.st_size):
                    self._seen[entry.name] = _Sighting(signature, now)
                    continue  # a process has it open for writing
                if sighting is None or sighting.signature != signature:
                    sighting = _Sighting(signature, now)
                    self._seen[entry.name] = sighting
                    settled = wall - st.st_mtime_ns / 1e9 >= self.settle
                else:
                    settled = now - sighting.since >= self.settle
                closed = self.writers.settled_since(entry.name)
                if settled and (closed is None or now - closed >= self.settle):
                    stable.append((st.st_mtime_ns, entry.name))
        for gone in self._seen.keys() - present:
            del self._seen[gone]
        return [name for _, name in sorted(stable)]

    def _warn_if_left(self, name: str, now: float) -> None:
        """A hidden or temp file is someone's unfinished write; one left for a minute is
        more likely an operator's mistake, so say once why it is not taken."""
        sighting = self._seen.setdefault(name, _Sighting((0, 0, 0), now))
        if not sighting.warned and now - sighting.since >= IGNORED_WARNING_SECONDS:
            sighting.warned = True
            log.warning(
                "%r has been in incoming/ for over a minute and is ignored: names starting "
                "with '.' or ending in '.tmp' are files still being written; rename it "
                "to be sent",
                printable(name),
            )


class WriteTracker:
    """Open writes and last closes per file name in one folder.

    ``poll(now)`` reads the events that arrived since the last call and stamps them with
    ``now`` (monotonic seconds, as the spool's scans use; tests pass their own).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writing: set[str] = set()
        self._created: set[str] = set()  # created and not closed yet: written or linked
        self._closed_at: dict[str, float] = {}
        self._inotify: INotify | None = None
        try:
            self._inotify = INotify(nonblocking=True)
            # Closed with the tracker when nobody called close() (a watcher in a test).
            weakref.finalize(self, self._inotify.close)
            self._inotify.add_watch(folder, _WATCHED)
        except OSError as e:
            log.warning(
                "cannot watch %s for writers (%s); files are taken when they stand still",
                folder,
                e.strerror,
            )
            self.close()

    def poll(self, now: float) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        for event in events:
            name = event.name
            if event.mask & flags.Q_OVERFLOW:
                # Events were lost: treat every file as just written, so each must again
                # stand still for the settle time before it is taken.
                log.warning("inotify queue overflowed on %s; waiting the settle time", self.folder)
                self._writing.clear()
                self._created.clear()
                self._closed_at = dict.fromkeys(self._closed_at, now)
                continue
            if not name:
                continue
            if event.mask & flags.CREATE:
                self._created.add(name)
            if event.mask & flags.MODIFY:
                self._writing.add(name)
            if event.mask & flags.CLOSE_WRITE:
                self._forget(name)
                self._closed_at[name] = now
            if event.mask & (flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE):
                # Renamed into place (maild submit, careful writers) is complete at once.
                self._forget(name)
                self._closed_at.pop(name, None)

    def _forget(self, name: str) -> None:
        self._writing.discard(name)
        self._created.discard(name)

    def writing(self, name: str, size: int) -> bool:
        """Whether a write to ``name`` was seen without a close after it. A file created
        and still empty counts too; a created one with content and no write is a hard
        link (maild submit places files so), complete when it appears."""
        return name in self._writing or (name in self._created and size == 0)

    def settled_since(self, name: str) -> float | None:
        """When ``name`` was last closed after writing, if that was seen."""
        return self._closed_at.get(name)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
