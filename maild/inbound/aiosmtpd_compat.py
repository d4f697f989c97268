"""The only place maild reaches into aiosmtpd's private names, and the versions that is safe for.

:class:`SMTPSession` is aiosmtpd's stock ``SMTP`` protocol, built through its
public constructor for every connection, with three changes:

- **A 421 greeting** (RFC 5321 §3.1: a server may answer the connection with 421
  instead of 220, then close). :meth:`SMTPSession.greeting_refusal` returns the
  reply, or None to greet as usual. aiosmtpd has no hook before its greeting, so
  this overrides its private session loop ``SMTP._handle_client``: a refused
  session never enters it; every other session runs it unchanged.
- **A reply before an idle close** (RFC 5321 §4.5.3.2: a server may give up on a
  silent client, and 421 tells the client's MTA why).
  :meth:`SMTPSession.timeout_reply` returns the reply, or None to close without
  one as stock aiosmtpd does. This overrides its private idle timer callback
  ``SMTP._timeout_cb``, which still does the closing.
- **Command size limits per session.** aiosmtpd 1.4 keeps
  ``SMTP.command_size_limits`` on the class and clears it in every ``__init__``,
  so one session's EHLO raised every other session's MAIL line limit and each new
  session reset them. Each session here gets its own mapping, which EHLO raises
  and the session loop reads as stock aiosmtpd does.

With both hooks returning None a session says and does exactly what stock
aiosmtpd's does; ``tests/test_aiosmtpd_compat.py`` checks that over real sockets
for many dialogues, and pins each seam. :func:`check_version` refuses an aiosmtpd
outside :data:`SUPPORTED` (the versions these seams were read against, and the
range ``pyproject.toml`` allows), and any version where a seam has gone. The
listener calls it where it is built, so the daemon refuses to start rather than
run with seams that no longer fit. Moving the range means reading
``aiosmtpd/smtp.py`` of the new version against this module and running those
tests.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import re
from typing import Any

from aiosmtpd.smtp import SMTP

# aiosmtpd 1.4.5 has the SMTP smuggling fix (CVE-2024-27305); 1.5 may change the
# private names below.
SUPPORTED = ">=1.4.5,<1.5"
_LOWEST = (1, 4, 5)
_BELOW = (1, 5)

# The private names this module overrides; each must still be a method of SMTP.
SEAMS = ("_handle_client", "_timeout_cb")


class UnsupportedAiosmtpd(RuntimeError):
    """The installed aiosmtpd is not one maild's SMTP listener was written for."""


def installed_version() -> str:
    return importlib.metadata.version("aiosmtpd")


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``1.4.4.post2`` → (1, 4, 4)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise UnsupportedAiosmtpd(f"aiosmtpd reports an unreadable version {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def check_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedAiosmtpd` unless aiosmtpd ``version`` (the installed
    one by default) is in :data:`SUPPORTED` and still has every seam."""
    version = installed_version() if version is None else version
    release = _release(version)
    if not _LOWEST <= release < _BELOW:
        raise UnsupportedAiosmtpd(
            f"aiosmtpd {version} is installed, but maild's SMTP listener supports aiosmtpd "
            f"{SUPPORTED} only (maild/inbound/aiosmtpd_compat.py overrides its private "
            f"{', '.join(SEAMS)}); install a version in that range"
        )
    missing = [name for name in SEAMS if not callable(getattr(SMTP, name, None))]
    if missing or not isinstance(vars(SMTP).get("command_size_limits"), dict):
        raise UnsupportedAiosmtpd(
            f"aiosmtpd {version} no longer has what maild/inbound/aiosmtpd_compat.py "
            f"overrides ({', '.join(missing) or 'SMTP.command_size_limits'}); "
            f"install aiosmtpd {SUPPORTED}"
        )


def _stock_size_limits() -> collections.defaultdict[str, int]:
    return collections.defaultdict(lambda: SMTP.command_size_limit)


class SMTPSession(SMTP):
    """aiosmtpd's protocol for one connection, with the 421 replies and its own limits."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # An instance attribute shadows the class's shared mapping (see the module doc).
        self.command_size_limits = _stock_size_limits()

    def greeting_refusal(self) -> str | None:
        """A reply to greet with instead of 220, the connection then closed; None to greet.

        Asked once, when aiosmtpd would send its greeting (``connection_made`` has run).
        """
        return None

    def timeout_reply(self) -> str | None:
        """A reply to send to a client silent for the session's timeout, before the close."""
        return None

    def say_goodbye(self, reply: str) -> None:
        """Send ``reply`` and close; nothing if the client has already gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.encode("ascii") + b"\r\n")
        transport.close()

    # --- aiosmtpd's private names (see the module docstring and SEAMS) ---

    async def _handle_client(self) -> None:
        refusal = self.greeting_refusal()
        if refusal is not None:
            self.say_goodbye(refusal)
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        reply = self.timeout_reply()
        transport = self.transport
        if reply is not None and transport is not None and not transport.is_closing():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(reply.encode("ascii") + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # untyped in aiosmtpd
