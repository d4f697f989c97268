"""Delivery into a Maildir (maildir(5)): written to ``tmp``, fsynced, renamed into ``new``.

Blocking file work only (no event loop, no retry policy): :class:`maild.mail.relay.MaildirRelay`
runs it in a thread and maps an ``OSError`` to a temporary failure. Each file is
private (0600) and starts with ``Return-Path`` and ``Delivered-To`` trace lines, so
that people trying maild out (``make run``) see each mail as a file.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

from maild.common.addresses import smtp_path


class Maildir:
    """One Maildir folder; its subfolders are made on the first delivery."""

    def __init__(self, path: Path, hostname: str) -> None:
        self.path = path
        # Maildir names must not contain "/" or ":" (maildir(5)).
        self._host = (hostname or socket.gethostname()).replace("/", r"\057").replace(":", r"\072")
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def deliver(self, envelope_from: str, recipient: str, data: bytes) -> Path:
        """Write one message; returns its path in ``new``. Blocking: run it in a thread."""
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        trace = (
            f"Return-Path: <{smtp_path(envelope_from) if envelope_from else ''}>\n"
            f"Delivered-To: {smtp_path(recipient)}\n"
        ).encode("ascii", "replace")
        # Maildir files hold LF line endings (maildir(5)); CRLF is a wire format.
        content = trace + data.replace(b"\r\n", b"\n")
        while True:
            name = self._unique_name()
            tmp = self.path / "tmp" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            break
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        final = self.path / "new" / name
        os.rename(tmp, final)
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def _unique_name(self) -> str:
        with self._lock:
            number = next(self._numbers)
        now = time.time_ns()
        seconds, micro = divmod(now // 1000, 1_000_000)
        return f"{seconds}.M{micro}P{os.getpid()}Q{number}.{self._host}"
