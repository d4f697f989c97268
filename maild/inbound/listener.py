"""The inbound SMTP listener: residents' blank mails, and bounces of our alerts.

:class:`InboundHandler` holds the rules of one session (aiosmtpd calls its
``handle_*`` hooks). It takes mail for two kinds of address only (no open
relay, SPEC §9):

- the registration address: the message body is never read (phones append
  signatures), :func:`maild.inbound.autoreply.decide` says whether the mail may be
  answered, and :meth:`Registrations.answer_blank_mail` writes the answer to
  the outbox;
- the bounce address, as ``bounce+TOKEN@`` (VERP) with a token that verifies:
  :func:`maild.residents.bounces.classify` reads the report and a permanent failure is
  scored against the subscriber the token names. A forged or garbled token is
  refused at RCPT like any unknown user. The bare bounce address takes the
  bounces of registration mails, which name nobody we keep score of: accepted
  and logged. Without ``verp``/``bounces`` (the daemon not wired for them) both
  are refused, as before.

A message may be addressed to both kinds at once; each recipient gets its own
treatment. :class:`InboundServer` runs aiosmtpd's protocol on the daemon's own
event loop and drains sessions on shutdown (STYLE §3, §4).

The ``[limits]`` rules: answers spend from :class:`maild.residents.limits.AnswerBudget`
(shared with the web's ``/signup``), and past it a blank mail gets 450 so that
its MTA retries later; one more session than ``sessions_per_ip`` is greeted with
421 and closed, a client silent for ``command_timeout`` gets 421, a recipient
past ``recipients_per_message`` gets 452, a message over ``max_message_size``
gets aiosmtpd's 552. Trusted networks are exempt from the per-IP rules.

Every mail we decide not to answer or cannot read is still accepted with 250,
so that nobody learns anything from our replies, no robot retries and no
bounce bounces; a local failure (the database) is 451, so that the sending MTA
retries later and nothing a resident sent is lost.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, _AuthMechAttr

from maild.common.addresses import InvalidAddress, mask, mask_token, normalize
from maild.common.clock import Clock
from maild.common.config import Config, ListenAddress, SmtpConfig
from maild.inbound import autoreply
from maild.residents.bounces import Bounces, Classification, classify
from maild.residents.limits import AnswerBudget, OverBudget, is_trusted, peer_key
from maild.residents.links import LinkError, VerpTokens
from maild.residents.registration import SENT_MANAGE, SENT_REGISTER, Registrations, Request
from maild.store.groupcommit import GroupCommit

log = logging.getLogger("maild.smtp")

IDENT = "maild"

# SMTP replies (RFC 5321 §4.2, enhanced codes RFC 3463).
ACCEPTED = "250 2.0.0 OK"
RECIPIENT_OK = "250 2.1.5 OK"
NO_SUCH_USER = "550 5.1.1 No such user here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary local problem, please try again"
TLS_FAILED = "454 4.7.0 TLS not available due to temporary reason"  # RFC 3207 §4
RATE_LIMITED = "450 4.7.1 Too many registration requests, please try again later"
SHUTTING_DOWN = "421 4.3.2 {hostname} Service shutting down, please try again later"
# RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client sends the rest later.
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TOO_MANY_SESSIONS = "421 4.7.0 {hostname} Too many connections from your address, try again later"
# RFC 5321 §4.5.3.2: the server may close an idle session, and says so with 421 first.
TIMED_OUT = "421 4.4.2 {hostname} Timeout exceeded, closing connection"

# Outcomes passed to ``on_outcome`` besides the Registrations ones (register/manage/throttled).
IGNORED = "ignored"  # "ignored:<reason>", the reason from autoreply or INVALID_SENDER
INVALID_SENDER = "invalid-sender"
DEFERRED = "deferred"  # "deferred:<reason>": answered 450 by the rate limits
ERROR = "error"
TLS_HANDSHAKE_FAILED = "tls-failed"  # the client gave up on STARTTLS (our certificate, its ciphers)
# "limited:<what>": a session refused or ended by an [limits] rule.
LIMITED = "limited"
LIMIT_SESSIONS = "sessions"
LIMIT_RECIPIENTS = "recipients"
LIMIT_TIMEOUT = "timeout"
# "bounce:<what>": <what> is a maild.residents.bounces outcome (scored, already-today, suspended,
# unknown-subscriber, not-active) or one of these.
BOUNCE = "bounce"
BOUNCE_TEMPORARY = "temporary"  # a delay warning, a full mailbox: ignored
BOUNCE_NOT_COUNTED = "not-counted"  # permanent, but about us (policy) rather than the address
BOUNCE_UNREADABLE = "not-a-failure"  # a vacation reply, a success DSN, something unreadable
BOUNCE_UNATTRIBUTED = "unattributed"  # to the bare bounce address: a registration mail's
BOUNCE_FORGED = "forged"  # reported at RCPT: a bounce+ address whose token does not verify

DRAIN_POLL_SECONDS = 0.5
LOST_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class _Recipient:
    """One of our addresses: the registration address, or the bounce address.

    ``subscriber_id`` is the VERP token's subscriber for ``bounce+TOKEN@``, None
    for the bare bounce address.
    """

    bounce: bool
    subscriber_id: int | None = None


_REGISTRATION = _Recipient(bounce=False)


class InboundHandler:
    """aiosmtpd handler for our addresses; one instance serves all sessions.

    ``verp`` and ``bounces`` go together: without them bounces are not taken.
    ``budget`` is the answer budget shared with the web's ``/signup``; without
    one the handler keeps its own.
    """

    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        clock: Clock | None = None,
        on_outcome: Callable[[str], None] | None = None,
        verp: VerpTokens | None = None,
        bounces: Bounces | None = None,
        budget: AnswerBudget | None = None,
        siblings: Callable[[], int] | None = None,
    ) -> None:
        if (verp is None) != (bounces is None):
            raise ValueError("InboundHandler needs both verp and bounces, or neither")
        self.registrations = registrations
        self.on_outcome = on_outcome
        self.verp = verp
        self.bounces = bounces
        self.budget = budget or AnswerBudget(config.limits, clock or registrations.clock)
        # ``siblings``: sessions in mid-transaction (InboundServer.transactions), for
        # which the answer writer waits a moment (group commit).
        self.answers: GroupCommit[Request, str] = GroupCommit(
            lambda requests: self.registrations.answer_many(requests), siblings=siblings
        )
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config (SIGHUP); sessions under way keep going."""
        self.config = config
        self.budget.reconfigure(config.limits)  # counts so far stay
        self._registration_address = normalize(config.smtp.registration_address).lower()
        bounce_local, _, bounce_domain = normalize(config.smtp.bounce_address).rpartition("@")
        self._bounce_local = bounce_local.lower()
        self._bounce_domain = bounce_domain
        # Mail from these is our own answer or bounce coming back: never answer it (loops).
        self._own_addresses = frozenset(
            a.lower()
            for a in (
                config.smtp.registration_address,
                config.smtp.bounce_address,
                config.mail.from_address,
            )
        )

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd announces AUTH after STARTTLS even with no mechanism left; we take no AUTH.
        return [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            recipient, bad_token = self._parse_recipient(address)
            if recipient is None:
                if bad_token is not None:
                    # Same answer as an unknown user: a guesser learns nothing from it.
                    log.info(
                        "refused bounce address with a bad token %s from %s",
                        mask_token(bad_token),
                        _peer_ip(session),
                    )
                    self._report(f"{BOUNCE}:{BOUNCE_FORGED}")
                else:
                    log.info("refused recipient %s from %s", mask(address), _peer_ip(session))
                return NO_SUCH_USER
            # A repeated RCPT for the same address is harmless; keep one copy.
            if address in envelope.rcpt_tos:
                return RECIPIENT_OK
            if len(envelope.rcpt_tos) >= self.config.limits.recipients_per_message:
                log.info("too many recipients in a message from %s", _peer_ip(session))
                self._report(f"{LIMITED}:{LIMIT_RECIPIENTS}")
                return TOO_MANY_RECIPIENTS
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return RECIPIENT_OK
        except Exception:
            log.exception("RCPT failed for a session from %s", _peer_ip(session))
            self._report(ERROR)
            return TEMPORARY_FAILURE

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = _peer_ip(session)
        sender = envelope.mail_from or ""
        try:
            recipients = [self._recipient(a) for a in envelope.rcpt_tos]
            bounced = [r for r in recipients if r is not None and r.bounce]
            # Bounces first: if the registration answer then fails (451) or is deferred (450),
            # the repeat delivery finds the bounce already scored today.
            if bounced:
                await self._take_bounce(peer, envelope, bounced)
            if _REGISTRATION in recipients:
                outcome = await self._answer(peer, sender, envelope)
                self._report(outcome)
                if outcome.startswith(DEFERRED):
                    return RATE_LIMITED
        except Exception:
            log.exception("mail from %s (peer %s) could not be handled", _who(sender), peer)
            self._report(ERROR)
            return TEMPORARY_FAILURE
        return ACCEPTED

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's choice (it distrusts our certificate, or shares no cipher), not
            # a fault of ours: no traceback. The connection is beyond use either way.
            log.info("STARTTLS handshake failed: %r", error.__cause__ or error)
            self._report(TLS_HANDSHAKE_FAILED)
            return TLS_FAILED
        # aiosmtpd calls this for a failure outside the hooks; the session goes on.
        log.error("SMTP session error", exc_info=error)
        self._report(ERROR)
        return TEMPORARY_FAILURE

    async def _answer(self, peer: str | None, sender: str, envelope: Envelope) -> str:
        message = autoreply.parse_headers(envelope.original_content or b"")
        decision = autoreply.decide(sender, message, self._own_addresses)
        if not decision.answer:
            log.info("mail from %s (peer %s) not answered: %s", _who(sender), peer, decision.reason)
            return f"{IGNORED}:{decision.reason}"
        # The envelope sender, not From: that is where a reply goes (RFC 5321 §4.4).
        try:
            address = normalize(sender)
        except InvalidAddress:
            log.info("mail from %s (peer %s) not answered: invalid sender", _who(sender), peer)
            return f"{IGNORED}:{INVALID_SENDER}"
        try:
            # Charged before the answer is written, so that sessions answering at the same
            # time cannot together overrun a limit; refunded below when none goes out.
            charge = self.budget.take(peer)
        except OverBudget as e:
            log.warning("mail from %s (peer %s) deferred: %s limit", mask(address), peer, e.reason)
            return f"{DEFERRED}:{e.reason}"
        sent = False
        try:
            # Committed (with the answers of the other sessions waiting now) before the 250.
            outcome = await self.answers.submit(Request(address, autoreply.message_id(message)))
            sent = outcome in (SENT_REGISTER, SENT_MANAGE)
        except InvalidAddress:
            log.info("mail from %s (peer %s) not answered: invalid sender", mask(address), peer)
            return f"{IGNORED}:{INVALID_SENDER}"
        finally:
            if not sent:  # throttled, invalid, or the database failed: no answer went out
                self.budget.refund(charge)
        log.info("mail from %s (peer %s): %s", mask(address), peer, outcome)
        return outcome

    async def _take_bounce(
        self, peer: str | None, envelope: Envelope, recipients: list[_Recipient]
    ) -> None:
        """Score a bounce against each subscriber it was addressed to (by VERP token)."""
        assert self.bounces is not None
        subscriber_ids = sorted(
            {r.subscriber_id for r in recipients if r.subscriber_id is not None}
        )
        if any(r.subscriber_id is None for r in recipients):
            log.info("bounce to the bare bounce address (peer %s): not attributed", peer)
            self._report(f"{BOUNCE}:{BOUNCE_UNATTRIBUTED}")
        if not subscriber_ids:
            return
        classification = await asyncio.to_thread(_classify, envelope.original_content or b"")
        for subscriber_id in subscriber_ids:
            if classification.counts:
                outcome = await asyncio.to_thread(
                    self.bounces.record_permanent,
                    subscriber_id,
                    classification.reason,
                    classification.recipients,
                )
            elif classification.permanent is None:
                outcome = BOUNCE_UNREADABLE
            elif classification.permanent:
                outcome = BOUNCE_NOT_COUNTED
            else:
                outcome = BOUNCE_TEMPORARY
            log.info(
                "bounce for subscriber %d (peer %s): %s (%s)",
                subscriber_id,
                peer,
                outcome,
                classification.reason,
            )
            self._report(f"{BOUNCE}:{outcome}")

    def _recipient(self, address: str) -> _Recipient | None:
        return self._parse_recipient(address)[0]

    def _parse_recipient(self, address: str) -> tuple[_Recipient | None, str | None]:
        """Which of our addresses ``address`` is (None: refuse it), and a token that did
        not verify, if that is why."""
        try:
            local, _, domain = normalize(address).rpartition("@")
        except InvalidAddress:
            return None, None
        # Case-insensitive as a whole: residents copy the address off posters by hand,
        # and it is our own mailbox, so folding the local part opens nothing.
        if f"{local}@{domain}".lower() == self._registration_address:
            return _REGISTRATION, None
        if self.verp is None or domain != self._bounce_domain:
            return None, None
        if local.lower() == self._bounce_local:
            return _Recipient(bounce=True), None
        base, plus, token = local.partition("+")
        if not plus or base.lower() != self._bounce_local:
            return None, None
        try:
            # The token keeps its case: it is a signature, and the local part is ours to
            # read as we like (RFC 5321 §2.4).
            return _Recipient(bounce=True, subscriber_id=self.verp.check(token)), None
        except LinkError:
            return None, token

    def _report(self, outcome: str) -> None:
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(outcome)
        except Exception:
            log.exception("on_outcome hook failed for %s", outcome)


def _peer_ip(session: Session | None) -> str | None:
    peer: Any = session.peer if session is not None else None
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


def _who(sender: str) -> str:
    return "<>" if sender in ("", "<>") else mask(sender)


def _classify(data: bytes) -> Classification:
    try:
        return classify(data)
    except Exception:
        # Reading it again would fail the same way: take it (250), never make a bounce
        # bounce, and keep the trace for whoever improves the classifier.
        log.exception("a bounce could not be classified")
        return Classification(None, reason="unreadable")


def _size_limits() -> collections.defaultdict[str, int]:
    return collections.defaultdict(lambda: SMTP.command_size_limit)


class _Session(SMTP):
    """aiosmtpd's protocol, registered with its server so that shutdown can drain it and
    so that it can count sessions per peer."""

    def __init__(self, owner: InboundServer, handler: InboundHandler, **kwargs: Any) -> None:
        self._owner = owner
        self._handler = handler
        self._connected = False
        self._refused = False  # over [limits] sessions_per_ip: greet with 421 and close
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps these on the class, so one session's EHLO raised (and the next
        # session's start reset) every other session's MAIL line limit.
        self.command_size_limits = _size_limits()

    def replica(self) -> _Session:
        """A new session set up as this one was, without aiosmtpd's look at the handler.

        ``SMTP.__init__`` goes over the protocol class and the handler with
        ``inspect.getmembers`` and ``inspect.signature`` for every connection, a fifth of
        the listener's time for a phone's one-mail session. What it finds depends only on
        the class, the handler and the settings; so a server builds one session through
        aiosmtpd and copies it for each connection, making anew what belongs to one: the
        stream reader and its future (``StreamReaderProtocol.__init__``), the methods bound
        to the session, and every container (copied, so that no session changes
        another's). tests/test_smtp_inbound.py compares a replica with a session aiosmtpd
        built, attribute by attribute.
        """
        session = object.__new__(type(self))
        for name, value in vars(self).items():
            if isinstance(value, dict | list | set):
                value = copy.copy(value)
            session.__dict__[name] = value
        asyncio.StreamReaderProtocol.__init__(
            session,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=session._cb_client_connected,
            loop=self.loop,
        )
        session._smtp_methods = {
            name: getattr(session, f"smtp_{name}") for name in self._smtp_methods
        }
        session._auth_methods = {
            name: _AuthMechAttr(getattr(session, m.method.__name__), True) if m.is_builtin else m
            for name, m in self._auth_methods.items()
        }
        return session

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's own, less the typing.Protocol class it defines on every call for its
        # type checker: that class took a fifth of each MAIL and RCPT command. The parse is
        # the same (tests/test_smtp_inbound.py compares the two).
        if not arg:
            return "", ""
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        try:
            address, rest = parse(arg)
        except HeaderParseError:
            return None, None
        addr: str = address.addr_spec
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        again = self._connected  # aiosmtpd calls this a second time after STARTTLS
        self._connected = True
        super().connection_made(transport)
        if not again:
            self._refused = not self._owner._admit(self, _peer_ip(self.session))

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._forget(self)
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        """Between MAIL FROM and the end of DATA (or RSET): the part a shutdown waits for."""
        return self.envelope is not None and self.envelope.mail_from is not None

    # aiosmtpd's session loop and idle timer, extended for the [limits] rules. Both are
    # private to aiosmtpd (1.4): tests/test_smtp_inbound.py pins what they must do.

    async def _handle_client(self) -> None:
        if self._refused:
            # RFC 5321 §3.1: a server may greet with 421 instead of 220, then close.
            self.say_goodbye(TOO_MANY_SESSIONS)
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle session without a word; RFC 5321 §4.5.3.2 lets a server
        # give up on a silent client, and a 421 tells the client's MTA why.
        log.info("SMTP session from %s timed out", _peer_ip(self.session))
        self._handler._report(f"{LIMITED}:{LIMIT_TIMEOUT}")
        self.say_goodbye(TIMED_OUT)

    # aiosmtpd's command methods, extended for shutdown.

    async def smtp_MAIL(self, arg: str | None) -> None:
        # Once shutdown has begun no new transaction starts (RFC 5321 §3.8: 421 and close).
        if self._owner.closing:
            self.shut_down()
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        try:
            await super().smtp_DATA(arg)
        finally:
            self._owner._wake()  # the transaction is over (or still is, after a 503)

    async def smtp_RSET(self, arg: str) -> None:
        try:
            await super().smtp_RSET(arg)
        finally:
            self._owner._wake()

    def shut_down(self) -> None:
        self.say_goodbye(SHUTTING_DOWN)

    def say_goodbye(self, reply: str) -> None:
        """Send a 421 ``reply`` (``{hostname}`` filled in) and close; the client may be gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(reply.format(hostname=self.hostname).encode("ascii") + b"\r\n")
        transport.close()


class InboundServer:
    """The listener: aiosmtpd sessions on the running loop, drained on :meth:`close`.

    ``session_timeout`` overrides ``[limits] command_timeout``, which is otherwise
    read for each new session (so a reload applies to sessions that start after it).
    """

    def __init__(
        self, handler: InboundHandler, smtp: SmtpConfig, session_timeout: float | None = None
    ) -> None:
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

        def build(timeout: float) -> _Session:
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

        model: _Session | None = None  # never connected: each session is its replica

        def factory() -> _Session:
            nonlocal model
            timeout = self.session_timeout
            if timeout is None:
                timeout = self.handler.config.limits.command_timeout
            if model is None or model._timeout_duration != timeout:
                model = build(timeout)
            return model.replica()

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock)
        else:
            self._server = await loop.create_server(factory, host=listen.host, port=listen.port)
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
            log.warning("closing %d SMTP session(s) in mid-transaction", len(aborted))
        for session in list(self._sessions):
            session.shut_down()
        if self._sessions:
            try:
                await asyncio.wait_for(self._all_gone(), LOST_WAIT_SECONDS)
            except TimeoutError:
                log.warning("%d SMTP session(s) did not close in time", len(self._sessions))
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

    def _admit(self, session: _Session, ip: str | None) -> bool:
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
            self.handler._report(f"{LIMITED}:{LIMIT_SESSIONS}")
            return False
        self._per_ip[key] += 1
        self._counted[session] = key
        return True

    def _forget(self, session: _Session) -> None:
        self._sessions.discard(session)
        ip = self._counted.pop(session, None)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
        self._wake()

    def _wake(self) -> None:
        self._changed.set()


def _tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    if smtp.tls_cert_file is None or smtp.tls_key_file is None:
        return None
    # Server side, no client certificates: any MTA may deliver to us (RFC 3207 §4.1).
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(smtp.tls_cert_file, smtp.tls_key_file)
    return context
