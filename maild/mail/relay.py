"""Outbound transport: hand one message for one recipient to the relay.

Transport only — no database, no retry policy. A :class:`Relay` takes an
envelope sender, ONE recipient and the message bytes, and either returns
(the relay took responsibility for the mail) or raises :class:`TemporaryFailure`
(try again later) or :class:`PermanentFailure` (the relay refused this
recipient or message for good). Callers decide what a failure means.

One recipient per message, many messages per connection (docs/mail-delivery.md: docomo drops
a whole session with too many recipients, and one bad recipient can fail the
others). aiosmtplib opens each connection (TLS, EHLO, AUTH); the transactions
then run over :class:`maild.mail.smtp_wire.SmtpWire`, pipelined when the relay says
PIPELINING (:mod:`maild.mail.aiosmtplib_compat` hands the connection over).
Recipients are written on the wire exactly as :func:`maild.common.addresses.smtp_path`
gives them, keeping ``RCPT TO:<"taro..yamada"@docomo.ne.jp>`` intact.

``maildir:PATH`` writes every message into a Maildir instead, so people trying
maild out (``make run``) see each mail as a file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from maild.common.addresses import mask, smtp_path
from maild.common.config import ConfigError, RelayConfig
from maild.mail.aiosmtplib_compat import HandOffError, check_version, take_transport
from maild.mail.errors import (
    DeliveryError,
    PermanentFailure,
    Stage,
    TemporaryFailure,
    failure,
    mask_addresses,
)
from maild.mail.maildir import Maildir
from maild.mail.smtp_wire import SmtpWire, WireClosed, WireError, data_payload

log = logging.getLogger("maild.delivery")


# SMTP reply codes (RFC 5321 §4.2.2, §4.2.3).
OK = 250
WILL_FORWARD = 251
START_INPUT = 354
SERVICE_NOT_AVAILABLE = 421

DEFAULT_TIMEOUT = 60.0
# A pooled connection idle longer than this is probed with NOOP before reuse;
# servers may drop idle clients after a few minutes (RFC 5321 §4.5.3.2.7).
PROBE_IDLE_AFTER = 30.0
# How long close() lets connections finish closing before cutting them off.
CLOSE_WAIT = 2.0


class Relay(Protocol):
    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        """Deliver ``data`` to one ``recipient``; raise a :class:`DeliveryError` if not taken."""
        ...

    async def close(self) -> None: ...


def open_relay(
    config: RelayConfig, hostname: str, *, tls_context: ssl.SSLContext | None = None
) -> Relay:
    """The relay ``config.url`` names; ``hostname`` is ours (EHLO, Maildir file names)."""
    if config.scheme == "maildir":
        return MaildirRelay(Path(config.url.removeprefix("maildir:")), hostname)
    return SmtpRelay(config, hostname, tls_context=tls_context)


def _wire_path(address: str, stage: Stage) -> bytes:
    """``<path>`` for MAIL/RCPT; the empty address is the null sender ``<>``."""
    path = smtp_path(address) if address else ""
    if not path.isascii() or re.search(r"[\x00-\x20<>\x7f]", path):
        # Never put such text on a command line (it could smuggle commands in).
        raise PermanentFailure(None, f"address {mask(address)} cannot be sent", stage=stage)
    return b"<" + path.encode("ascii") + b">"


# --- SMTP --------------------------------------------------------------------


class _Pacer:
    """Spaces message starts at least 1/rate seconds apart (a bucket of one token).

    Only paces, so it reads the monotonic clock rather than maild's Clock.
    """

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class _Connection:
    wire: SmtpWire
    number: int
    last_used: float
    pipelining: bool  # RFC 2920: MAIL, RCPT and DATA may go out in one write
    size: bool  # RFC 1870: MAIL FROM may say SIZE=
    eight_bit: bool  # RFC 6152: BODY=8BITMIME
    messages: int = 0


class _Stale(Exception):
    """A reused connection failed before the relay accepted anything: safe to retry."""

    def __init__(self, error: TemporaryFailure) -> None:
        super().__init__(str(error))
        self.error = error


class SmtpRelay:
    """A pool of up to ``config.connections`` SMTP connections to one relay."""

    def __init__(
        self,
        config: RelayConfig,
        hostname: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if config.scheme not in ("smtp", "smtp+starttls", "smtps"):
            raise ConfigError(f"[relay] url: {config.url!r} is not an SMTP URL")
        check_version()  # UnsupportedAiosmtplib: the daemon does not start
        self.host = config.host
        self.port = config.port
        self._hostname = hostname
        self._timeout = timeout
        self._use_tls = config.scheme == "smtps"
        self._start_tls = config.scheme == "smtp+starttls"
        self._tls_context: ssl.SSLContext | None = None
        if self._use_tls or self._start_tls:
            self._tls_context = tls_context or _client_context(config.verify_tls)
        self._username = config.username or None
        self._password: str | None = None
        if self._username:
            try:
                self._password = config.password()
            except OSError as e:
                raise ConfigError(
                    f"[relay] password_file: cannot read {config.password_file}: {e.strerror}"
                ) from None
        self._slots = asyncio.Semaphore(config.connections)
        self._idle: list[_Connection] = []
        self._pacer = _Pacer(config.max_per_second)
        self._numbers = itertools.count(1)
        self._closed = False
        self._closing: set[asyncio.Transport] = set()
        self._stalled: Stage | None = None  # the stage of the first timeout of an outage

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TemporaryFailure(None, "the relay connection pool is closed")
        sender = _wire_path(envelope_from, "mail")
        rcpt = _wire_path(recipient, "rcpt")
        await self._pacer.wait()
        async with self._slots:
            conn, reused = await self._checkout()
            keep = False
            try:
                try:
                    await self._transaction(conn, sender, rcpt, data)
                except _Stale as stale:
                    if not reused:
                        raise stale.error from None
                    # The server closed a pooled connection while it sat idle.
                    log.info("relay connection %d went away; reconnecting", conn.number)
                    self._discard(conn)
                    conn = await self._open()
                    try:
                        await self._transaction(conn, sender, rcpt, data)
                    except _Stale as again:
                        raise again.error from None
                keep = True
                conn.messages += 1
                log.debug("relay took mail for %s (connection %d)", mask(recipient), conn.number)
                if self._stalled is not None:
                    log.warning("relay %s answers again", self._where)
                    self._stalled = None
            except DeliveryError as e:
                log.info("relay did not take mail for %s: %s (%s)", mask(recipient), e, e.stage)
                if e.timed_out and self._stalled is None:
                    # Once per outage: every message in flight times out alike.
                    self._stalled = e.stage
                    log.warning(
                        "relay %s stalled: no reply within %g s at %s; mail waits and is retried",
                        self._where,
                        self._timeout,
                        e.stage,
                    )
                keep = e.stage != "connect" and await self._reset(conn)
                raise
            finally:
                if keep and not self._closed and conn.wire.is_connected:
                    conn.last_used = time.monotonic()
                    self._idle.append(conn)
                else:
                    self._discard(conn)

    async def close(self) -> None:
        """Say QUIT on idle connections and wait until every connection is closed."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._track_closing(conn.wire.transport)
            try:
                await asyncio.wait_for(conn.wire.command(b"QUIT"), timeout=5)
            except (TimeoutError, WireClosed, WireError, OSError):
                pass
            finally:
                self._discard(conn)
        # A TLS transport finishes closing (close_notify) on later loop turns; without
        # this wait, asyncio.run() could end first and leave the socket unclosed.
        deadline = time.monotonic() + CLOSE_WAIT
        while True:
            self._closing = {t for t in self._closing if not _closed(t)}
            if not self._closing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        for transport in self._closing:
            transport.abort()
        self._closing.clear()
        await asyncio.sleep(0)

    # --- connections ---

    async def _checkout(self) -> tuple[_Connection, bool]:
        """A connection for one transaction, and whether it had been used before."""
        while self._idle:
            conn = self._idle.pop()
            if await self._usable(conn):
                return conn, True
            self._discard(conn)
        return await self._open(), False

    async def _usable(self, conn: _Connection) -> bool:
        if not conn.wire.is_connected:
            return False
        if time.monotonic() - conn.last_used < PROBE_IDLE_AFTER:
            return True
        try:
            reply = await conn.wire.command(b"NOOP")
        except (TimeoutError, WireClosed, WireError, OSError):
            return False
        return reply.code == OK and conn.wire.is_connected

    async def _open(self) -> _Connection:
        number = next(self._numbers)
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self._hostname,
            timeout=self._timeout,
            use_tls=self._use_tls,
            start_tls=self._start_tls,
            tls_context=self._tls_context,
            username=self._username,
            password=self._password,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await smtp.helo()
        except aiosmtplib.SMTPAuthenticationError as e:
            smtp.close()
            log.error("relay %s refused our login: %d %s", self._where, e.code, e.message)
            raise TemporaryFailure(e.code, f"relay refused the login: {e.message}") from None
        except aiosmtplib.SMTPResponseException as e:
            smtp.close()
            log.warning("relay %s answered %d %s", self._where, e.code, mask_addresses(e.message))
            raise TemporaryFailure(e.code, e.message) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as e:
            smtp.close()
            text = f"cannot reach relay {self._where}: {_describe(e)}"
            log.warning("%s", text)
            raise TemporaryFailure(None, text, timed_out=isinstance(e, TimeoutError)) from None
        except BaseException:
            smtp.close()
            raise
        try:
            # aiosmtplib has opened and greeted; the transactions go over our own wire.
            transport = take_transport(smtp)
        except HandOffError as e:
            smtp.close()
            raise TemporaryFailure(None, f"relay {self._where}: {e}") from None
        conn = _Connection(
            SmtpWire(transport, self._timeout),
            number,
            time.monotonic(),
            pipelining=smtp.supports_extension("pipelining"),
            size=smtp.supports_extension("size"),
            eight_bit=smtp.supports_extension("8bitmime"),
        )
        log.debug("relay connection %d to %s opened", number, self._where)
        return conn

    def _discard(self, conn: _Connection) -> None:
        self._track_closing(conn.wire.transport)
        conn.wire.close()

    def _track_closing(self, transport: asyncio.BaseTransport | None) -> None:
        """Remember a transport being closed, so close() can wait for it."""
        self._closing = {t for t in self._closing if not _closed(t)}
        if isinstance(transport, asyncio.Transport) and not _closed(transport):
            self._closing.add(transport)

    async def _reset(self, conn: _Connection) -> bool:
        """RSET after a refused transaction; True if the connection can be reused."""
        if not conn.wire.is_connected:
            return False
        try:
            reply = await conn.wire.command(b"RSET")
        except (TimeoutError, WireClosed, WireError, OSError):
            return False
        return reply.code == OK

    # --- one transaction ---

    async def _transaction(
        self, conn: _Connection, sender: bytes, rcpt: bytes, data: bytes
    ) -> None:
        """MAIL, RCPT, DATA and the message: pipelined in two writes when the relay
        allows it (RFC 2920), else one command at a time."""
        wire = conn.wire
        mail = b"MAIL FROM:" + sender
        if conn.size:
            mail += b" SIZE=%d" % len(data)
        if conn.eight_bit and not data.isascii():
            mail += b" BODY=8BITMIME"
        commands = (mail + b"\r\n", b"RCPT TO:" + rcpt + b"\r\n", b"DATA\r\n")
        payload = data_payload(data)
        try:
            if conn.pipelining:
                await wire.write(b"".join(commands))
            else:
                await wire.write(commands[0])
            reply = await wire.reply()
        except (TimeoutError, WireClosed, WireError, OSError) as e:
            raise _Stale(_broken(conn, e, "mail")) from None
        if reply.code == SERVICE_NOT_AVAILABLE:
            wire.close()  # the server is closing it; pipelined replies may still be due
            raise _Stale(TemporaryFailure(reply.code, reply.text, stage="mail"))
        refused: DeliveryError | None = None
        if reply.code != OK:
            refused = failure(reply.code, reply.text, "mail")
            if not conn.pipelining:
                raise refused

        try:
            if not conn.pipelining:
                await wire.write(commands[1])
            reply = await wire.reply()
            if refused is None and reply.code not in (OK, WILL_FORWARD):
                refused = failure(reply.code, reply.text, "rcpt")
                if not conn.pipelining:
                    raise refused
            if not conn.pipelining:
                await wire.write(commands[2])
            reply = await wire.reply()
            if reply.code == START_INPUT and refused is not None:
                # Some servers take DATA although every recipient was refused
                # (RFC 2920 §3.1): end it with an empty message.
                await wire.write(b".\r\n")
                await wire.reply()
            if refused is not None:
                raise refused
            if reply.code != START_INPUT:
                raise failure(reply.code, reply.text, "data")
        except (TimeoutError, WireClosed, WireError, OSError) as e:
            broken = _broken(conn, e, "rcpt")
            raise (refused or broken) from None

        try:
            await wire.write(payload)
            reply = await wire.reply()
        except (TimeoutError, WireClosed, WireError, OSError) as e:
            # The end of DATA may or may not have reached the relay: a later retry
            # can deliver twice, which is SMTP's usual trade (RFC 5321 §4.1.1.4).
            raise _broken(conn, e, "data") from None
        if reply.code != OK:
            raise failure(reply.code, reply.text, "data")


def _broken(conn: _Connection, error: BaseException, stage: Stage) -> TemporaryFailure:
    """No reply, or a garbled one: close the connection, since replies still under
    way would answer the wrong commands, and say what went wrong."""
    conn.wire.close()
    timed_out = isinstance(error, TimeoutError)
    return TemporaryFailure(None, _describe(error), stage=stage, timed_out=timed_out)


def _closed(transport: asyncio.Transport) -> bool:
    """Whether the socket under ``transport`` (TLS or not) has been closed for good."""
    sock = transport.get_extra_info("socket")
    return sock is None or sock.fileno() == -1


def _client_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe(error: BaseException) -> str:
    cause = error.__cause__
    text = str(error) or type(error).__name__
    if isinstance(cause, OSError) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


# --- Maildir -----------------------------------------------------------------


class MaildirRelay:
    """Writes each message into a Maildir (:class:`maild.mail.maildir.Maildir`)."""

    def __init__(self, path: Path, hostname: str) -> None:
        self.path = path
        self.maildir = Maildir(path, hostname)

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        try:
            written = await asyncio.to_thread(self.maildir.deliver, envelope_from, recipient, data)
        except OSError as e:
            raise TemporaryFailure(None, f"cannot write to {self.path}: {e.strerror}") from None
        log.info("mail for %s written to %s", mask(recipient), written.name)

    async def close(self) -> None:
        return None
