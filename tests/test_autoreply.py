"""Which mails to the registration address get an answer (RFC 3834 §2, docs/mail-delivery.md)."""

from __future__ import annotations

from email.message import Message
from pathlib import Path

import pytest

from maild.inbound import autoreply
from maild.inbound.autoreply import decide, message_id, parse_headers

CORPUS = Path(__file__).parent / "corpus" / "autoreply"
OWN = ("entry@mail.example.jp", "bounce@mail.example.jp", "info@mail.example.jp")


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.eml"))


def envelope_sender(message: Message) -> str:
    """The corpus keeps the envelope sender where a delivering MTA records it."""
    value = message["Return-Path"]
    assert value is not None, "every corpus message needs a Return-Path"
    return str(value).strip()


def test_corpus_covers_every_shape() -> None:
    reasons = {path.name.split("__")[0] for path in corpus()}
    assert reasons >= {
        autoreply.ANSWER,
        autoreply.NULL_SENDER,
        autoreply.MAILER_DAEMON,
        autoreply.AUTO_SUBMITTED,
        autoreply.PRECEDENCE,
        autoreply.LIST_HEADER,
        autoreply.LIST_ADDRESS,
        autoreply.REPORT,
        autoreply.SUPPRESSED,
        autoreply.AUTOREPLY_HEADER,
        autoreply.FEEDBACK_ID,
        autoreply.BOUNCE_ADDRESS,
        autoreply.NO_REPLY,
        autoreply.OWN_ADDRESS,
    }
    assert len([p for p in corpus() if p.name.startswith("ok__")]) >= 5


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_corpus_message(path: Path) -> None:
    expected = path.name.split("__")[0]
    message = parse_headers(path.read_bytes())
    decision = decide(envelope_sender(message), message, OWN)
    assert decision.reason == expected
    assert decision.answer is (expected == autoreply.ANSWER)


def headers(text: str) -> Message:
    return parse_headers(text.encode("ascii") + b"\n\nbody\n")


PLAIN = "From: taro@docomo.ne.jp\nTo: entry@mail.example.jp\nSubject: \n"


@pytest.mark.parametrize(
    ("mail_from", "extra", "reason"),
    [
        ("taro@docomo.ne.jp", "", "ok"),
        ("<>", "", "null-sender"),
        ("", "", "null-sender"),
        ("< >", "", "null-sender"),
        ("MAILER-DAEMON", "", "mailer-daemon"),
        ("mailer-daemon@mx.example.jp", "", "mailer-daemon"),
        ("Postmaster@example.jp", "", "mailer-daemon"),
        ("owner-chounaikai@example.jp", "", "list-address"),
        ("bouhan-request@example.jp", "", "list-address"),
        ("bounces+1234-taro=docomo.ne.jp@mailer.example.com", "", "bounce-address"),
        ("noreply@example.com", "", "no-reply"),
        ("do-not-reply@example.com", "", "no-reply"),
        ("ENTRY@Mail.Example.JP", "", "own-address"),
        # Residents pick their own local parts; near misses are people.
        ("bouncy.cat@docomo.ne.jp", "", "ok"),
        ("owner@docomo.ne.jp", "", "ok"),
        ("request.taro@ezweb.ne.jp", "", "ok"),
        ("taro..test.@docomo.ne.jp", "", "ok"),
        ("taro@docomo.ne.jp", "Auto-Submitted: no\n", "ok"),
        ("taro@docomo.ne.jp", "Auto-Submitted: No (sent by a person)\n", "ok"),
        ("taro@docomo.ne.jp", "Auto-Submitted: auto-replied\n", "auto-submitted"),
        ("taro@docomo.ne.jp", "Auto-Submitted: Auto-Generated; owner=x\n", "auto-submitted"),
        ("taro@docomo.ne.jp", "Auto-Submitted: auto-notified\n", "auto-submitted"),
        ("taro@docomo.ne.jp", "Auto-Submitted: \n", "auto-submitted"),
        ("taro@docomo.ne.jp", "Auto-Submitted: no\nAuto-Submitted: yes\n", "auto-submitted"),
        ("taro@docomo.ne.jp", "Precedence: Bulk\n", "precedence"),
        ("taro@docomo.ne.jp", "Precedence: junk\n", "precedence"),
        ("taro@docomo.ne.jp", "Precedence: list\n", "precedence"),
        ("taro@docomo.ne.jp", "X-Precedence: bulk\n", "precedence"),
        ("taro@docomo.ne.jp", "Precedence: first-class\n", "ok"),
        ("taro@docomo.ne.jp", "List-Id: <x.example.jp>\n", "list-header"),
        ("taro@docomo.ne.jp", "List-Unsubscribe: <mailto:u@x.jp>\n", "list-header"),
        ("taro@docomo.ne.jp", "list-post: NO\n", "list-header"),
        ("taro@docomo.ne.jp", "X-Auto-Response-Suppress: All\n", "suppressed"),
        ("taro@docomo.ne.jp", "X-Auto-Response-Suppress: OOF\n", "suppressed"),
        ("taro@docomo.ne.jp", "X-Auto-Response-Suppress: DR,autoreply\n", "suppressed"),
        ("taro@docomo.ne.jp", "X-Auto-Response-Suppress: DR, RN, NRN\n", "ok"),
        (
            "taro@docomo.ne.jp",
            "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status;"
            ' boundary="b"\n',
            "report",
        ),
        ("taro@docomo.ne.jp", "Content-Type: message/delivery-status\n", "report"),
        ("taro@docomo.ne.jp", "X-Autoreply: yes\n", "autoreply-header"),
        ("taro@docomo.ne.jp", "X-Autorespond: vacation\n", "autoreply-header"),
        ("taro@docomo.ne.jp", "Feedback-ID: 1:2:3:esp\n", "feedback-id"),
    ],
)
def test_decide(mail_from: str, extra: str, reason: str) -> None:
    decision = decide(mail_from, headers(PLAIN + extra), OWN)
    assert decision == autoreply.Decision(reason == "ok", reason)


def test_daemon_in_from_header_counts_when_envelope_looks_personal() -> None:
    message = headers("From: Mail Delivery System <MAILER-DAEMON@mx.example.jp>\nSubject: x\n")
    assert decide("relay@mx.example.jp", message) == autoreply.Decision(False, "mailer-daemon")


def test_own_address_in_from_header() -> None:
    message = headers("From: entry@mail.example.jp\n")
    assert decide("someone@example.jp", message, OWN).reason == "own-address"
    assert decide("someone@example.jp", message).answer


def test_body_is_never_read() -> None:
    # A body that looks like headers (a forwarded bounce, a signature) changes nothing.
    raw = (PLAIN + "\nAuto-Submitted: auto-replied\nList-Id: <x>\n").encode()
    assert decide("taro@docomo.ne.jp", parse_headers(raw)).answer


def test_undecodable_header_bytes_do_not_break_the_decision() -> None:
    raw = b"From: \x82\xa0 <taro@docomo.ne.jp>\nSubject: \x93\x6f\x98\x5e\nAuto-Submitted: \xff\n\n"
    message = parse_headers(raw)
    assert decide("taro@docomo.ne.jp", message).reason == "auto-submitted"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Message-ID: <abc.123@docomo.ne.jp>\n", "<abc.123@docomo.ne.jp>"),
        ("Message-Id:\n <CAJx9vQ+Wk2p@mail.gmail.com>\n", "<CAJx9vQ+Wk2p@mail.gmail.com>"),
        ("", None),
        ("Message-ID: abc@docomo.ne.jp\n", None),
        ("Message-ID: <abc@docomo.ne.jp>\nMessage-ID: <def@docomo.ne.jp>\n", None),
        ("Message-ID: <a b@docomo.ne.jp>\n", None),
        ("Message-ID: <a@b> <c@d>\n", None),
        ("Message-ID: <" + "a" * 300 + "@x.jp>\n", None),
    ],
)
def test_message_id(header: str, expected: str | None) -> None:
    assert message_id(headers(PLAIN + header)) == expected


def test_message_id_with_non_ascii_is_dropped() -> None:
    message = parse_headers(b"Message-ID: <\xe3\x81\x82@docomo.ne.jp>\n\n")
    assert message_id(message) is None
