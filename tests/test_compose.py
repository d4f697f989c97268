"""maild.mail.compose: the bytes of an outgoing mail, checked by parsing them back."""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import random
import re
import zoneinfo
from collections import Counter
from email.header import decode_header, make_header
from typing import Any

import pytest

from maild.mail import legacy
from maild.mail.compose import ISO_2022_JP, UTF8, Charset, compose, header_fields

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")
DATE = dt.datetime(2026, 12, 1, 9, 30, tzinfo=TOKYO)
BODY = (
    "12月1日午後4時ころ、青葉区内の路上で、下校中の児童が声をかけられました。\n"
    "①不審な人物を見かけたら110番してください。～ご注意ください～\n"
    "\n"
    "――――――――――\n"
    "利用者情報の変更・解除はこちら\n"
    "https://mail.example.jp/manage/TOKEN\n"
)


def make(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "from_address": "info@mail.example.jp",
        "from_name": "みやぎSecurityメール",
        "to": "taro@docomo.ne.jp",
        "subject": "【みやぎSecurityメール】不審者（声かけ）事案の発生【青葉区】",
        "body": BODY,
        "date": DATE,
        "message_id_domain": "mail.example.jp",
        "auto_submitted": "auto-generated",
    }
    args.update(overrides)
    return compose(**args)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return re.findall(r"^([^\s:]+):", head, flags=re.MULTILINE)


def test_headers_and_body_round_trip() -> None:
    msg = parse(make())

    assert msg["From"].addresses[0].display_name == "みやぎSecurityメール"
    assert msg["From"].addresses[0].addr_spec == "info@mail.example.jp"
    assert msg["To"].addresses[0].addr_spec == "taro@docomo.ne.jp"
    assert msg["Subject"] == "【みやぎSecurityメール】不審者（声かけ）事案の発生【青葉区】"
    assert msg["Date"].datetime == DATE
    assert msg["MIME-Version"] == "1.0"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] in ("base64", "quoted-printable")
    assert msg.get_content().replace("\r\n", "\n") == BODY
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None


def test_date_is_written_in_the_callers_time_zone() -> None:
    data = make()
    assert b"\r\nDate: Tue, 01 Dec 2026 09:30:00 +0900\r\n" in b"\r\n" + data
    with pytest.raises(ValueError):
        make(date=dt.datetime(2026, 12, 1, 9, 30))  # naive


def test_no_header_appears_twice() -> None:
    data = make(
        in_reply_to="<abc@docomo.ne.jp>",
        extra_headers=[("List-Id", "<alerts.mail.example.jp>"), ("Precedence", "bulk")],
    )
    counts = Counter(name.lower() for name in header_names(data))
    assert counts and max(counts.values()) == 1
    assert {"date", "from", "to", "subject", "message-id", "mime-version"} <= set(counts)


def test_extra_headers_are_kept_and_cannot_duplicate_ours() -> None:
    url = "https://mail.example.jp/unsubscribe/" + "x" * 120
    msg = parse(
        make(
            extra_headers=[
                ("List-Unsubscribe", f"<{url}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ]
        )
    )
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    with pytest.raises(ValueError, match="twice"):
        make(extra_headers=[("subject", "again")])
    with pytest.raises(ValueError, match="twice"):
        make(extra_headers=[("Precedence", "bulk"), ("PRECEDENCE", "list")])
    with pytest.raises(ValueError):
        make(extra_headers=[("X-Evil", "a\r\nBcc: someone@example.jp")])


def test_message_ids_are_unique_and_in_the_given_domain() -> None:
    first, second = parse(make()), parse(make())
    assert first["Message-ID"] != second["Message-ID"]
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.jp>", first["Message-ID"])
    kept = parse(make(message_id="<fixed.1@mail.example.jp>"))
    assert kept["Message-ID"] == "<fixed.1@mail.example.jp>"


def test_reply_headers() -> None:
    msg = parse(make(auto_submitted="auto-replied", in_reply_to="<20261201.abc@docomo.ne.jp>"))
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<20261201.abc@docomo.ne.jp>"
    assert msg["References"] == "<20261201.abc@docomo.ne.jp>"


def test_reply_to_a_malformed_message_id_leaves_it_out() -> None:
    assert parse(make(in_reply_to="abc@docomo.ne.jp"))["In-Reply-To"] == "<abc@docomo.ne.jp>"
    for bad in ("no id here", "<あ@docomo.ne.jp>", "x\r\nBcc: a@b.jp"):
        data = make(in_reply_to=bad)
        assert "in-reply-to" not in (n.lower() for n in header_names(data))


def test_auto_submitted_must_be_known() -> None:
    with pytest.raises(ValueError):
        make(auto_submitted="no")


def test_legacy_recipient_is_quoted_in_to() -> None:
    data = make(to="taro..test.@docomo.ne.jp")
    assert b'\r\nTo: "taro..test."@docomo.ne.jp\r\n' in data
    address = parse(data)["To"].addresses[0]
    assert (address.username, address.domain) == ("taro..test.", "docomo.ne.jp")


def test_lines_stay_short_even_for_one_long_line() -> None:
    body = "安" * 3000
    data = make(body=body, subject="長い件名" * 40)

    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only, no bare LF or CR
    assert b"\r" not in data.replace(b"\r\n", b"")
    msg = parse(data)
    assert msg.get_content().rstrip("\r\n") == body
    assert msg["Subject"] == "長い件名" * 40


def test_message_is_7bit_ascii() -> None:
    assert make().isascii()


def test_line_breaks_in_subject_cannot_add_headers() -> None:
    data = make(subject="件名\r\nBcc: victim@example.jp")
    assert "bcc" not in (n.lower() for n in header_names(data))
    assert parse(data)["Subject"] == "件名 Bcc: victim@example.jp"


def test_ascii_subject_and_name_stay_readable() -> None:
    data = make(subject="Test alert", from_name="Miyagi Police, Safety")
    assert b"\r\nSubject: Test alert\r\n" in data
    assert b'\r\nFrom: "Miyagi Police, Safety" <info@mail.example.jp>\r\n' in data
    assert parse(data)["From"].addresses[0].display_name == "Miyagi Police, Safety"


def test_body_line_endings_are_canonical() -> None:
    msg = parse(make(body="一行目\r\n二行目\r三行目\n四行目"))
    assert msg.get_payload(decode=True) == "一行目\r\n二行目\r\n三行目\r\n四行目\r\n".encode()


# Characters subjects are made of: ASCII, kana, kanji, full-width forms, symbols, emoji.
_SUBJECT_ALPHABET = (
    "abcXYZ019 -:【】（）、。・"
    "あいうえおかきくけこがぎアイウエオカキクケコガギ"
    "不審者声掛事案発生仙台市青葉区宮城野若林太白泉石巻塩竈気仙沼"
    "ＡＢＣ１２３！？〜ー"
)
_EMOJI = "⚠🚓📢"
_ENCODED_WORD = re.compile(r"=\?[^?]+\?[BbQq]\?[^?]*\?=")


def _random_subjects(seed: int, count: int, emoji: bool) -> list[str]:
    rng = random.Random(seed)
    alphabet = _SUBJECT_ALPHABET + (_EMOJI if emoji else "")
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 160))).strip() or "件名"
        for _ in range(count)
    ]


@pytest.mark.parametrize("charset", [UTF8, ISO_2022_JP])
def test_encoded_words_are_at_most_75_characters_and_decode_back(charset: Charset) -> None:
    # RFC 2047 §2: at most 75 characters a word, 76 a line holding one.
    for subject in _random_subjects(2047, 1500, emoji=charset == UTF8):
        fields = dict(
            header_fields(
                from_address="alert@mail.example.jp",
                from_name="みやぎSecurityメール",
                to="taro@example.jp",
                subject=subject,
                date=DATE,
                message_id="<x@mail.example.jp>",
                auto_submitted="auto-generated",
                charset=charset,
            )
        )
        for name in ("Subject", "From"):
            lines = f"{name}: {fields[name]}".split("\r\n")
            for line in lines:
                for word in _ENCODED_WORD.findall(line):
                    assert len(word) <= 75, (subject, word)
                if _ENCODED_WORD.search(line):
                    assert len(line) <= 76, (subject, line)
        decoded = str(make_header(decode_header(fields["Subject"].replace("\r\n", ""))))
        expected = " ".join(subject.split())
        if charset == ISO_2022_JP:
            expected = legacy.to_legacy(expected)
        assert decoded == expected
