"""Bounces: what a returned mail says, and what it does to the subscriber it names.

Every alert leaves with the envelope sender ``bounce+TOKEN@…`` (VERP); the token
is a signed subscriber id, so a bounce tells us *who* by the address it comes
back to, and the message itself is read only to learn *how bad*:
:func:`classify` is pure and answers permanent, temporary, or "not a failure
report". RFC 3464 delivery-status fields decide first: ``Action: failed`` is
permanent whatever the ``Status`` class (a ``4.4.x`` that expired in the queue
after days of an unreachable MX included), ``delayed`` is temporary;
messages without them go to flufl.bounce's detectors, then to a small reading
of the human-readable notice for the plain-text formats it does not know
(au's ``Mail System Error - Returned Mail``, old sendmail bounces about docomo).

Two kinds of permanent failure do not count against a resident:

- ``X.2.2`` mailbox full (and its plain-text wordings): RFC 3463 §3.3 calls it
  a persistent transient failure; the mailbox exists.
- ``X.7.X`` security or policy: DMARC, SPF, reputation, "relay access denied".
  Those are about *us*, and they would hit every subscriber at a provider at
  once; suspending a whole carrier's residents for our own DNS mistake would
  be the worst failure this module could have.

:class:`Bounces` keeps the score (docs/mail-delivery.md): docomo and au answer "550 Unknown
user" both for a missing mailbox and for a resident whose filter refuses us, so
a subscriber is suspended only after ``threshold`` permanent failures on
separate days, never on the first one, and never deleted.

- At most one point per calendar day in the service's time zone. UTC days
  would turn over at 09:00 JST, in the middle of the sending window, and count
  a morning's two alerts as two days.
- A bounce more than seven calendar days after the previous one starts the
  score again from nothing ("decaying after a week without bounces").
- Only active subscribers are scored; pending ones have never been sent an alert.

A suspended subscriber gets no alerts (the recipient query selects active
ones). :func:`maild.residents.subscribers.revive` makes them active again when
they show they are there: a blank mail from the address, or a visit to their
manage page.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.header
import email.policy
import email.utils
import logging
import quopri
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

import flufl.bounce
from sqlalchemy.orm import Session

from maild.common.addresses import InvalidAddress, mask, normalize
from maild.common.clock import Clock
from maild.common.config import Config
from maild.mail.errors import DeliveryError, PermanentFailure, mask_addresses
from maild.store.db import Database
from maild.store.models import ACTIVE, SUSPENDED, Subscriber

log = logging.getLogger("maild.residents.bounces")

# Outcomes of scoring one permanent failure (also metric labels: "bounce:<outcome>").
SCORED = "scored"
ALREADY_TODAY = "already-today"
SUSPENDED_NOW = "suspended"
UNKNOWN_SUBSCRIBER = "unknown-subscriber"
NOT_ACTIVE = "not-active"  # pending, or suspended already: nothing changes

DECAY_AFTER_DAYS = 7
REASON_MAX = 200

# RFC 3464 §2.3.3 Action values, and the non-standard "error" some MTAs (OpenSMTPD) send.
_FAILED_ACTIONS = ("failed", "error")
_DELAYED_ACTION = "delayed"
# RFC 3463 status codes: class.subject.detail.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])")
# An SMTP reply code at the start of a reply as MTAs quote it: "550 Unknown user",
# "<<< 550 5.1.1 …", "(reason: 550 …)", "550-5.7.26 …", "550 : User unknown". A number
# glued to digits, dots or dashes (phone numbers, dates, addresses) is not one.
_REPLY = re.compile(
    r"(?<![\w.+:/-])([45])\d\d(?:[ -]+[45]\.\d{1,3}\.\d{1,3}(?![\w.])|\s+(?=[A-Za-z<(:#]))"
)
_FULL = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient (?:storage|space)", re.I
)
_UNKNOWN = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox)|no mailbox here|"
    r"account (?:is )?disabled|does not exist",
    re.I,
)
_WARNING = re.compile(
    r"(?:has been|was) delayed|will be retried|still being retried|warning message only|"
    r"not yet been delivered",
    re.I,
)
# Where the notice ends and the returned message begins (sendmail, qmail, exim, au).
_ORIGINAL = re.compile(
    r"^\s*-{2,}.*\b(?:original message|unsent message|copy of the message|"
    r"below this line|returned message)\b|^-{20,}\s*$|^content-type:\s*message/rfc822",
    re.I,
)
_ANGLE_ADDRESS = re.compile(r"<([^<>\s]+@[^<>\s]+)>")
# Who writes bounces, and what they call them; gates our own reading of plain text,
# so that a resident's vacation reply ("550 Main Street office") is never a bounce.
_DAEMON_SENDERS = frozenset({"mailer-daemon", "mailer_daemon", "mail-daemon", "postmaster"})
_REPORT_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|delivery (?:status|failure|notification|failed)|"
    r"failure notice|mail system error|non-?delivery|could not be delivered",
    re.I,
)
_REPORT_TYPES = ("delivery-status", "global-delivery-status")


@dataclass(frozen=True)
class Classification:
    """What a bounce says.

    ``permanent`` is True (the address failed for good), False (temporary: a
    delay warning, a full mailbox) or None (not a failure report: a vacation
    reply, a "relayed" DSN, something unreadable). ``recipients`` are the
    failed addresses the report names — with VERP only a cross-check.
    ``status`` is the RFC 3463 code when one was given; ``reason`` a short
    ASCII line for the log, addresses masked.
    """

    permanent: bool | None
    recipients: frozenset[str] = frozenset()
    status: str | None = None
    reason: str = ""

    @property
    def counts(self) -> bool:
        """Whether this adds to the subscriber's score (permanent, and not about us)."""
        return self.permanent is True and not _about_us(self.status)


# --- classification (pure) ------------------------------------------------------------


def classify(data: bytes) -> Classification:
    """Classify a bounce message given as raw bytes; never raises on malformed mail."""
    # compat32: it never raises on the broken headers that bounce generators write.
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    blocks = list(_dsn_recipient_blocks(message))
    if blocks:
        # RFC 3464 is the authority when present; a report without a failed or delayed
        # recipient is a success notice ("relayed", "delivered", "expanded").
        return _from_dsn(blocks) or Classification(None, reason="delivery report without failures")
    notice = _notice_text(message)
    temporary, permanent = _flufl(message)
    evidence = _read_notice(notice)
    recipients = (temporary | permanent) or _addresses_in(notice)
    reason = _clean(evidence.line) if evidence.line else "detected by flufl.bounce"
    if evidence.full:
        return Classification(False, recipients, evidence.status, reason)
    if permanent:
        return Classification(True, recipients, evidence.status, reason)
    if temporary:
        return Classification(False, recipients, evidence.status, reason)
    if evidence.permanent is None or not _looks_like_report(message):
        return Classification(None, reason="not a failure report")
    return Classification(evidence.permanent, recipients, evidence.status, reason)


def relay_failure_counts(error: DeliveryError) -> bool:
    """Whether the relay's refusal of one recipient counts as that recipient bouncing.

    Only a 5xx at RCPT or after DATA says something about the recipient; MAIL and
    connection failures are about us or the relay. Mailbox full and policy
    refusals do not count, exactly as in a bounce message.
    """
    if not isinstance(error, PermanentFailure) or error.code is None:
        return False
    if not 500 <= error.code < 600 or error.stage not in ("rcpt", "data"):
        return False
    found = _STATUS.search(error.text)
    status = found.group(0) if found else None
    if _FULL.search(error.text) or (status is not None and _is_full(status)):
        return False
    return not _about_us(status)


@dataclass(frozen=True)
class _Evidence:
    permanent: bool | None
    status: str | None
    line: str
    full: bool = False  # mailbox full: temporary, whatever the reply code says


def _dsn_recipient_blocks(message: Message) -> Iterator[Message]:
    """The per-recipient field groups of every delivery-status part (RFC 3464 §2.3)."""
    for part in message.walk():
        if part.get_content_maintype() != "message" or part.get_content_subtype() not in (
            _REPORT_TYPES
        ):
            continue
        groups = _field_groups(part)
        # The first group is per-message (Reporting-MTA …); recipients follow.
        for group in groups[1:]:
            if group.get("Action") is not None or group.get("Final-Recipient") is not None:
                yield group


def _field_groups(part: Message) -> list[Message]:
    payload = part.get_payload()
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and part.get_content_subtype() == "delivery-status":
        if encoding not in ("base64", "quoted-printable"):
            return [p for p in payload if isinstance(p, Message)]
    # The email package splits only a plain message/delivery-status into groups; an
    # encoded one, or RFC 6533's message/global-delivery-status (parsed like a
    # message/rfc822), is put back together as text and split here.
    if isinstance(payload, list):
        raw = b"\n\n".join(p.as_bytes() for p in payload if isinstance(p, Message))
    else:
        # The parser kept undecodable bytes as surrogates: this gives back the bytes received.
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    if encoding == "base64":
        try:
            raw = base64.b64decode(raw)  # non-alphabet bytes (line breaks) are skipped
        except binascii.Error:
            return []
    elif encoding == "quoted-printable":
        raw = quopri.decodestring(raw)
    decoded = _decode(raw, part.get_content_charset() or "utf-8").replace("\r\n", "\n")
    return [HeaderParser().parsestr(g) for g in re.split(r"\n[ \t]*\n", decoded)]


def _from_dsn(blocks: list[Message]) -> Classification | None:
    permanent: list[tuple[str | None, str, str]] = []
    temporary: list[tuple[str | None, str, str]] = []
    for block in blocks:
        action = _field(block, "Action").lower()
        status_text = _field(block, "Status")
        found = _STATUS.search(status_text)
        status = found.group(0) if found else None
        diagnostic = _field(block, "Diagnostic-Code")
        recipient = _recipient(block)
        entry = (status, recipient, f"{status or status_text} {diagnostic}".strip())
        if action.startswith(_DELAYED_ACTION):
            temporary.append(entry)
        elif not action.startswith(_FAILED_ACTIONS):
            continue
        elif (status is not None and _is_full(status)) or _FULL.search(diagnostic):
            temporary.append(entry)
        else:
            # RFC 3464 §2.3.3: "failed" means the MTA gave up on this recipient, whatever
            # the status class. A 4.x.x with "failed" is a delivery that expired in the
            # queue (unreachable MX for days): counted, or the address stays forever.
            permanent.append(entry)
    chosen, verdict = (permanent, True) if permanent else (temporary, False)
    if not chosen:
        return None
    status, _, reason = chosen[0]
    return Classification(verdict, frozenset(r for _, r, _ in chosen if r), status, _clean(reason))


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    if value is None:
        return ""
    return " ".join(str(value).split())


def _recipient(block: Message) -> str:
    """``Final-Recipient: rfc822; a@b`` (or Original-Recipient) without its address type."""
    for name in ("Original-Recipient", "Final-Recipient"):
        value = _field(block, name)
        address = value.split(";", 1)[-1].strip().strip("<>").strip()
        if "@" in address:
            return _canonical(address)
    return ""


def _canonical(address: str) -> str:
    try:
        return normalize(address)
    except InvalidAddress:
        return address


def _flufl(message: Message) -> tuple[frozenset[str], frozenset[str]]:
    try:
        temporary, permanent = flufl.bounce.all_failures(message)
    except Exception:
        # Its heuristics run over whatever arrived; a detector tripping on a malformed
        # message (flufl.bounce logs which one) must not make the rest unreadable.
        return frozenset(), frozenset()
    return _ascii_set(temporary), _ascii_set(permanent)


def _ascii_set(found: frozenset[bytes]) -> frozenset[str]:
    return frozenset(_canonical(a.decode("ascii", "replace")) for a in found)


def _notice_text(message: Message) -> str:
    """The human-readable notice, without the returned original message."""
    texts = list(_plain_parts(message))
    lines: list[str] = []
    for line in "\n".join(texts).splitlines():
        if _ORIGINAL.search(line):
            break
        lines.append(line)
    return "\n".join(lines)


def _plain_parts(part: Message) -> Iterator[str]:
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message) and sub.get_content_maintype() != "message":
                yield from _plain_parts(sub)
        return
    if part.get_content_type() != "text/plain":
        return
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):
        yield _decode(raw, part.get_content_charset())


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "us-ascii", "replace")
    except LookupError:
        return raw.decode("latin-1")


def _read_notice(notice: str) -> _Evidence:
    """The strongest line of the notice: a full mailbox, then a 5xx reply or status,
    then a "user unknown" wording, then a 4xx reply or a delay warning."""
    found: dict[int, _Evidence] = {}
    for raw_line in notice.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        reply = _REPLY.search(line)
        code = reply.group(1) if reply is not None else None
        status_found = _STATUS.search(line)
        status = status_found.group(0) if status_found else None
        if _FULL.search(line) or (status is not None and _is_full(status)):
            found.setdefault(0, _Evidence(False, status, line, full=True))
        elif code == "5" or (status is not None and status.startswith("5")):
            found.setdefault(1, _Evidence(True, status, line))
        elif _UNKNOWN.search(line):
            found.setdefault(2, _Evidence(True, status, line))
        elif code == "4" or _WARNING.search(line):
            found.setdefault(3, _Evidence(False, status, line))
    return found[min(found)] if found else _Evidence(None, None, "")


def _looks_like_report(message: Message) -> bool:
    for name, address in email.utils.getaddresses([str(v) for v in message.get_all("From", [])]):
        if address.rpartition("@")[0].lower() in _DAEMON_SENDERS:
            return True
        if "mail delivery" in name.lower():
            return True
    return bool(_REPORT_SUBJECT.search(_subject(message)))


def _subject(message: Message) -> str:
    value = message.get("Subject")
    if value is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)


def _addresses_in(notice: str) -> frozenset[str]:
    return frozenset(_canonical(a) for a in _ANGLE_ADDRESS.findall(notice))


def _is_full(status: str) -> bool:
    return status.split(".", 1)[1] == "2.2"


def _about_us(status: str | None) -> bool:
    return status is not None and status.split(".")[1] == "7"


def _clean(text: str) -> str:
    """One printable ASCII line, addresses masked: safe for any log."""
    line = " ".join(mask_addresses(text).split())
    line = "".join(c if " " <= c <= "~" else "?" for c in line)
    return line[:REASON_MAX]


# --- the score ----------------------------------------------------------------------------


class Bounces:
    """Scores permanent failures and suspends subscribers past the threshold."""

    def __init__(self, db: Database, clock: Clock, threshold: int, tz: dt.tzinfo) -> None:
        self.db = db
        self.clock = clock
        self.threshold = threshold
        self.tz = tz

    @classmethod
    def from_config(cls, config: Config, db: Database, clock: Clock) -> Bounces:
        return cls(db, clock, config.bounces.threshold, config.service.tz)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): the threshold for the next failure scored."""
        self.threshold = config.bounces.threshold

    def record_permanent(
        self, subscriber_id: int, reason: str, recipients: Collection[str] = ()
    ) -> str:
        """Score one permanent failure in its own transaction; returns the outcome."""
        with self.db.transaction() as session:
            return self.score(session, subscriber_id, reason, recipients)

    def score(
        self,
        session: Session,
        subscriber_id: int,
        reason: str,
        recipients: Collection[str] = (),
    ) -> str:
        """Score one permanent failure inside the caller's transaction (the fan-out's).

        The row is locked (``FOR UPDATE``, where the database has it). On SQLite two
        bounces for one subscriber at the same moment can both read the old score;
        both then write the same "one more point today", so none is lost or doubled.
        """
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            # Erased (cancelled) since the alert left: nothing to keep score of.
            log.info("bounce for subscriber %d, who no longer exists", subscriber_id)
            return UNKNOWN_SUBSCRIBER
        self._cross_check(subscriber, recipients)
        if subscriber.status != ACTIVE:
            log.info(
                "bounce for subscriber %d (%s) not scored: %s",
                subscriber_id,
                subscriber.status,
                _clean(reason),
            )
            return NOT_ACTIVE
        now = self.clock.now()
        today = now.astimezone(self.tz).date()
        last = subscriber.last_bounce_at
        last_day = None if last is None else last.astimezone(self.tz).date()
        if last_day == today:
            log.info("bounce for subscriber %d: already scored today", subscriber_id)
            return ALREADY_TODAY
        score = subscriber.bounce_score or 0
        if last_day is None or (today - last_day).days > DECAY_AFTER_DAYS:
            score = 0
        subscriber.bounce_score = score + 1
        subscriber.last_bounce_at = now
        outcome = SCORED
        if subscriber.bounce_score >= self.threshold:
            subscriber.status = SUSPENDED
            subscriber.updated_at = now
            outcome = SUSPENDED_NOW
        log.info(
            "bounce for subscriber %d: score %d of %d%s: %s",
            subscriber_id,
            subscriber.bounce_score,
            self.threshold,
            ", suspended" if outcome == SUSPENDED_NOW else "",
            _clean(reason),
        )
        return outcome

    @staticmethod
    def _cross_check(subscriber: Subscriber, recipients: Collection[str]) -> None:
        # The token is the authority; a different address in the report is logged, not
        # trusted (a forward, au's ezweb.ne.jp → au.com aliases, a garbled report).
        if not recipients:
            return
        ours = subscriber.address.lower()
        if not any(_canonical(r).lower() == ours for r in recipients):
            log.info(
                "bounce for subscriber %d (%s) names %s instead",
                subscriber.id,
                mask(subscriber.address),
                ", ".join(sorted(mask(r) for r in recipients)[:3]),
            )
