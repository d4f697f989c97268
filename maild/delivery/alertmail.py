"""Alert mails: composed once per alert, personalised per recipient as bytes.

Building an ``EmailMessage`` per recipient costs about a millisecond; an alert
for a million subscribers cannot afford that. :class:`AlertTemplate` encodes
the headers everyone shares once, and :meth:`AlertTemplate.personalise` adds
the few that differ (To, Message-ID, List-Unsubscribe) and the body with the
recipient's own change/cancel link (SPEC §7). Pure: no I/O.

An alert has one template per charset: UTF-8 for most recipients, ISO-2022-JP
for ``mail.legacy_charset_domains`` (SPEC §10); the caller picks per recipient.
An ISO-2022-JP body is encoded line by line, each line ending in ASCII, so the
part before the change/cancel URL is encoded once and the ASCII URL line is
appended per recipient.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from maild.common.config import Config
from maild.mail.compose import (
    AUTO_GENERATED,
    BASE64_CHUNK,
    CRLF,
    ISO_2022_JP,
    UTF8,
    Charset,
    base64_lines,
    canonical_utf8,
    encode_body,
    header_fields,
    render,
)
from maild.residents.notices import RULE

# Headers that differ per recipient; the template leaves them out and adds them per message.
_PERSONAL = frozenset({"to", "message-id", "list-unsubscribe"})
TEST_MARK = "【テスト】"


@dataclass(frozen=True)
class AlertContent:
    """What an alert says, independent of who receives it."""

    alert_id: int
    subject: str  # as the operator wrote it
    area_label: str  # 「青葉区・仙台北警察署」
    body: str
    sender: str | None  # the station or division shown above the footer


@dataclass(frozen=True)
class Personal:
    """What differs per recipient."""

    address: str
    subscriber_id: int
    manage_url: str
    unsubscribe_url: str
    envelope_from: str  # VERP: bounce+TOKEN@domain


def full_subject(prefix: str, subject: str, area_label: str, test: bool = False) -> str:
    """「【みやぎSecurityメール】女子中学生に対する声かけ事案【宮城野区】」 (SPEC §5)."""
    return (TEST_MARK if test else "") + prefix + subject_with_area(subject, area_label)


def body_text(content: AlertContent, manage_url: str) -> str:
    """The body a recipient reads: the alert, the sender line, the change/cancel footer."""
    return _shared_text(content) + manage_url + "\n"


def _shared_text(content: AlertContent) -> str:
    """Everything of :func:`body_text` before the recipient's URL, ending in a line break."""
    parts = [content.body.rstrip("\n"), ""]
    if content.sender:
        parts += [f"（{content.sender}）", ""]
    parts += [RULE, "利用者情報の変更・解除はこちら", ""]
    return "\n".join(parts)


class AlertTemplate:
    """The shared part of every mail of one alert, encoded once.

    ``charset="iso-2022-jp"`` raises :class:`~maild.mail.legacy.LegacyCharsetError`
    when the subject or body hold a character phones cannot show.
    """

    def __init__(
        self,
        content: AlertContent,
        *,
        from_address: str,
        from_name: str,
        subject_prefix: str,
        list_id: str,
        hostname: str,
        date: dt.datetime,
        test: bool = False,
        charset: Charset = UTF8,
    ) -> None:
        self.content = content
        self.hostname = hostname
        self.charset = charset
        fields = header_fields(
            from_address=from_address,
            from_name=from_name,
            to=from_address,  # replaced per recipient
            subject=full_subject(subject_prefix, content.subject, content.area_label, test),
            date=date,
            message_id=f"<alert-{content.alert_id}@{hostname}>",  # replaced per recipient
            auto_submitted=AUTO_GENERATED,
            extra_headers=[
                ("List-Id", list_id),
                ("List-Unsubscribe", "<https://placeholder.invalid/>"),  # replaced per recipient
                # RFC 8058 §3.1: one-click unsubscribe by POST to the List-Unsubscribe URL.
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("Precedence", "bulk"),
            ],
            charset=charset,
        )
        shared = [(name, value) for name, value in fields if name.lower() not in _PERSONAL]
        self._head = render(shared, b"")[:-2]  # without the blank line that ends the header
        # The body before the recipient's URL is encoded once. ISO-2022-JP lines are
        # encoded independently; base64 runs across line ends, so for UTF-8 the
        # shared bytes are cut where a whole base64 line ends and only the rest is
        # encoded per message, together with the URL.
        text = _shared_text(content)
        if charset == ISO_2022_JP:
            self._body_head = encode_body(text, charset)
            self._body_rest = b""
        else:
            canonical = canonical_utf8(text)
            cut = len(canonical) - len(canonical) % BASE64_CHUNK
            self._body_head = base64_lines(canonical[:cut])
            self._body_rest = canonical[cut:]

    def personalise(self, personal: Personal) -> bytes:
        """The bytes of one recipient's message (SPEC §7): ASCII substitutions and the body."""
        personal_head = (
            f"To: {_header_address(personal.address)}{CRLF}"
            f"Message-ID: <alert-{self.content.alert_id}.{personal.subscriber_id}@{self.hostname}>"
            f"{CRLF}List-Unsubscribe: <{personal.unsubscribe_url}>{CRLF}{CRLF}"
        ).encode("ascii")
        if self.charset == ISO_2022_JP:
            tail = encode_body(personal.manage_url, ISO_2022_JP)
        else:
            tail = base64_lines(self._body_rest + canonical_utf8(personal.manage_url))
        return self._head + personal_head + self._body_head + tail


_TRAILING_AREA = re.compile(r"【[^【】]*】\s*$")


def subject_with_area(subject: str, area_label: str) -> str:
    """The subject as sent: ``area_label`` in 【】 appended unless one ends it already."""
    subject = subject.rstrip()
    if not area_label or _TRAILING_AREA.search(subject):
        return subject
    return f"{subject}【{area_label}】"


def _header_address(address: str) -> str:
    from maild.mail.compose import _address

    return _address(address)


def list_id(config: Config) -> str:
    """``List-Id: <alerts.mail.example.jp>`` (RFC 2919), ASCII only."""
    return f"<alerts.{config.smtp.hostname}>"


def template_for(
    config: Config,
    content: AlertContent,
    date: dt.datetime,
    charset: Charset = UTF8,
    test: bool = False,
) -> AlertTemplate:
    """The template of one alert in one charset, with the service's From, prefix and List-Id.

    Raises :class:`~maild.mail.legacy.LegacyCharsetError` when the alert cannot be written in
    ISO-2022-JP.
    """
    mail = config.mail
    return AlertTemplate(
        content,
        from_address=mail.from_address,
        from_name=mail.from_name,
        subject_prefix=mail.subject_prefix,
        list_id=list_id(config),
        hostname=config.smtp.hostname,
        date=date.astimezone(config.service.tz),
        test=test,
        charset=charset,
    )
