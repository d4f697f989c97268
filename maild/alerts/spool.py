"""The spool watcher (docs/alert-files.md): how operators' alert files enter the system.

Layout under ``SPOOL`` (``config.spool.dir``)::

    incoming/     operators write here (group-writable, setgid in production)
    processing/   files this service has claimed
    accepted/     files that became an alert, named ``ALERTID-NAME``
    rejected/     files that did not, with ``NAME.error`` beside each

The protocol is Mailman's switchboard (STYLE §5), without the pickle:

* Writers put a hidden temp file (``.NAME.tmp``-style) into ``incoming/``, fsync it and
  rename it to its final name (``maild submit`` does). Names starting with ``.`` or ending
  in ``.tmp`` are never taken; one left over a minute is logged once as ignored.
* Any other file is taken once it is *stable*: no process has it open for writing, it
  was closed at least ``settle`` seconds ago (both as inotify reports,
  :mod:`maild.alerts.spool_ready`), and its (inode, size, mtime) did not change between
  two scans ``settle`` apart or its mtime was older than ``settle`` when first seen.
* A stable file is *claimed* by renaming it into ``processing/`` under a unique name
  ``YYYYmmddTHHMMSS-RANDOM-NAME`` (the *claim name*). Rename is atomic, so of two
  watchers only one can win; the loser gets FileNotFoundError and moves on.
* The claimed file is read (at most ``max_bytes``; larger files are rejected unread),
  parsed (:mod:`maild.alerts.alertfile`) and handed to the ``intake`` callback. Success
  moves it to ``accepted/``; one that does not parse goes to ``rejected/`` with a report;
  any other failure retries it with a growing delay, at most ``max_attempts`` times counting
  attempts cut short by a crash (``processing/.CLAIM.attempts``), then sets it aside in
  ``rejected/`` as an internal error. Nothing is ever deleted or overwritten.

**The intake contract** -- what makes "no file is processed twice" hold across crashes:
``intake(draft, meta)`` must store ``meta.claim_name`` with the alert (``Alert.source_file``)
in the same transaction that creates it, and when an alert with that claim name already
exists it must return that alert's id instead of creating another. A crash between the
database commit and the move to ``accepted/`` then only makes the next attempt find the
alert it already made. ``intake`` may raise AlertFileInvalid (the file is rejected) or any
other exception (the file is retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from maild.alerts.alertfile import (
    MAX_ALERT_FILE_BYTES,
    AlertDraft,
    AlertFileInvalid,
    parse_alert,
)
from maild.alerts.filetext import FileProblem
from maild.alerts.spool_files import (
    ACCEPTED,
    INCOMING,
    MAX_NAME_BYTES,
    PROCESSING,
    REJECTED,
    AttemptCounter,
    Unreadable,
    claim_of_attempts_file,
    ensure_layout,
    error_report,
    fsync_dir,
    numbered,
    original_of,
    owner_name,
    printable,
    reserve,
    shorten,
    too_large,
    write_durably,
)
from maild.alerts.spool_ready import ReadyFiles
from maild.common.clock import Clock
from maild.common.text import counted

log = logging.getLogger("maild.alerts.spool")

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class FileMeta:
    """What the spool knows about a claimed file besides its text."""

    original_name: str  # as the operator named it (made printable)
    claim_name: str  # unique name in processing/: the alert's ``source_file``
    owner: str  # the requester: the file owner's user name, or the numeric uid
    uid: int
    size: int
    mtime: dt.datetime  # aware, UTC


Intake = Callable[[AlertDraft, FileMeta], int]
"""Turns a draft into an alert and returns its id; see the module docstring for the contract."""

Report = Callable[[int, Path, str], object]
"""Called with the alert id, the accepted file's path and its original name once the file is
in ``accepted/``: writes a report beside it where there is something to say (the privacy
check's findings, :func:`maild.alerts.privacy_gate.write_report`)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one file in one pass."""

    file: str  # the original name
    claim_name: str
    status: Literal["accepted", "rejected", "retry"]
    path: Path  # where the file is now
    alert_id: int | None = None
    problems: tuple[FileProblem, ...] = ()


@dataclass
class _Claim:
    claim_name: str
    original_name: str
    due: float = 0.0  # monotonic time of the next attempt


# --- the watcher -----------------------------------------------------------------------


class SpoolWatcher:
    """Claims stable files from ``incoming/`` and turns them into alerts through ``intake``.

    ``scan_once`` is blocking and not thread-safe: one watcher, one thread at a time.
    Several watchers on one spool are safe (claims are atomic renames).
    """

    def __init__(
        self,
        spool_dir: Path,
        intake: Intake,
        resolve_area: Callable[[str], str],
        tz: ZoneInfo,
        settle: float = 0.5,
        interval: float = 0.2,
        *,
        max_bytes: int = MAX_ALERT_FILE_BYTES,
        max_attempts: int = MAX_ATTEMPTS,
        retry_delay: float = 2.0,
        batch: int = 100,
        clock: Clock | None = None,
        report: Report | None = None,
    ) -> None:
        self.spool = spool_dir
        self.report = report
        self.incoming = spool_dir / INCOMING
        self.processing = spool_dir / PROCESSING
        self.accepted = spool_dir / ACCEPTED
        self.rejected = spool_dir / REJECTED
        self.intake = intake
        self.resolve_area = resolve_area
        self.tz = tz
        self.settle = settle
        self.interval = interval
        self.max_bytes = max_bytes
        self.max_attempts = max_attempts
        self.attempts = AttemptCounter(self.processing)
        # Attempt n+1 waits retry_delay * 2**(n-1): 2, 4, 8, 16 s by default, so a database
        # restart is ridden out and a file that always fails is set aside within a minute.
        self.retry_delay = retry_delay
        # A bound on the files claimed per pass, so that a stop request is seen soon even
        # when thousands of files arrive at once.
        self.batch = batch
        self.clock = clock or Clock()
        self.ready = ReadyFiles(self.incoming, settle)
        self._retry: dict[str, _Claim] = {}
        self._recovered = False

    # --- public

    def recover(self, now: float | None = None) -> list[Outcome]:
        """Take up files a previous run left in ``processing/``; call once at start.

        Each counts the interrupted attempt, so a file that crashes the service every time
        ends in ``rejected/`` after ``max_attempts`` starts instead of crashing it forever.
        """
        now = time.monotonic() if now is None else now
        self._recovered = True
        ensure_layout(self.spool)
        names = set()
        for entry in os.scandir(self.processing):
            if entry.name.startswith(".") or entry.is_dir(follow_symlinks=False):
                continue
            names.add(entry.name)
            if entry.name not in self._retry:
                self._retry[entry.name] = _Claim(entry.name, original_of(entry.name), now)
        for entry in os.scandir(self.processing):
            claim = claim_of_attempts_file(entry.name)
            if claim is not None and claim not in names:
                Path(entry.path).unlink(missing_ok=True)  # its file was moved on; a crash left it
        return self._run_retries(now)

    def scan_once(self, now: float) -> list[Outcome]:
        """One pass: retries that are due, then every stable file in ``incoming/``.

        ``now`` is monotonic seconds (``time.monotonic()``); tests pass their own.
        """
        outcomes = self._run_retries(now)
        claims: list[_Claim] = []
        for name in self.ready.names(now)[: self.batch]:
            try:
                claim = self._claim(name)
            except Exception:
                if self.ready.warn_once(name):
                    log.exception("cannot claim %r from incoming/; leaving it there", name)
                continue
            if claim is not None:
                claims.append(claim)
        if claims:
            # The claims must be on disk before intake commits an alert naming them:
            # a claim undone by a power cut would be taken again under a new name.
            fsync_dir(self.processing)
            fsync_dir(self.incoming)
        for claim in claims:
            outcome = self._attempt(claim, now)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    async def run(self, stopping: asyncio.Event) -> None:
        """Recover, then scan every ``interval`` seconds until ``stopping`` is set."""
        if not self._recovered:
            try:
                await asyncio.to_thread(self.recover, time.monotonic())
            except Exception:
                log.exception("spool recovery failed; going on with new files")
        try:
            while not stopping.is_set():
                try:
                    await asyncio.to_thread(self.scan_once, time.monotonic())
                except Exception:
                    # Per-file errors are handled inside; this is the folder itself
                    # (removed, unreadable). Keep trying: the sysadmin may fix it.
                    log.exception("spool scan failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.interval)
        finally:
            self.ready.close()

    def _claim(self, name: str) -> _Claim | None:
        original = printable(name)
        stamp = self.clock.now().astimezone(self.tz).strftime("%Y%m%dT%H%M%S")
        claim_name = f"{stamp}-{secrets.token_hex(4)}-{original}"
        while os.path.lexists(self.processing / claim_name):  # rename would overwrite it
            claim_name = f"{stamp}-{secrets.token_hex(4)}-{original}"
        try:
            os.rename(self.incoming / name, self.processing / claim_name)
        except FileNotFoundError:
            self.ready.forget(name)
            return None  # another watcher took it
        self.ready.forget(name)
        log.debug("claimed %r as %s", name, claim_name)
        return _Claim(claim_name, original)

    # --- attempts

    def _run_retries(self, now: float) -> list[Outcome]:
        outcomes = []
        due = sorted((c for c in self._retry.values() if c.due <= now), key=lambda c: c.due)
        for claim in due:
            del self._retry[claim.claim_name]
            try:
                started = self.attempts.started(claim.claim_name)
                if started >= self.max_attempts:
                    outcome: Outcome | None = self._give_up(claim, started)
                else:
                    self.attempts.set(claim.claim_name, started + 1)
                    outcome = self._attempt(claim, now)
            except Exception:
                log.exception("cannot retry %s; trying again later", claim.claim_name)
                claim.due = now + self.retry_delay * 2 ** (self.max_attempts - 1)
                self._retry[claim.claim_name] = claim
                continue
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _attempt(self, claim: _Claim, now: float) -> Outcome | None:
        """Process one claimed file; the boundary where every failure is caught."""
        try:
            return self._process(claim)
        except Exception:
            started = self.attempts.started(claim.claim_name)
            log.exception(
                "alert file %s failed (attempt %d of %d)",
                claim.claim_name,
                started,
                self.max_attempts,
            )
            if started >= self.max_attempts:
                try:
                    return self._give_up(claim, started)
                except Exception:
                    log.exception("cannot set %s aside; it stays in processing/", claim.claim_name)
            claim.due = now + self.retry_delay * 2 ** (started - 1)
            self._retry[claim.claim_name] = claim
            return Outcome(
                claim.original_name, claim.claim_name, "retry", self.processing / claim.claim_name
            )

    def _process(self, claim: _Claim) -> Outcome | None:
        path = self.processing / claim.claim_name
        try:
            data, meta = self._read(claim, path)
            draft = parse_alert(
                data, resolve_area=self.resolve_area, tz=self.tz, max_bytes=self.max_bytes
            )
            alert_id = self.intake(draft, meta)
        except FileNotFoundError:
            if os.path.lexists(path):
                raise
            # Another watcher's recovery took it up; it is that watcher's now.
            log.info("%s left processing/ under another watcher", claim.claim_name)
            self.attempts.forget(claim.claim_name)
            return None
        except Unreadable as e:
            return self._reject(claim, [e.problem])
        except AlertFileInvalid as e:
            return self._reject(claim, e.problems)
        target = self._move(path, self.accepted, f"{alert_id}-{claim.original_name}")
        self.attempts.forget(claim.claim_name)
        if self.report is not None:
            try:
                self.report(alert_id, target, claim.original_name)
            except OSError as e:  # the alert is made: the report is a courtesy, not the work
                log.warning("no report beside %s: %s", target.name, e.strerror)
        log.info(
            "accepted %s as alert %d (requester %s) -> %s",
            claim.original_name,
            alert_id,
            meta.owner,
            target.name,
        )
        return Outcome(claim.original_name, claim.claim_name, "accepted", target, alert_id)

    def _read(self, claim: _Claim, path: Path) -> tuple[bytes, FileMeta]:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(
                FileProblem(
                    None,
                    "通常のファイルではありません（シンボリックリンク等）。ファイルそのものを置いてください",
                    "not a regular file (a symbolic link or similar); put the file itself",
                )
            )
        if st.st_size > self.max_bytes:
            raise Unreadable(too_large(st.st_size, self.max_bytes))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise Unreadable(
                FileProblem(
                    None,
                    "ファイルを読み取れません（権限がありません）。"
                    "グループに読み取り権限を付けて（chmod g+r）置き直してください",
                    "the file cannot be read (permission denied); "
                    "make it group-readable (chmod g+r) and put it in again",
                )
            ) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            # One byte past the limit tells a file that grew since the lstat.
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise Unreadable(too_large(max(st.st_size, len(data)), self.max_bytes))
        meta = FileMeta(
            original_name=claim.original_name,
            claim_name=claim.claim_name,
            owner=owner_name(st.st_uid),
            uid=st.st_uid,
            size=len(data),
            mtime=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
        )
        return data, meta

    def _reject(self, claim: _Claim, problems: list[FileProblem]) -> Outcome:
        path = self.processing / claim.claim_name
        # The report goes first and the file last: the file's move is what ends the work.
        name = self._reserve_pair(claim.original_name)
        report = error_report(claim.original_name, problems)
        error_path = self.rejected / f"{name}.error"
        try:
            write_durably(error_path, report.encode("utf-8"))
            os.rename(path, self.rejected / name)
        except BaseException:
            (self.rejected / name).unlink(missing_ok=True)
            error_path.unlink(missing_ok=True)
            raise
        fsync_dir(self.rejected)
        fsync_dir(self.processing)
        self.attempts.forget(claim.claim_name)
        log.warning(
            "rejected %s (%s; see %s.error)",
            claim.original_name,
            counted(len(problems), "problem"),
            name,
        )
        return Outcome(
            claim.original_name,
            claim.claim_name,
            "rejected",
            self.rejected / name,
            problems=tuple(problems),
        )

    def _give_up(self, claim: _Claim, attempts: int) -> Outcome:
        log.error("setting %s aside after %d failed attempts", claim.claim_name, attempts)
        problem = FileProblem(
            None,
            f"内部エラーのため、{attempts}回試みても処理できませんでした。"
            "ファイルの内容に問題がない場合もあります。システム管理者に連絡してください",
            f"it could not be processed because of an internal error ({attempts} attempts); "
            "the file may well be fine: tell the system administrator",
        )
        return self._reject(claim, [problem])

    def _move(self, path: Path, folder: Path, name: str) -> Path:
        """Move ``path`` into ``folder`` as ``name`` (or a numbered variant), never overwriting."""
        for candidate in numbered(shorten(name, MAX_NAME_BYTES + 24)):
            if reserve(folder, candidate):
                break
        target = folder / candidate
        try:
            os.rename(path, target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        fsync_dir(folder)
        fsync_dir(path.parent)
        return target

    def _reserve_pair(self, name: str) -> str:
        """A name free in rejected/ both for the file and for its ``.error``; both reserved."""
        for candidate in numbered(name):
            if not reserve(self.rejected, f"{candidate}.error"):
                continue
            if reserve(self.rejected, candidate):
                return candidate
            (self.rejected / f"{candidate}.error").unlink()
        raise AssertionError("unreachable: numbered never ends")
