"""Alert mails: composed once per alert, personalised per recipient as bytes.

Building an ``EmailMessage`` per recipient costs about a millisecond; an alert
for a million subscribers cannot afford that. :class:`AlertTemplate` encodes
the headers everyone shares once, and :meth:`AlertTemplate.personalise` adds
the few that differ (To, Message-ID, List-Unsubscribe) and the body with the
recipient's own change/cancel link (docs/mail-delivery.md). Pure: no I/O.

An alert has one template per charset: UTF-8 for most recipients, ISO-2022-JP
for ``mail.legacy_charset_domains`` (docs/mail-delivery.md); the caller picks per recipient.
An ISO-2022-JP body is encoded line by line, each line ending in ASCII, so the
part before the change/cancel URL is encoded once and the ASCII URL line is
appended per recipient.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from email.utils import format_datetime

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
    header_address,
    header_fields,
    render,
)
from maild.residents.notices import RULE
from maild.residents.terms import MANAGE

# Headers that differ per recipient; the template leaves them out and adds them per message.
_PERSONAL = frozenset({"date", "to", "message-id", "list-unsubscribe"})
TEST_MARK = "【テスト】"
_PLACEHOLDER_DATE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class AlertContent:
    """What an alert says, independent of who receives it."""

    alert_id: int
    subject: str  # as the operator wrote it
    area_label: str  # 「青葉区・仙台北警察署」
    body: str
    sender: str | None  # the station or division shown above the footer
    # The random part of every Message-ID of this alert: one alert's ids never repeat
    # another's, in this database or any other (a restored backup, a new install).
    message_key: str


@dataclass(frozen=True)
class Personal:
    """What differs per recipient."""

    address: str
    subscriber_id: int
    manage_url: str
    unsubscribe_url: str
    envelope_from: str  # VERP: bounce+TOKEN@domain


def full_subject(prefix: str, subject: str, area_label: str, test: bool = False) -> str:
    """「【みやぎSecurityメール】女子中学生に対する声かけ事案【宮城野区】」
    (docs/alert-files.md)."""
    return (TEST_MARK if test else "") + prefix + subject_with_area(subject, area_label)


TEST_FOOTER = (
    "これはテスト送信です。登録者には送られていません。\n"
    "This is a test send; no resident received it.\n"
)


def new_message_key() -> str:
    """The random part of an alert's Message-IDs (:attr:`AlertContent.message_key`)."""
    return secrets.token_hex(8)


def body_text(content: AlertContent, manage_url: str, test: bool = False) -> str:
    """The body a recipient reads: the alert, the sender line, the change/cancel footer
    (a test send says it is one instead: its recipients have no link to follow)."""
    return _shared_text(content, test) + ("" if test else manage_url + "\n")


def _shared_text(content: AlertContent, test: bool = False) -> str:
    """Everything of :func:`body_text` before the recipient's URL, ending in a line break."""
    parts = [content.body.rstrip("\n"), ""]
    if content.sender:
        parts += [f"（{content.sender}）", ""]
    if test:
        return "\n".join(parts) + RULE + "\n" + TEST_FOOTER
    parts += [RULE, f"{MANAGE.ja}はこちら", ""]
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
        test: bool = False,
        charset: Charset = UTF8,
    ) -> None:
        self.content = content
        self.hostname = hostname
        self.charset = charset
        self.test = test
        list_headers = [
            ("List-Unsubscribe", "<https://placeholder.invalid/>"),  # replaced per recipient
            # RFC 8058 §3.1: one-click unsubscribe by POST to the List-Unsubscribe URL.
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ]
        fields = header_fields(
            from_address=from_address,
            from_name=from_name,
            to=from_address,  # replaced per recipient
            subject=full_subject(subject_prefix, content.subject, content.area_label, test),
            date=_PLACEHOLDER_DATE,  # replaced per recipient
            message_id=f"<alert-{content.alert_id}@{hostname}>",  # replaced per recipient
            auto_submitted=AUTO_GENERATED,
            extra_headers=[
                ("List-Id", list_id),
                # A test send has no subscriber to unsubscribe: no link that cannot work.
                *([] if test else list_headers),
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
        text = _shared_text(content, test)
        if charset == ISO_2022_JP:
            self._body_head = encode_body(text, charset)
            self._body_rest = b""
        else:
            canonical = canonical_utf8(text)
            cut = len(canonical) - len(canonical) % BASE64_CHUNK
            self._body_head = base64_lines(canonical[:cut])
            self._body_rest = canonical[cut:]

    def personalise(self, personal: Personal, date: str) -> bytes:
        """One recipient's message (docs/mail-delivery.md): ASCII substitutions and the body.

        ``date`` is the Date header's value (:func:`date_header`) for the moment the
        message is handed to the relay, so a mail that waited out a relay outage is not
        dated in the past. The Message-ID stays the same across retries of one delivery.
        """
        content = self.content
        personal_head = (
            f"Date: {date}{CRLF}"
            f"To: {header_address(personal.address)}{CRLF}"
            f"Message-ID: <alert-{content.alert_id}.{personal.subscriber_id}."
            f"{content.message_key}@{self.hostname}>{CRLF}"
        )
        if not self.test:
            personal_head += f"List-Unsubscribe: <{personal.unsubscribe_url}>{CRLF}"
        head = (personal_head + CRLF).encode("ascii")
        if self.test:
            return self._head + head + self._body_head + base64_lines(self._body_rest)
        if self.charset == ISO_2022_JP:
            tail = encode_body(personal.manage_url, ISO_2022_JP)
        else:
            tail = base64_lines(self._body_rest + canonical_utf8(personal.manage_url))
        return self._head + head + self._body_head + tail


_TRAILING_AREA = re.compile(r"【[^【】]*】\s*$")


def subject_with_area(subject: str, area_label: str) -> str:
    """The subject as sent: ``area_label`` in 【】 appended unless one ends it already."""
    subject = subject.rstrip()
    if not area_label or _TRAILING_AREA.search(subject):
        return subject
    return f"{subject}【{area_label}】"


def list_id(config: Config) -> str:
    """``List-Id: <alerts.mail.example.jp>`` (RFC 2919), ASCII only."""
    return f"<alerts.{config.smtp.hostname}>"


def date_header(now: dt.datetime, config: Config) -> str:
    """The Date header's value for ``now``, in the service's time zone (``+0900``)."""
    return format_datetime(now.astimezone(config.service.tz))


def template_for(
    config: Config,
    content: AlertContent,
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
        test=test,
        charset=charset,
    )
