"""A real SMTP server for tests: it records what maild sends and misbehaves on request.

An aiosmtpd ``Controller`` on 127.0.0.1 with an OS-chosen port (Mailman's
``testing/mta.py`` idea). Every accepted envelope is recorded with the
``MAIL FROM`` and ``RCPT TO`` paths exactly as they came over the wire — quotes
included, which aiosmtpd's own parsed ``envelope.rcpt_tos`` drops — so tests can
check (docs/mail-delivery.md) ``RCPT TO:<"taro..yamada"@docomo.ne.jp>``.

The sink says PIPELINING in its EHLO reply unless told not to (Postfix does,
so maild's relay pipelines MAIL, RCPT and DATA), and counts the transactions
that came pipelined. It can hold every RCPT until told to go on (a slow relay),
answer 4xx or 5xx (for everyone or for one recipient, at RCPT or
at the end of DATA), close its open connections, stop and start again on the
same port, speak STARTTLS or implicit TLS with a throw-away ``trustme`` CA, and
require AUTH. Tests that use it need no sleeps: :meth:`SmtpSink.wait_for` waits
on a condition that each accepted message signals.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import itertools
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from maild.common.addresses import InvalidAddress, normalize

TlsMode = Literal["none", "starttls", "implicit"]
Stage = Literal["rcpt", "data"]

# The path inside <…> of "FROM:<…>" / "TO:<…>", allowing a quoted local part.
_PATH = re.compile(r'^\s*(?:FROM|TO):\s*<((?:"(?:[^"\\]|\\.)*"|[^>"])*)>', re.IGNORECASE)

SINK_HOSTNAME = "sink.test"


@dataclass(frozen=True)
class ReceivedEnvelope:
    """One accepted message as the sink saw it on the wire."""

    mail_from: str  # the path between < and >, exactly as sent ("" for the null sender)
    rcpt_tos: tuple[str, ...]  # likewise, quotes kept
    data: bytes  # the message after dot-unstuffing, CRLF line endings as received
    connection: int  # 1, 2, … in the order connections were made
    tls: bool
    authenticated_as: str | None

    def message(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg


@dataclass(frozen=True)
class _Reply:
    code: int
    text: str
    stage: Stage

    def line(self) -> str:
        return f"{self.code} {self.text}"


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, remembering the raw MAIL/RCPT argument and its connection."""

    def __init__(self, sink: SmtpSink, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink
        self.number = next(sink._numbers)
        self.raw_path = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.sink._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._live.discard(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if b"MAIL FROM:" in data and b"\r\nDATA\r\n" in data:
            self.sink._saw_pipelined()
        super().data_received(data)

    async def smtp_HELO(self, hostname: str) -> None:
        self.sink._greeted(self.number)
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        self.sink._greeted(self.number)
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str) -> None:
        self.raw_path = _raw_path(arg)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.raw_path = _raw_path(arg)
        await super().smtp_RCPT(arg)


def _raw_path(arg: str | None) -> str:
    match = _PATH.match(arg or "")
    return match.group(1) if match else ""


def _key(address: str) -> str:
    try:
        return normalize(address)
    except InvalidAddress:
        return address


class _Handler:
    """aiosmtpd hooks (upper-case names are aiosmtpd's)."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:
            # aiosmtpd reads commands line by line, so it copes with pipelined ones;
            # it just does not say so (RFC 2920).
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.sink.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        once = self.sink._take_mail_reply()
        if once is not None:
            reply, disconnect = once
            if disconnect and server.transport is not None:
                # Runs after the reply is written: transport.close() flushes first.
                server.loop.call_soon(server.transport.close)
            return reply.line()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.raw_mail_from = server.raw_path  # type: ignore[attr-defined]
        envelope.raw_rcpt_tos = []  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        await self.sink._wait_while_held()
        reply = self.sink._reply_for(server.raw_path)
        if reply is not None and reply.stage == "rcpt":
            return reply.line()
        envelope.rcpt_tos.append(address)
        envelope.raw_rcpt_tos.append(server.raw_path)  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        raw_rcpts: list[str] = envelope.raw_rcpt_tos  # type: ignore[attr-defined]
        for rcpt in raw_rcpts:
            reply = self.sink._reply_for(rcpt)
            if reply is not None and reply.stage == "data":
                return reply.line()
        data = envelope.original_content
        assert isinstance(data, bytes)
        self.sink._record(
            ReceivedEnvelope(
                mail_from=envelope.raw_mail_from,  # type: ignore[attr-defined]
                rcpt_tos=tuple(raw_rcpts),
                data=data,
                connection=server.number,
                tls=server.transport is not None
                and server.transport.get_extra_info("sslcontext") is not None,
                authenticated_as=session.auth_data if session.authenticated else None,
            )
        )
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self.sink = sink

    def factory(self) -> _SinkSMTP:
        return _SinkSMTP(self.sink, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Port 0 means "let the OS choose"; read the choice back before aiosmtpd
        # connects to itself, and keep it so a restart binds the same port.
        if self.port == 0:
            assert isinstance(self.server, asyncio.Server)
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpSink:
    """A recording SMTP server on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        auth: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        pipelining: bool = True,
    ) -> None:
        self.host = host
        self.pipelining = pipelining
        self.pipelined = 0  # transactions whose MAIL, RCPT and DATA came in one read
        self.tls: TlsMode = tls
        self.auth = auth
        self.ca: trustme.CA | None = None
        self._server_context: ssl.SSLContext | None = None
        if tls != "none":
            self.ca = trustme.CA()
            cert = self.ca.issue_cert(host, "localhost")
            self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(self._server_context)
        self._port = 0
        self._controller: _Controller | None = None
        self._numbers = itertools.count(1)
        self._live: set[_SinkSMTP] = set()
        self._lock = threading.Condition()
        self._envelopes: list[ReceivedEnvelope] = []
        self._connections: set[int] = set()
        self._default: _Reply | None = None
        self._rules: dict[str, _Reply | None] = {}
        self._mail_replies: list[tuple[_Reply, bool]] = []
        self._holding = False
        self.held = 0  # RCPT commands waiting now (hold)

    # --- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the sink has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """A ``[relay] url`` for this sink."""
        scheme = {"none": "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Listen (again): the first start picks a free port, later ones reuse it."""
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {"server_hostname": SINK_HOSTNAME}
        if self.tls == "implicit":
            kwargs["ssl_context"] = self._server_context
        elif self.tls == "starttls":
            kwargs["tls_context"] = self._server_context
            kwargs["require_starttls"] = True
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            # aiosmtpd only knows about STARTTLS, not implicit TLS, so only then can it
            # insist on TLS before AUTH. handle_MAIL enforces AUTH itself, because
            # auth_required=True without auth_require_tls warns, and warnings fail tests.
            kwargs["auth_require_tls"] = self.tls == "starttls"
        controller = _Controller(self, hostname=self.host, port=self._port, **kwargs)
        controller.start()
        self._port = controller.port
        self._controller = controller

    def stop(self) -> None:
        """Close every connection and stop listening (a relay outage)."""
        controller = self._controller
        if controller is None:
            return

        async def close_everything() -> None:
            # Stop listening first, so no connection slips in between the two steps
            # and is left open when the loop stops (a ResourceWarning, hence a failure).
            server = controller.server
            assert server is not None  # started: start() sets it
            server.close()
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()
            for _ in range(3):  # let connection_lost run for each
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close_everything(), controller.loop).result(timeout=5)
        controller.stop()
        self._controller = None

    def drop_connections(self) -> None:
        """Close all open connections from the server side, as an idle timeout would."""
        controller = self._controller
        if controller is None:
            return

        async def close_all() -> None:
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()

        asyncio.run_coroutine_threadsafe(close_all(), controller.loop).result(timeout=5)

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- TLS and AUTH --------------------------------------------------------

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this sink's throw-away CA."""
        if self.ca is None:
            raise RuntimeError("this sink was started without TLS")
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.auth is not None
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if (login, password) == self.auth:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    # --- behaviour -----------------------------------------------------------

    def accept(self, recipient: str | None = None) -> None:
        """Accept mail again: for one recipient, or (without one) for everyone."""
        self._set(recipient, None)

    def fail_temporarily(
        self,
        recipient: str | None = None,
        *,
        code: int = 451,
        text: str = "4.3.0 Try again later",
        at: Stage = "rcpt",
    ) -> None:
        if not 400 <= code < 500:
            raise ValueError("a temporary failure needs a 4xx code")
        self._set(recipient, _Reply(code, text, at))

    def fail_permanently(
        self,
        recipient: str | None = None,
        *,
        code: int = 550,
        text: str = "5.1.1 Unknown user",
        at: Stage = "rcpt",
    ) -> None:
        if not 500 <= code < 600:
            raise ValueError("a permanent failure needs a 5xx code")
        self._set(recipient, _Reply(code, text, at))

    def fail_next_mail(
        self, code: int = 421, text: str = "4.3.2 Service shutting down", *, disconnect: bool = True
    ) -> None:
        """Answer the next MAIL FROM (on any connection) with ``code``, then hang up —
        a server that closed an idle connection just as the client reused it."""
        with self._lock:
            self._mail_replies.append((_Reply(code, text, "rcpt"), disconnect))

    def hold(self) -> None:
        """Keep every RCPT waiting until :meth:`release`: a relay that is slow to answer.
        A client that hangs up meanwhile has sent nothing."""
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False

    def wait_held(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` RCPT commands are being held."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.held >= count, timeout):
                raise AssertionError(f"{self.held} RCPT commands held, not {count}")

    async def _wait_while_held(self) -> None:
        with self._lock:
            if not self._holding:
                return
            self.held += 1
            self._lock.notify_all()
        try:
            while True:
                with self._lock:
                    if not self._holding:
                        return
                await asyncio.sleep(0.01)
        finally:
            with self._lock:
                self.held -= 1

    def _take_mail_reply(self) -> tuple[_Reply, bool] | None:
        with self._lock:
            return self._mail_replies.pop(0) if self._mail_replies else None

    def _set(self, recipient: str | None, reply: _Reply | None) -> None:
        with self._lock:
            if recipient is None:
                self._default = reply
                self._rules.clear()
            elif reply is None and self._default is None:
                self._rules.pop(_key(recipient), None)
            else:
                # None here means "accept this one although everyone else fails".
                self._rules[_key(recipient)] = reply

    def _reply_for(self, raw_recipient: str) -> _Reply | None:
        with self._lock:
            return self._rules.get(_key(raw_recipient), self._default)

    # --- what was received ---------------------------------------------------

    def _saw_pipelined(self) -> None:
        with self._lock:
            self.pipelined += 1

    def _greeted(self, number: int) -> None:
        with self._lock:
            self._connections.add(number)

    def _record(self, envelope: ReceivedEnvelope) -> None:
        with self._lock:
            self._envelopes.append(envelope)
            self._lock.notify_all()

    @property
    def envelopes(self) -> list[ReceivedEnvelope]:
        with self._lock:
            return list(self._envelopes)

    @property
    def connection_count(self) -> int:
        """How many connections said EHLO/HELO (aiosmtpd's own start-up probe does not)."""
        with self._lock:
            return len(self._connections)

    def clear(self) -> None:
        with self._lock:
            self._envelopes.clear()
            self._connections.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedEnvelope]:
        """Block until at least ``count`` messages arrived; fail the test otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._envelopes) >= count, timeout):
                raise AssertionError(
                    f"the SMTP sink expected {count} message(s) within {timeout} s, "
                    f"got {len(self._envelopes)}"
                )
            return list(self._envelopes)

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[ReceivedEnvelope]:
        """:meth:`wait_for` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, count, timeout)


@contextmanager
def smtp_sink(
    *, tls: TlsMode = "none", auth: tuple[str, str] | None = None, pipelining: bool = True
) -> Iterator[SmtpSink]:
    """A started :class:`SmtpSink`, stopped afterwards."""
    sink = SmtpSink(tls=tls, auth=auth, pipelining=pipelining)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
