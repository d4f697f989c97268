"""The only place maild reaches under aiosmtplib's documented API: taking over a connection.

aiosmtplib opens each relay connection (TCP, implicit TLS or STARTTLS, EHLO,
AUTH); :func:`take_transport` then takes the connected transport from its
``SMTP`` object, and :class:`maild.mail.smtp_wire.SmtpWire` (maild's own protocol)
carries the transactions over it, pipelined when the relay allows (RFC 2920).
That is the fan-out's hot path: aiosmtplib sends one command per write and waits
for each reply.

What this relies on, which aiosmtplib does not document:

- ``SMTP.transport`` is the live transport (after STARTTLS, the TLS one) and
  ``SMTP.protocol`` the protocol reading it;
- between commands aiosmtplib's protocol holds nothing it has read ahead (its
  private ``_buffer`` is empty; a connection where it is not is refused rather
  than handed over with a reply missing);
- once the transport has another protocol, aiosmtplib does nothing more with it,
  as long as the ``SMTP`` object is only dropped, never used or closed again.

``tests/test_aiosmtplib_compat.py`` pins these against stock aiosmtplib: over
plain, STARTTLS and implicit TLS connections, with and without AUTH, a
transaction over the taken transport reaches the relay exactly as aiosmtplib's
own ``sendmail`` does. :func:`check_version` refuses an aiosmtplib outside
:data:`SUPPORTED` (the versions this was checked against, and the range
``pyproject.toml`` allows); :class:`maild.mail.relay.SmtpRelay` calls it when it
is built, so the daemon refuses to start rather than run on a seam that no
longer fits.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re

import aiosmtplib

SUPPORTED = ">=3.0,<6"
_LOWEST = (3, 0)
_BELOW = (6,)

# The names this module reads that aiosmtplib does not document.
SEAMS = ("SMTP.transport", "SMTP.protocol", "SMTPProtocol._buffer")


class UnsupportedAiosmtplib(RuntimeError):
    """The installed aiosmtplib is not one maild's relay code was written for."""


class HandOffError(Exception):
    """The connection cannot be handed over (closed, or a reply read ahead)."""


def installed_version() -> str:
    return importlib.metadata.version("aiosmtplib")


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise UnsupportedAiosmtplib(f"aiosmtplib reports an unreadable version {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def check_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedAiosmtplib` unless aiosmtplib ``version`` (the installed
    one by default) is in :data:`SUPPORTED` and still has the attributes taken over."""
    version = installed_version() if version is None else version
    if not _LOWEST <= _release(version) < _BELOW:
        raise UnsupportedAiosmtplib(
            f"aiosmtplib {version} is installed, but maild's relay code supports aiosmtplib "
            f"{SUPPORTED} only (maild/mail/aiosmtplib_compat.py takes over its connections); "
            "install a version in that range"
        )
    smtp = aiosmtplib.SMTP()
    if not (hasattr(smtp, "transport") and hasattr(smtp, "protocol")):
        raise UnsupportedAiosmtplib(
            f"aiosmtplib {version} no longer has SMTP.transport and SMTP.protocol, which "
            f"maild/mail/aiosmtplib_compat.py takes over; install aiosmtplib {SUPPORTED}"
        )


def take_transport(smtp: aiosmtplib.SMTP) -> asyncio.Transport:
    """The transport of ``smtp``, connected and greeted, for another protocol to read.

    ``smtp`` must then be dropped: not used, not closed (that would close the transport).
    Raises :class:`HandOffError` if the connection is closing or aiosmtplib has read
    past the last reply.
    """
    transport = smtp.transport
    if not isinstance(transport, asyncio.Transport) or transport.is_closing():
        raise HandOffError("the connection closed")
    if getattr(smtp.protocol, "_buffer", b""):
        raise HandOffError("the server sent more than its replies")
    return transport
