"""The rules of an inbound SMTP session: residents' blank mails, and bounces of our alerts.

:class:`InboundHandler` is an aiosmtpd handler (aiosmtpd calls its ``handle_*``
hooks); :mod:`maild.inbound.listener` runs the sessions. It takes mail for two
kinds of address only (no open relay, docs/mail-delivery.md):

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
treatment.

The ``[limits]`` rules kept here: answers spend from
:class:`maild.residents.limits.AnswerBudget` (shared with the web's ``/signup``), and
past it a blank mail gets 450 so that its MTA retries later; a recipient past
``recipients_per_message`` gets 452. (The per-session rules are the listener's.)

Every mail we decide not to answer or cannot read is still accepted with 250,
so that nobody learns anything from our replies, no robot retries and no
bounce bounces; a local failure (the database) is 451, so that the sending MTA
retries later and nothing a resident sent is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from maild.common.addresses import InvalidAddress, mask, mask_token, normalize
from maild.common.clock import Clock
from maild.common.config import Config
from maild.common.throttle import LogThrottle
from maild.inbound import autoreply
from maild.residents.bounces import Bounces, Classification, classify
from maild.residents.limits import AnswerBudget, OverBudget
from maild.residents.links import LinkError, VerpTokens
from maild.residents.registration import SENT_MANAGE, SENT_REGISTER, Registrations, Request
from maild.store.groupcommit import GroupCommit

log = logging.getLogger("maild.smtp")
# A flood past a limit is one line a minute; /metrics counts every refusal.
refusals_log = LogThrottle(log)

# SMTP replies (RFC 5321 §4.2, enhanced codes RFC 3463).
ACCEPTED = "250 2.0.0 OK"
RECIPIENT_OK = "250 2.1.5 OK"
NO_SUCH_USER = "550 5.1.1 No such user here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary local problem, please try again"
TLS_FAILED = "454 4.7.0 TLS not available due to temporary reason"  # RFC 3207 §4
RATE_LIMITED = "450 4.7.1 Too many registration requests, please try again later"
# RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client sends the rest later.
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

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
                        peer_ip(session),
                    )
                    self.report(f"{BOUNCE}:{BOUNCE_FORGED}")
                else:
                    log.info("refused recipient %s from %s", mask(address), peer_ip(session))
                return NO_SUCH_USER
            # A repeated RCPT for the same address is harmless; keep one copy.
            if address in envelope.rcpt_tos:
                return RECIPIENT_OK
            if len(envelope.rcpt_tos) >= self.config.limits.recipients_per_message:
                log.info("too many recipients in a message from %s", peer_ip(session))
                self.report(f"{LIMITED}:{LIMIT_RECIPIENTS}")
                return TOO_MANY_RECIPIENTS
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            return RECIPIENT_OK
        except Exception:
            log.exception("RCPT failed for a session from %s", peer_ip(session))
            self.report(ERROR)
            return TEMPORARY_FAILURE

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = peer_ip(session)
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
                self.report(outcome)
                if outcome.startswith(DEFERRED):
                    return RATE_LIMITED
        except Exception:
            log.exception("mail from %s (peer %s) could not be handled", _who(sender), peer)
            self.report(ERROR)
            return TEMPORARY_FAILURE
        return ACCEPTED

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's choice (it distrusts our certificate, or shares no cipher), not
            # a fault of ours: no traceback. The connection is beyond use either way.
            log.info("STARTTLS handshake failed: %r", error.__cause__ or error)
            self.report(TLS_HANDSHAKE_FAILED)
            return TLS_FAILED
        # aiosmtpd calls this for a failure outside the hooks; the session goes on.
        log.error("SMTP session error", exc_info=error)
        self.report(ERROR)
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
            refusals_log.warning(
                f"smtp:{e.reason}",
                "mail from %s (peer %s) deferred: %s limit",
                mask(address),
                peer,
                e.reason,
            )
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
            self.report(f"{BOUNCE}:{BOUNCE_UNATTRIBUTED}")
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
            self.report(f"{BOUNCE}:{outcome}")

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

    def report(self, outcome: str) -> None:
        """Pass ``outcome`` to ``on_outcome`` (the metrics); a failing hook is only logged."""
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(outcome)
        except Exception:
            log.exception("on_outcome hook failed for %s", outcome)


def peer_ip(session: Session | None) -> str | None:
    """The client's IP address, None for a socket without one."""
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
