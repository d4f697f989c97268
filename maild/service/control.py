"""The control socket (issue 15): how people who may not read the config reach maild.

Like Postfix's ``postqueue``, the queue and its secrets stay private to the service
user; the operators' ``maild`` command connects to a local Unix socket and the daemon
learns who is calling from the kernel (``SO_PEERCRED``), never from the request. The
caller's Unix groups give a role (:mod:`maild.common.roles`); a command outside it is
refused with a sentence naming the role, and the refusal goes into the audit log.

Protocol: one JSON object per line each way, one request per connection::

    → {"argv": ["alerts", "approve", "5"], "files": {"a.txt": "<base64>"}}
    ← {"exit": 0, "stdout": "…", "stderr": "…", "files": {…}, "spool_dir": "…"}

An allowed command runs as a child ``maild --config … ARGV`` of the daemon, in a fresh
private folder holding the files the caller sent (alert files, an import CSV) and
receiving the files it writes (``qr --output``); the child takes the caller's name for
the audit log from ``MAILD_CALLER``, which :func:`maild.cli.common.invoker` trusts only
in a process running as the service user. So a command means the same over the socket
as run by the service user itself.

The socket file is mode 0666: whether a caller may do something is decided here from
the kernel's word, per command, so that a person with no role is refused *and
recorded*, and three groups need no single file group. A socket mode cannot tell
operators from approvers anyway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maild.common import roles
from maild.common.clock import Clock
from maild.common.config import Config
from maild.common.roles import ADMIN, APPROVER, OPERATOR
from maild.store.db import Database
from maild.store.models import Alert, AuditEntry

log = logging.getLogger("maild.control")

CALLER_ENV = "MAILD_CALLER"
MAX_REQUEST = 32 * 1024 * 1024  # alert files and an import CSV, base64
COMMAND_SECONDS = 600.0
# Commands run at once; more wait their turn. Anyone may connect (window, qr), so a
# caller in a loop must not fork the daemon's machine to a halt.
CONCURRENT_COMMANDS = 4
PUBLIC = "public"  # anyone: what a poster or the web page shows anyway

# The role each command needs, by its first words. Anything else (serve, deliver, db
# upgrade) is the service user's own and is never run for a caller.
COMMANDS: dict[tuple[str, ...], str] = {
    ("window",): PUBLIC,
    ("qr",): PUBLIC,
    ("submit",): OPERATOR,
    ("alerts", "list"): OPERATOR,
    ("alerts", "show"): OPERATOR,
    ("alerts", "cancel"): OPERATOR,  # the workflow: one's own request, before approval
    ("alerts", "approve"): APPROVER,
    ("alerts", "send-now"): APPROVER,
    ("subscribers", "import"): ADMIN,
    ("subscribers", "export"): ADMIN,
    ("subscribers", "remove"): ADMIN,
    ("subscribers", "stats"): ADMIN,
    ("check-config",): ADMIN,
    ("dkim", "record"): ADMIN,
    ("nodes",): ADMIN,
    ("users",): ADMIN,  # the console's accounts
}

# Refusals go to the audit log: (user, command words, alert id or None).
AuditRefusal = Callable[[str, str, int | None], None]


def refusal_recorder(db: Database, clock: Clock) -> AuditRefusal:
    def record(user: str, command: str, alert_id: int | None) -> None:
        """A refused command in the audit log, beside the alert it named if there is one."""
        with db.transaction() as session:
            if alert_id is not None and session.get(Alert, alert_id) is None:
                alert_id = None
            session.add(
                AuditEntry(
                    alert_id=alert_id, at=clock.now(), action="refused", user=user, detail=command
                )
            )

    return record


def needed_role(argv: list[str]) -> str | None:
    """The role ``argv`` needs; None: not a command for the control socket."""
    for words, role in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            return role
    return None


def peer_user(sock: socket.socket) -> tuple[int, str]:
    """The calling process's uid and user name, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid, roles.user_name(uid)


def may(config: Config, uid: int, user: str, needed: str) -> bool:
    if needed == PUBLIC or uid in (0, os.getuid()):  # root and the service user: all
        return True
    held = roles.roles_of(config, user)
    return needed in held


def _words(argv: list[str]) -> str:
    """The command's name (``alerts approve``), none of its arguments."""
    for words in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            return " ".join(words)
    return ""


def _alert_id(argv: list[str]) -> int | None:
    if argv[:1] == ["alerts"] and len(argv) >= 3 and argv[2].isdigit():
        return int(argv[2])
    return None


class ControlServer:
    def __init__(self, config: Callable[[], Config], audit: AuditRefusal) -> None:
        self._config = config  # the running config: a reload changes the groups
        self._audit = audit
        self._server: asyncio.base_events.Server | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_COMMANDS)
        self.path = config().service.control_socket

    async def start(self) -> None:
        path = self.path
        if not path.parent.exists():
            # Everyone must reach the socket; the umask (0077) would keep them out.
            path.parent.mkdir(parents=True)
            os.chmod(path.parent, 0o755)
        if path.is_socket():
            path.unlink()  # left by a daemon that was killed
        self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_REQUEST)
        os.chmod(path, 0o666)  # see the module's docstring: refusals are per command

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid, user = peer_user(sock)
            try:
                request = json.loads(await reader.readline())
                argv = [str(a) for a in request["argv"]]
                files = {
                    str(k): base64.b64decode(v, validate=True)
                    for k, v in request.get("files", {}).items()
                }
            except (ValueError, KeyError, TypeError, binascii.Error):
                answer = _failed("maild: 要求を読めません / the request is not readable")
            else:
                answer = await self._answer(uid, user, argv, files)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            log.warning("control socket: a connection failed: %s", e)
        finally:
            writer.close()

    async def _answer(
        self, uid: int, user: str, argv: list[str], files: dict[str, bytes]
    ) -> dict[str, Any]:
        config = self._config()
        needed = needed_role(argv)
        words = _words(argv) or " ".join(argv[:1])
        if needed is None:
            return _failed(
                f"maild: {words} は制御ソケットからは実行できません / {words} cannot be run "
                "through the control socket"
            )
        if not await asyncio.to_thread(may, config, uid, user, needed):
            log.warning("control socket: refused %s to %s (needs %s)", words, user, needed)
            # The command's words and the alert's id only: never an address (STYLE).
            alert_id = _alert_id(argv)
            detail = _words(argv) + (f" {alert_id}" if alert_id is not None else "")
            await asyncio.to_thread(self._audit, user, detail, alert_id)
            return _failed(f"maild: {roles.refusal(user, needed)}")
        async with self._slots:
            answer = await self._run(config, user, argv, files)
        # The command's words only: never an address (STYLE).
        log.info("control socket: %s ran %s (exit %s)", user, words, answer["exit"])
        return answer

    async def _run(
        self, config: Config, user: str, argv: list[str], files: dict[str, bytes]
    ) -> dict[str, Any]:
        folder = Path(tempfile.mkdtemp(prefix="maild-control-"))
        try:
            for name, data in files.items():
                if Path(name).name != name or name in ("", ".", ".."):
                    return _failed(f"maild: {name!r}: not a file name")
                (folder / name).write_bytes(data)
            env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", CALLER_ENV)}
            env[CALLER_ENV] = user
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "maild",
                "--config",
                str(config.path),
                *argv,
                cwd=folder,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(child.communicate(), COMMAND_SECONDS)
            except TimeoutError:
                child.kill()
                await child.wait()
                return _failed("maild: 時間切れ / the command took too long")
            written = {
                p.name: base64.b64encode(p.read_bytes()).decode()
                for p in folder.iterdir()
                if p.is_file() and p.name not in files
            }
            return {
                "exit": child.returncode,
                "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace"),
                "files": written,
                "spool_dir": str(config.spool.dir),
            }
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _failed(message: str) -> dict[str, Any]:
    return {"exit": 1, "stdout": "", "stderr": message + "\n", "files": {}}
