"""The spool's folders and the file operations both sides of it rely on: the layout,
which names are still being written, durable writes, printable names, and
:func:`place_in_spool` for ``maild submit``. The protocol itself is in :mod:`maild.alerts.spool`."""

from __future__ import annotations

import errno
import logging
import os
import pwd
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from maild.alerts.filetext import FileProblem

log = logging.getLogger("maild.alerts.spool")

INCOMING = "incoming"
PROCESSING = "processing"
ACCEPTED = "accepted"
REJECTED = "rejected"

# Room for the claim prefix, "ALERTID-", "-N" and ".error" inside NAME_MAX (255 bytes).
MAX_NAME_BYTES = 180


def ensure_layout(spool: Path) -> None:
    """Create the spool and its four folders where missing.

    Existing folders are left as they are: in production their owner, group and mode come
    from systemd-tmpfiles (incoming 2770, group of the operators).
    """
    for path, mode in (
        (spool, 0o750),
        (spool / INCOMING, 0o2770),
        (spool / PROCESSING, 0o750),
        (spool / ACCEPTED, 0o750),
        (spool / REJECTED, 0o750),
    ):
        try:
            path.mkdir(mode=mode, parents=True)
        except FileExistsError:
            continue
        # mkdir applies the umask and ignores the setgid bit.
        os.chmod(path, mode)


def is_ignored(name: str) -> bool:
    """Names a writer is still working on: hidden files and temp files."""
    return name.startswith(".") or name.lower().endswith(".tmp")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write ``path`` whole or not at all: a hidden temp beside it, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the daemon's umask (0077) would hide .error files from operators
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def shorten(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` cut to ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 10:
        stem, ext = name, ""
    else:
        ext = "." + ext
    budget = limit - len(ext.encode())
    cut = stem.encode()[:budget].decode(errors="ignore")
    return cut + ext


def printable(raw: str) -> str:
    """A file name fit for a database row, a log line and an error report.

    Names from Windows shares may arrive as CP932 bytes (undecodable: surrogate escapes).
    """
    if any("\udc80" <= c <= "\udcff" for c in raw):
        data = raw.encode("utf-8", "surrogateescape")
        try:
            raw = data.decode("cp932")
        except UnicodeDecodeError:
            raw = data.decode("utf-8", "replace")
    cleaned = "".join("_" if unicodedata.category(c) in ("Cc", "Cs") else c for c in raw)
    return shorten(unicodedata.normalize("NFC", cleaned)) or "_"


def numbered(name: str) -> Iterator[str]:
    """``name``, then ``stem-2.ext``, ``stem-3.ext``, … for a free name beside a taken one."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    else:
        ext = "." + ext
    for n in range(2, 1000):
        yield f"{stem}-{n}{ext}"
    while True:
        yield f"{stem}-{secrets.token_hex(4)}{ext}"


def reserve(folder: Path, name: str) -> bool:
    """Take ``folder/name`` by creating it empty; a rename over it then cannot overwrite."""
    try:
        os.close(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640))
    except FileExistsError:
        return False
    return True


def place_in_spool(spool_dir: Path, name: str, data: bytes) -> Path:
    """Put an alert file into ``incoming/`` atomically; return where it landed.

    For ``maild submit``: a hidden temp file, fsync, then a hard link to the final name
    (which fails instead of overwriting; ``NAME-2`` … is used when ``NAME`` is taken),
    then the directory is fsynced. The watcher never sees a half-written file.
    """
    if not name or "/" in name or "\0" in name or is_ignored(name) or name in (".", ".."):
        raise ValueError(f"not a usable spool file name: {name!r}")
    incoming = spool_dir / INCOMING
    incoming.mkdir(mode=0o2770, parents=True, exist_ok=True)  # before the daemon's first start
    tmp = incoming / f".{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
            # The file is complete before it gets its name, so let the watcher take it at
            # once: a file whose mtime is older than the settle time counts as stable.
            settled = time.time() - 60
            os.utime(fd, (settled, settled))
        finally:
            os.close(fd)
        for candidate in numbered(shorten(name, 200)):
            target = incoming / candidate
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # A file system without hard links: check, then rename (a racing writer
                # of the very same name could be overwritten; maild submit is the only one).
                if os.path.lexists(target):
                    continue
                os.rename(tmp, target)
            break
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(incoming)
    return target


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


ATTEMPTS_SUFFIX = ".attempts"


class AttemptCounter:
    """Started attempts per claim, in ``processing/.CLAIM.attempts``; the claim itself is
    the first. Written before an attempt, so one that kills the process still counts."""

    def __init__(self, processing: Path) -> None:
        self.processing = processing

    def _path(self, claim_name: str) -> Path:
        return self.processing / f".{claim_name}{ATTEMPTS_SUFFIX}"

    def started(self, claim_name: str) -> int:
        try:
            text = self._path(claim_name).read_text(encoding="ascii")
        except FileNotFoundError:
            return 1
        try:
            return max(1, int(text.strip()))
        except ValueError:
            log.warning("bad attempts counter for %s: %r", claim_name, text)
            return 1

    def set(self, claim_name: str, attempts: int) -> None:
        write_durably(self._path(claim_name), f"{attempts}\n".encode("ascii"))

    def forget(self, claim_name: str) -> None:
        self._path(claim_name).unlink(missing_ok=True)


def claim_of_attempts_file(name: str) -> str | None:
    """The claim an attempts file counts for, or None for any other name."""
    if name.startswith(".") and name.endswith(ATTEMPTS_SUFFIX):
        return name[1 : -len(ATTEMPTS_SUFFIX)]
    return None


def error_report(file_name: str, problems: Iterable[FileProblem]) -> str:
    """The text of ``NAME.error`` beside a rejected file: Japanese first, then English."""
    problems = list(problems)
    lines = [f"「{file_name}」は受け付けられませんでした。次の問題があります。", ""]
    lines += [f"  {p.ja}" if p.line is None else f"  {p.line}行目: {p.ja}" for p in problems]
    lines += [
        "",
        "ファイルを直して、もう一度 incoming フォルダに置くか maild submit で提出してください。",
        "",
        "----",
        "",
        f'The file "{file_name}" was not accepted:',
        "",
    ]
    lines += [f"  {p.en}" if p.line is None else f"  line {p.line}: {p.en}" for p in problems]
    lines += [
        "",
        "Fix the file and put it into the incoming folder again, or submit it with maild submit.",
    ]
    return "\n".join(lines) + "\n"


_CLAIM_NAME = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}-(.+)", re.DOTALL)


class Unreadable(Exception):
    """The claimed file cannot be an alert file at all (not a regular file, too big, …)."""

    def __init__(self, problem: FileProblem) -> None:
        super().__init__(problem.en)
        self.problem = problem


def original_of(claim_name: str) -> str:
    match = _CLAIM_NAME.fullmatch(claim_name)
    return match.group(1) if match else printable(claim_name)


def too_large(size: int, limit: int) -> FileProblem:
    return FileProblem(
        None,
        f"ファイルが大きすぎます（{size}バイト、上限{limit}バイト）",
        f"the file is too large ({size} bytes, at most {limit})",
    )
