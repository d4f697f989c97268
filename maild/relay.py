"""Outbound transport: hand one message for one recipient to the relay.

Transport only — no database, no retry policy. A :class:`Relay` takes an
envelope sender, ONE recipient and the message bytes, and either returns
(the relay took responsibility for the mail) or raises :class:`TemporaryFailure`
(try again later) or :class:`PermanentFailure` (the relay refused this
recipient or message for good). Callers decide what a failure means.

One recipient per message, many messages per connection (SPEC §10: docomo drops
a whole session with too many recipients, and one bad recipient can fail the
others). Recipients are written on the wire exactly as
:func:`maild.addresses.smtp_path` gives them: aiosmtplib's ``mail``/``rcpt``
run addresses through ``email.utils.parseaddr``, so MAIL and RCPT are sent as raw
commands instead, keeping ``RCPT TO:<"taro..yamada"@docomo.ne.jp>`` intact.

``maildir:PATH`` writes every message into a Maildir instead, so people trying
maild out (``make run``) see each mail as a file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from maild.addresses import mask, smtp_path
from maild.config import ConfigError, RelayConfig

log = logging.getLogger("maild.delivery")

Stage = Literal["connect", "mail", "rcpt", "data", "compose"]

# SMTP reply codes (RFC 5321 §4.2.2, §4.2.3).
OK = 250
WILL_FORWARD = 251
SERVICE_NOT_AVAILABLE = 421
# Authentication required / needs a stronger mechanism / encryption required (RFC 4954 §6,
# RFC 3207 §4): the relay wants a login or TLS before it takes any mail.
RELAY_SETUP_CODES = frozenset({530, 534, 538})

DEFAULT_TIMEOUT = 60.0
# A pooled connection idle longer than this is probed with NOOP before reuse;
# servers may drop idle clients after a few minutes (RFC 5321 §4.5.3.2.7).
PROBE_IDLE_AFTER = 30.0
# How long close() lets connections finish closing before cutting them off.
CLOSE_WAIT = 2.0

_ADDRESS_IN_TEXT = re.compile(
    r"(?:\"[^\"\r\n]*\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)


def mask_addresses(text: str) -> str:
    """Mask every mail address inside free text, such as a relay's reply (SPEC §9)."""
    return _ADDRESS_IN_TEXT.sub(lambda m: mask(m.group(0).replace('"', "")), text)


class DeliveryError(Exception):
    """The relay did not take the message.

    ``code`` is the SMTP reply code (None when there was no reply: refused
    connection, timeout, TLS failure, full disk); ``text`` the reply text with
    addresses masked; ``stage`` says where it failed. Only ``rcpt`` and ``data``
    failures say something about the recipient; ``connect`` failures (including
    a refused login or STARTTLS) are about the relay, and are always temporary.
    """

    def __init__(self, code: int | None, text: str, *, stage: Stage = "connect") -> None:
        self.code = code
        self.text = mask_addresses(text.strip())
        self.stage: Stage = stage
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class TemporaryFailure(DeliveryError):
    """4xx, or no usable connection: the same message may succeed later."""


class PermanentFailure(DeliveryError):
    """5xx for this recipient or message: sending it again will not help."""


def failure(code: int | None, text: str, stage: Stage) -> DeliveryError:
    """The right :class:`DeliveryError` for an SMTP reply (4xx temporary, 5xx permanent)."""
    if code in RELAY_SETUP_CODES:
        # "Authenticate / STARTTLS first" says nothing about the recipient: fix the
        # relay settings and the same mail goes through.
        return TemporaryFailure(code, text, stage="connect")
    if code is not None and 500 <= code < 600 and stage != "connect":
        return PermanentFailure(code, text, stage=stage)
    return TemporaryFailure(code, text, stage=stage)


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
    smtp: aiosmtplib.SMTP
    number: int
    last_used: float
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
            except DeliveryError as e:
                log.info("relay did not take mail for %s: %s (%s)", mask(recipient), e, e.stage)
                keep = e.stage != "connect" and await self._reset(conn)
                raise
            finally:
                if keep and not self._closed and conn.smtp.is_connected:
                    conn.last_used = time.monotonic()
                    self._idle.append(conn)
                else:
                    self._discard(conn)

    async def close(self) -> None:
        """Say QUIT on idle connections and wait until every connection is closed."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._track_closing(conn.smtp.transport)
            try:
                await asyncio.wait_for(conn.smtp.quit(), timeout=5)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
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
        if not conn.smtp.is_connected:
            return False
        if time.monotonic() - conn.last_used < PROBE_IDLE_AFTER:
            return True
        try:
            await conn.smtp.noop()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            return False
        return conn.smtp.is_connected

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
            raise TemporaryFailure(None, text) from None
        except BaseException:
            smtp.close()
            raise
        log.debug("relay connection %d to %s opened", number, self._where)
        return _Connection(smtp, number, time.monotonic())

    def _discard(self, conn: _Connection) -> None:
        self._track_closing(conn.smtp.transport)
        conn.smtp.close()

    def _track_closing(self, transport: asyncio.BaseTransport | None) -> None:
        """Remember a transport being closed, so close() can wait for it."""
        self._closing = {t for t in self._closing if not _closed(t)}
        if isinstance(transport, asyncio.Transport) and not _closed(transport):
            self._closing.add(transport)

    async def _reset(self, conn: _Connection) -> bool:
        """RSET after a refused transaction; True if the connection can be reused."""
        if not conn.smtp.is_connected:
            return False
        try:
            await conn.smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            return False
        return True

    # --- one transaction ---

    async def _transaction(
        self, conn: _Connection, sender: bytes, rcpt: bytes, data: bytes
    ) -> None:
        smtp = conn.smtp
        params: list[bytes] = []
        if smtp.supports_extension("size"):
            params.append(b"SIZE=%d" % len(data))
        if not data.isascii() and smtp.supports_extension("8bitmime"):
            params.append(b"BODY=8BITMIME")
        try:
            reply = await smtp.execute_command(b"MAIL", b"FROM:" + sender, *params)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise _Stale(TemporaryFailure(None, _describe(e), stage="mail")) from None
        if reply.code == SERVICE_NOT_AVAILABLE:
            raise _Stale(TemporaryFailure(reply.code, reply.message, stage="mail"))
        if reply.code != OK:
            raise failure(reply.code, reply.message, "mail")

        try:
            reply = await smtp.execute_command(b"RCPT", b"TO:" + rcpt)
        except (aiosmtplib.SMTPException, OSError) as e:
            raise TemporaryFailure(None, _describe(e), stage="rcpt") from None
        if reply.code not in (OK, WILL_FORWARD):
            raise failure(reply.code, reply.message, "rcpt")

        try:
            await smtp.data(data)
        except aiosmtplib.SMTPResponseException as e:
            raise failure(e.code, e.message, "data") from None
        except (aiosmtplib.SMTPException, OSError) as e:
            # The end of DATA may or may not have reached the relay: a later retry
            # can deliver twice, which is SMTP's usual trade (RFC 5321 §4.1.1.4).
            raise TemporaryFailure(None, _describe(e), stage="data") from None


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
    """Writes each message into a Maildir (``tmp`` → fsync → rename into ``new``)."""

    def __init__(self, path: Path, hostname: str) -> None:
        self.path = path
        # Maildir names must not contain "/" or ":" (maildir(5)).
        self._host = (hostname or socket.gethostname()).replace("/", r"\057").replace(":", r"\072")
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        try:
            written = await asyncio.to_thread(self.deliver, envelope_from, recipient, data)
        except OSError as e:
            raise TemporaryFailure(None, f"cannot write to {self.path}: {e.strerror}") from None
        log.info("mail for %s written to %s", mask(recipient), written.name)

    async def close(self) -> None:
        return None

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
