"""The inbound SMTP listener: aiosmtpd sessions on the daemon's own event loop.

Every connection gets a session built through aiosmtpd's public constructor
(:class:`maild.inbound.aiosmtpd_compat.SMTPSession`, the one module that touches
aiosmtpd's private names), serving :class:`maild.inbound.handler.InboundHandler`'s
rules. :class:`InboundServer` counts sessions per peer and drains them on
shutdown (STYLE §3, §4).

The per-session ``[limits]`` rules: one more session than ``sessions_per_ip`` is
greeted with 421 and closed, a client silent for ``command_timeout`` gets 421
(both RFC 5321 replies aiosmtpd does not give by itself), a message over
``max_message_size`` gets aiosmtpd's 552. ``command_timeout`` is read for each new
session, so a reload applies to sessions that start after it. Trusted networks are
exempt from the per-IP rule. Once shutdown has begun, a session outside a
transaction gets 421 and is closed; one inside is let finish for a while.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
from typing import Any

from maild.common.config import ListenAddress, SmtpConfig
from maild.common.text import counted
from maild.inbound import aiosmtpd_compat
from maild.inbound.aiosmtpd_compat import SMTPSession
from maild.inbound.handler import LIMIT_SESSIONS, LIMIT_TIMEOUT, LIMITED, InboundHandler, peer_ip
from maild.residents.limits import is_trusted, peer_key

log = logging.getLogger("maild.smtp")

IDENT = "maild"

# SMTP replies (RFC 5321 §4.2, enhanced codes RFC 3463); ``{hostname}`` is ours.
SHUTTING_DOWN = "421 4.3.2 {hostname} Service shutting down, please try again later"
TOO_MANY_SESSIONS = "421 4.7.0 {hostname} Too many connections from your address, try again later"
# RFC 5321 §4.5.3.2: the server may close an idle session, and says so with 421 first.
TIMED_OUT = "421 4.4.2 {hostname} Timeout exceeded, closing connection"

DRAIN_POLL_SECONDS = 0.5
LOST_WAIT_SECONDS = 2.0


class _Session(SMTPSession):
    """One connection: registered with its server, so that shutdown can drain it and so
    that it counts against its peer's sessions."""

    def __init__(self, inbound: InboundServer, handler: InboundHandler, **kwargs: Any) -> None:
        self.inbound = inbound
        self.rules = handler
        self.admitted: bool | None = None  # None until the connection is made
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        again = self.admitted is not None  # aiosmtpd calls this a second time after STARTTLS
        super().connection_made(transport)
        if not again:
            self.admitted = self.inbound.admit(self, peer_ip(self.session))

    def connection_lost(self, error: Exception | None) -> None:
        self.inbound.forget(self)
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the end of DATA (or RSET): the part a shutdown waits for."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def greeting_refusal(self) -> str | None:
        # Over [limits] sessions_per_ip: RFC 5321 §3.1 lets a server greet with 421, then close.
        return None if self.admitted else self.reply(TOO_MANY_SESSIONS)

    def timeout_reply(self) -> str:
        log.info("SMTP session from %s timed out", peer_ip(self.session))
        self.rules.report(f"{LIMITED}:{LIMIT_TIMEOUT}")
        return self.reply(TIMED_OUT)

    # aiosmtpd's command methods, extended for shutdown.

    async def smtp_MAIL(self, arg: str | None) -> None:
        # Once shutdown has begun no new transaction starts (RFC 5321 §3.8: 421 and close).
        if self.inbound.closing:
            self.shut_down()
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        try:
            await super().smtp_DATA(arg)
        finally:
            self.inbound.wake()  # the transaction is over (or still is, after a 503)

    async def smtp_RSET(self, arg: str) -> None:
        try:
            await super().smtp_RSET(arg)
        finally:
            self.inbound.wake()

    def shut_down(self) -> None:
        self.say_goodbye(self.reply(SHUTTING_DOWN))

    def reply(self, template: str) -> str:
        """``template`` with our hostname in it."""
        return template.format(hostname=self.hostname)


class InboundServer:
    """The listener: aiosmtpd sessions on the running loop, drained on :meth:`close`.

    ``session_timeout`` overrides ``[limits] command_timeout``, which is otherwise
    read for each new session (so a reload applies to sessions that start after it).
    """

    def __init__(
        self, handler: InboundHandler, smtp: SmtpConfig, session_timeout: float | None = None
    ) -> None:
        # Before anything listens: the daemon refuses to start on an aiosmtpd it was not
        # written for (UnsupportedAiosmtpd names the range).
        aiosmtpd_compat.check_version()
        self.handler = handler
        self.smtp = smtp
        self.session_timeout = session_timeout
        self.port = 0
        self.closing = False
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._counted: dict[_Session, str] = {}  # admitted sessions of untrusted peers
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()  # a session ended a transaction or went away

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def start(self, sock: socket.socket | None, listen: ListenAddress) -> None:
        """Listen on ``sock`` (passed by systemd) or else on ``listen``; port 0 picks one."""
        loop = asyncio.get_running_loop()
        tls = _tls_context(self.smtp)

        def session() -> _Session:
            timeout = self.session_timeout
            if timeout is None:
                timeout = self.handler.config.limits.command_timeout
            return _Session(
                self,
                self.handler,
                data_size_limit=self.smtp.max_message_size,
                hostname=self.smtp.hostname,
                ident=IDENT,
                tls_context=tls,
                require_starttls=False,
                # Residents' carriers deliver to us unauthenticated; offer no AUTH at all.
                auth_exclude_mechanism=("LOGIN", "PLAIN"),
                timeout=timeout,
                loop=loop,
            )

        if sock is not None:
            self._server = await loop.create_server(session, sock=sock)
        else:
            self._server = await loop.create_server(session, host=listen.host, port=listen.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening for SMTP on port %d%s", self.port, " (STARTTLS offered)" if tls else "")

    async def close(self, timeout: float) -> None:
        """Stop accepting at once; let transactions under way finish for up to ``timeout`` s."""
        server, self._server = self._server, None
        if server is None:
            return
        self.closing = True
        server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for session in list(self._sessions):
                if not session.in_transaction:
                    session.shut_down()
            remaining = deadline - loop.time()
            if not any(s.in_transaction for s in self._sessions) or remaining <= 0:
                break
            # Woken when a transaction ends or a session goes; the poll catches the odd
            # transaction ended some other way (EHLO in the middle of one resets it).
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, DRAIN_POLL_SECONDS))
            except TimeoutError:
                pass
        aborted = [s for s in self._sessions if s.in_transaction]
        if aborted:
            log.warning("closing %s in mid-transaction", counted(len(aborted), "SMTP session"))
        for session in list(self._sessions):
            session.shut_down()
        if self._sessions:
            try:
                await asyncio.wait_for(self._all_gone(), LOST_WAIT_SECONDS)
            except TimeoutError:
                left = counted(len(self._sessions), "SMTP session")
                log.warning("%s did not close in time", left)
        await server.wait_closed()

    async def _all_gone(self) -> None:
        while self._sessions:
            self._changed.clear()
            await self._changed.wait()

    def transactions(self) -> int:
        """Sessions between MAIL and the end of DATA (or RSET)."""
        return sum(1 for s in self._sessions if s.in_transaction)

    def sessions_from(self, ip: str) -> int:
        """Sessions from ``ip`` (an IPv6 peer: its /64) counted against ``sessions_per_ip``."""
        return self._per_ip[peer_key(ip)]

    def admit(self, session: _Session, ip: str | None) -> bool:
        """Track a new session; False if its peer already has its fill of sessions."""
        self._sessions.add(session)
        limits = self.handler.config.limits
        if ip is None or is_trusted(ip, limits.trusted_networks):
            return True  # a carrier's MTA (or a socket without an address)
        key = peer_key(ip)
        if self._per_ip[key] >= limits.sessions_per_ip:
            log.warning(
                "refused an SMTP session from %s: %d sessions already", ip, self._per_ip[key]
            )
            self.handler.report(f"{LIMITED}:{LIMIT_SESSIONS}")
            return False
        self._per_ip[key] += 1
        self._counted[session] = key
        return True

    def forget(self, session: _Session) -> None:
        """A session has gone: its place is free again."""
        self._sessions.discard(session)
        ip = self._counted.pop(session, None)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
        self.wake()

    def wake(self) -> None:
        """A transaction may have ended: :meth:`close` looks again."""
        self._changed.set()


def _tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    if smtp.tls_cert_file is None or smtp.tls_key_file is None:
        return None
    # Server side, no client certificates: any MTA may deliver to us (RFC 3207 §4.1).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(smtp.tls_cert_file, smtp.tls_key_file)
    return context
