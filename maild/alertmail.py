"""Alert mails: composed once per alert, personalised per recipient as bytes.

Building an ``EmailMessage`` per recipient costs about a millisecond; an alert
for a million subscribers cannot afford that. :class:`AlertTemplate` encodes
the headers everyone shares once, and :meth:`AlertTemplate.personalise` adds
the few that differ (To, Message-ID, List-Unsubscribe) and the body with the
recipient's own change/cancel link (SPEC §7). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from maild.alertfile import subject_with_area
from maild.compose import (
    AUTO_GENERATED,
    CRLF,
    encode_body,
    header_fields,
    render,
)
from maild.notices import RULE

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
    parts = [content.body.rstrip("\n"), ""]
    if content.sender:
        parts += [f"（{content.sender}）", ""]
    parts += [RULE, "利用者情報の変更・解除はこちら", manage_url, ""]
    return "\n".join(parts)


class AlertTemplate:
    """The shared part of every mail of one alert, encoded once."""

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
    ) -> None:
        self.content = content
        self.hostname = hostname
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
        )
        shared = [(name, value) for name, value in fields if name.lower() not in _PERSONAL]
        self._head = render(shared, b"")[:-2]  # without the blank line that ends the header

    def personalise(self, personal: Personal) -> bytes:
        """The bytes of one recipient's message (SPEC §7): ASCII substitutions and the body."""
        personal_head = (
            f"To: {_header_address(personal.address)}{CRLF}"
            f"Message-ID: <alert-{self.content.alert_id}.{personal.subscriber_id}@{self.hostname}>"
            f"{CRLF}List-Unsubscribe: <{personal.unsubscribe_url}>{CRLF}{CRLF}"
        ).encode("ascii")
        return (
            self._head + personal_head + encode_body(body_text(self.content, personal.manage_url))
        )


def _header_address(address: str) -> str:
    from maild.compose import _address

    return _address(address)
