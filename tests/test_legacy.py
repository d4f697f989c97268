"""ISO-2022-JP mail for older phones (``[mail] legacy_charset_domains``,
docs/mail-delivery.md):
mapping, refusal, and the bytes as a mail reader decodes them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.message
import email.policy
import re
import tomllib
import zoneinfo
from collections.abc import Iterator
from email.utils import format_datetime
from typing import Any

import pytest

from maild.alerts.filetext import FileProblem
from maild.alerts.legacy_check import check_alert_for_legacy
from maild.alerts.spool_files import error_report
from maild.common.config import RelayConfig
from maild.delivery.alertmail import (
    AlertContent,
    AlertTemplate,
    Personal,
    body_text,
    new_message_key,
)
from maild.mail.compose import compose, encode_body
from maild.mail.legacy import (
    LEGACY_MAP,
    LegacyCharsetError,
    LegacyProblem,
    encodes,
    legacy_problems,
    to_legacy,
)
from maild.mail.relay import open_relay
from maild.residents.notices import RULE, complete_notice, manage_notice, register_notice
from tests.configs import AREAS_FILE
from tests.smtpsink import SmtpSink, smtp_sink

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")
DATE = dt.datetime(2026, 12, 1, 9, 30, tzinfo=TOKYO)
DATE_HEADER = format_datetime(DATE)
SUBJECT = "【みやぎSecurityメール】㈱を名乗る不審電話～ご注意を【青葉区】"
SUBJECT_SENT = "【みやぎSecurityメール】(株)を名乗る不審電話〜ご注意を【青葉区】"
BODY = (
    "12月1日午後4時ころ、青葉区内の路上で、下校中の児童が声をかけられました。\n"
    "①不審な人物を見かけたら110番してください。～ご注意ください～\n"
    "髙橋さん宅に㈱ｾｷｭﾘﾃｨを名乗る電話がありました。№3\n"
)
BODY_SENT = (
    "12月1日午後4時ころ、青葉区内の路上で、下校中の児童が声をかけられました。\n"
    "(1)不審な人物を見かけたら110番してください。〜ご注意ください〜\n"
    "高橋さん宅に(株)セキュリティを名乗る電話がありました。No.3\n"
)
JIS_ESCAPES = re.compile(rb"\x1b(\$B|\(B)")


def make(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "from_address": "info@mail.example.jp",
        "from_name": "みやぎSecurityメール",
        "to": "taro..test.@docomo.ne.jp",
        "subject": SUBJECT,
        "body": BODY,
        "date": DATE,
        "message_id_domain": "mail.example.jp",
        "auto_submitted": "auto-generated",
        "charset": "iso-2022-jp",
    }
    args.update(overrides)
    return compose(**args)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def content(msg: email.message.EmailMessage) -> str:
    text = msg.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def assert_clean_iso_2022_jp(data: bytes) -> None:
    """7-bit, CRLF lines under 998 bytes, only ASCII and JIS X 0208 switches, each line
    back in ASCII at its end (RFC 1468)."""
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        escapes = re.findall(rb"\x1b.{0,2}", line)
        assert all(JIS_ESCAPES.fullmatch(e) for e in escapes), escapes
        if escapes:
            assert escapes[-1] == b"\x1b(B"


# --- the mapping -----------------------------------------------------------------------


def test_every_mapped_character_needs_it_and_every_target_encodes() -> None:
    assert len(LEGACY_MAP) > 300
    for char, target in LEGACY_MAP.items():
        assert not encodes(char), f"{char!r} encodes already; mapping it only changes the text"
        assert encodes(target), f"{char!r} maps to {target!r}, which does not encode"
        assert "\n" not in target and "\r" not in target  # line numbers must survive
    for char in "①⑳㈱㈲№～Ⅰ Ⅹ㍻㍼㋿㎝㎏㎞髙﨑德":
        if char != " ":
            assert char in LEGACY_MAP


@pytest.mark.parametrize(
    ("original", "sent"),
    [
        ("㈱", "(株)"),
        ("㈲", "(有)"),
        ("～", "〜"),
        ("①⑳", "(1)(20)"),
        ("Ⅰ・Ⅱ・Ⅹ", "I・II・X"),
        ("㍻㍼㋿", "平成昭和令和"),
        ("㎝㎏㎞", "cmkgkm"),
        ("№5", "No.5"),
        ("－", "−"),
        ("髙﨑德", "高崎徳"),
        ("｢ｶﾞｯｺｳ｣ﾞ", "「ガッコウ」゛"),
        ("か\u3099", "が"),  # as macOS writes it (NFD)
        ("¥100", "￥100"),  # never ESC ( J
        ("⚠\ufe0f", "⚠"),  # the emoji-style selector goes; ⚠ itself is reported below
        ("ふつうの文章です。", "ふつうの文章です。"),
    ],
)
def test_to_legacy(original: str, sent: str) -> None:
    assert to_legacy(original) == sent


def test_wave_dash_is_what_iso_2022_jp_has() -> None:
    assert "〜".encode("iso2022_jp") == b"\x1b$B!A\x1b(B"
    with pytest.raises(UnicodeEncodeError):
        "～".encode("iso2022_jp")


def test_legacy_problems_name_character_and_line() -> None:
    text = "一行目①\n二行目😀と😀\n三行目\x1b(B♥\n⚠\ufe0f"
    assert legacy_problems(text) == [
        LegacyProblem(2, "😀", "GRINNING FACE"),
        LegacyProblem(3, "\x1b", "U+001B"),
        LegacyProblem(3, "♥", "BLACK HEART SUIT"),
        LegacyProblem(4, "⚠", "WARNING SIGN"),
    ]
    assert legacy_problems("①～㈱ｶﾞ") == []


def test_service_texts_encode() -> None:
    """What the service adds to every mail must never be the reason one is refused."""
    fixed = [
        RULE,
        "利用者情報の変更・解除はこちら",
        "【みやぎSecurityメール】",
        "みやぎSecurityメール",
    ]
    fixed += list(register_notice("みやぎSecurityメール", "https://x/register/T"))
    fixed += list(manage_notice("みやぎSecurityメール", "https://x/manage/T"))
    fixed += list(
        complete_notice("みやぎSecurityメール", "https://x/manage/T", ["青葉区"], ["その他"])
    )
    areas = tomllib.loads(AREAS_FILE.read_text(encoding="utf-8"))
    for kind in ("all", "block", "station", "municipality"):
        entries = areas.get(kind, [])
        for entry in entries if isinstance(entries, list) else [entries]:
            fixed.append(entry["name_ja"])
    assert len(fixed) > 40
    for text in fixed:
        assert legacy_problems(text) == [], text


# --- compose -----------------------------------------------------------------------------


def test_mail_to_a_legacy_domain_decodes_as_iso_2022_jp() -> None:
    data = make()
    assert_clean_iso_2022_jp(data)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"=?iso-2022-jp?b?" in head.lower()
    assert b"utf-8" not in head.lower()

    msg = parse(data)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "iso-2022-jp"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg["Subject"] == SUBJECT_SENT
    assert msg["From"].addresses[0].display_name == "みやぎSecurityメール"
    assert (msg["To"].addresses[0].username, msg["To"].addresses[0].domain) == (
        "taro..test.",
        "docomo.ne.jp",
    )
    assert content(msg) == BODY_SENT
    # Nothing in the body is left for a phone to guess at.
    assert msg.get_payload(decode=True) == BODY_SENT.replace("\n", "\r\n").encode("iso2022_jp")


def test_utf8_is_still_the_default() -> None:
    msg = parse(make(charset="utf-8"))
    assert msg.get_content_charset() == "utf-8"
    assert content(msg) == BODY  # nothing mapped for smartphones and PCs
    with pytest.raises(ValueError, match="charset"):
        make(charset="shift_jis")


def test_an_emoji_is_refused_with_its_name_and_line() -> None:
    body = "一行目\n二行目\n三行目に絵文字😀があります\n"
    with pytest.raises(LegacyCharsetError) as caught:
        make(body=body)
    error = caught.value
    assert error.part == "body"
    assert error.problems == (LegacyProblem(3, "😀", "GRINNING FACE"),)
    assert "本文 3行目" in error.ja and "「😀」(GRINNING FACE)" in error.ja
    assert "ISO-2022-JP" in error.ja
    assert "body line 3" in error.en and '"😀" (GRINNING FACE)' in error.en
    assert isinstance(error, ValueError)


def test_an_emoji_in_the_subject_or_name_is_refused() -> None:
    with pytest.raises(LegacyCharsetError) as caught:
        make(subject="注意🚨")
    assert caught.value.part == "Subject"
    assert caught.value.problems == (LegacyProblem(1, "🚨", "POLICE CARS REVOLVING LIGHT"),)
    with pytest.raises(LegacyCharsetError) as caught:
        make(from_name="県警♥")
    assert caught.value.part == "From"


def test_a_long_japanese_line_is_folded_under_998_bytes() -> None:
    body = "安" * 3000
    data = make(body=body, subject="長い件名" * 40)
    assert_clean_iso_2022_jp(data)
    msg = parse(data)
    assert content(msg).replace("\n", "") == body
    assert msg["Subject"] == "長い件名" * 40
    # Also the worst case: a switch between ASCII and JIS at every character.
    mixed = "あa" * 2000
    data = make(body=mixed)
    assert_clean_iso_2022_jp(data)
    assert content(parse(data)).replace("\n", "") == mixed


def test_body_line_endings_are_canonical() -> None:
    data = encode_body("一行目\r\n二行目\r三行目\nfour\n", "iso-2022-jp")
    assert data.decode("iso2022_jp") == "一行目\r\n二行目\r\n三行目\r\nfour\r\n"


# --- alert template ---------------------------------------------------------------------

ALERT = AlertContent(
    alert_id=7,
    subject="㈱を名乗る不審電話",
    area_label="青葉区・仙台北警察署",
    body="①不審な電話に注意～\n髙橋さん宅で確認。",
    sender="仙台北警察署",
    message_key="0123456789abcdef",
)


def template(charset: str = "iso-2022-jp", content: AlertContent = ALERT) -> AlertTemplate:
    return AlertTemplate(
        content,
        from_address="info@mail.example.jp",
        from_name="みやぎSecurityメール",
        subject_prefix="【みやぎSecurityメール】",
        list_id="<alerts.mail.example.jp>",
        hostname="mail.example.jp",
        charset=charset,  # type: ignore[arg-type]
    )


def personal(number: int = 1, address: str = "hanako@docomo.ne.jp") -> Personal:
    return Personal(
        address=address,
        subscriber_id=number,
        manage_url=f"https://mail.example.jp/manage/TOKEN{number}",
        unsubscribe_url=f"https://mail.example.jp/unsubscribe/TOKEN{number}",
        envelope_from="bounce+v@mail.example.jp",
    )


def test_alert_template_iso_2022_jp_with_personal_footer() -> None:
    data = template().personalise(personal(42), DATE_HEADER)
    assert_clean_iso_2022_jp(data)
    msg = parse(data)
    assert msg["Subject"] == (
        "【みやぎSecurityメール】(株)を名乗る不審電話【青葉区・仙台北警察署】"
    )
    assert msg["To"].addresses[0].addr_spec == "hanako@docomo.ne.jp"
    assert msg["Message-ID"] == "<alert-7.42.0123456789abcdef@mail.example.jp>"
    assert msg["List-Unsubscribe"] == "<https://mail.example.jp/unsubscribe/TOKEN42>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_charset() == "iso-2022-jp"
    assert content(msg) == (
        "(1)不審な電話に注意〜\n"
        "高橋さん宅で確認。\n"
        "\n"
        "（仙台北警察署）\n"
        "\n"
        f"{RULE}\n"
        "利用者情報の変更・解除はこちら\n"
        "https://mail.example.jp/manage/TOKEN42\n"
    )
    # Encoding the shared part once gives the same bytes as encoding the whole body.
    body = data.split(b"\r\n\r\n", 1)[1]
    expected = encode_body(body_text(ALERT, personal(42).manage_url), "iso-2022-jp")
    assert body == expected


@pytest.mark.parametrize("extra", range(0, 60, 7))
def test_utf8_body_encoded_in_two_parts_equals_the_whole_encoded_at_once(extra: int) -> None:
    # The shared part is base64-encoded once, cut where a whole line ends; the cut
    # lands elsewhere for each body length, and the bytes must not change.
    content = AlertContent(
        alert_id=7,
        subject="不審電話",
        area_label="青葉区",
        body="a" * extra + "不審な電話に注意\r\n髙橋さん宅で確認。\n",
        sender=None if extra % 2 else "仙台北警察署",
        message_key="0123456789abcdef",
    )
    data = template("utf-8", content).personalise(personal(3), DATE_HEADER)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body == encode_body(body_text(content, personal(3).manage_url))


def test_each_recipient_gets_their_own_footer_and_utf8_is_unchanged() -> None:
    legacy = template()
    first, second = (parse(legacy.personalise(personal(n), DATE_HEADER)) for n in (1, 2))
    assert content(first).endswith("/manage/TOKEN1\n")
    assert content(second).endswith("/manage/TOKEN2\n")
    plain = parse(template("utf-8").personalise(personal(1), DATE_HEADER))
    assert plain.get_content_charset() == "utf-8"
    assert content(plain) == body_text(ALERT, personal(1).manage_url)
    assert "㈱" in plain["Subject"]


def test_alert_template_refuses_an_emoji_for_legacy_only() -> None:
    bad = AlertContent(7, "不審者", "青葉区", "本文です\n見かけたら😀通報を", None, "0" * 16)
    template("utf-8", bad)  # smartphones get it as written
    with pytest.raises(LegacyCharsetError) as caught:
        template("iso-2022-jp", bad)
    assert caught.value.problems == (LegacyProblem(2, "😀", "GRINNING FACE"),)


# --- checking an alert file before it is accepted --------------------------------------


def test_check_alert_for_legacy_gives_file_line_numbers() -> None:
    problems = check_alert_for_legacy(
        "声かけ事案🚨",
        "一行目\n二行目①\n三行目😀",
        subject_line=1,
        body_first_line=8,
        sender="仙台北署☆",  # ☆ is in JIS X 0208
        sender_line=5,
    )
    assert [p.line for p in problems] == [1, 10]
    assert problems[1] == FileProblem(
        10,
        "「😀」(GRINNING FACE) は携帯電話向けの文字コード(ISO-2022-JP)で送れません。"
        "別の文字に置き換えてください。",
        '"😀" (GRINNING FACE) cannot be sent in ISO-2022-JP for older phones; replace it.',
    )
    report = error_report("alert.txt", problems)
    assert "10行目: 「😀」(GRINNING FACE)" in report
    assert "line 10: " in report
    assert check_alert_for_legacy("①㈱", "～", subject_line=1, body_first_line=6) == []
    sender_problem = check_alert_for_legacy(
        "件名", "本文", subject_line=1, body_first_line=6, sender="署♥", sender_line=4
    )
    assert [p.line for p in sender_problem] == [4]


# --- over the wire ----------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as s:
        yield s


def test_legacy_mail_crosses_a_real_smtp_server_intact(sink: SmtpSink) -> None:
    data = template().personalise(personal(3, "taro..test.@docomo.ne.jp"), DATE_HEADER)

    async def send() -> None:
        relay = open_relay(RelayConfig(url=sink.url), "maild.test")
        try:
            await relay.send("bounce+v@mail.example.jp", "taro..test.@docomo.ne.jp", data)
        finally:
            await relay.close()

    asyncio.run(send())
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ('"taro..test."@docomo.ne.jp',)
    assert received.data.rstrip(b"\r\n") == data.rstrip(b"\r\n")
    msg = received.message()
    assert msg["Subject"].startswith("【みやぎSecurityメール】(株)")
    assert content(msg).endswith("/manage/TOKEN3\n")


# --- issue 13: Message-ID, Date, test sends ------------------------------------------------


def test_message_ids_differ_between_alerts_with_the_same_id_and_stay_across_retries() -> None:
    # A restored backup or a new database numbers alerts from 1 again: the random key
    # keeps Gmail from dropping the new alert as a message it has already seen.
    first = dataclasses.replace(ALERT, message_key=new_message_key())
    again = dataclasses.replace(ALERT, message_key=new_message_key())
    ids = {
        parse(template("utf-8", content).personalise(personal(3), DATE_HEADER))["Message-ID"]
        for content in (first, again)
    }
    assert len(ids) == 2
    retry = template("utf-8", first)
    later = format_datetime(DATE + dt.timedelta(hours=6))
    assert (
        parse(retry.personalise(personal(3), DATE_HEADER))["Message-ID"]
        == parse(retry.personalise(personal(3), later))["Message-ID"]
    )


def test_date_is_the_moment_of_hand_off_not_of_the_template() -> None:
    made = template("utf-8")
    later = DATE + dt.timedelta(hours=6)
    msg = parse(made.personalise(personal(3), format_datetime(later)))
    assert msg["Date"].datetime == later
    assert len(msg.get_all("Date") or []) == 1


@pytest.mark.parametrize("charset", ["utf-8", "iso-2022-jp"])
def test_a_test_send_has_no_unsubscribe_link_and_says_it_is_a_test(charset: str) -> None:
    test = AlertTemplate(
        ALERT,
        from_address="info@mail.example.jp",
        from_name="みやぎSecurityメール",
        subject_prefix="【みやぎSecurityメール】",
        list_id="<alerts.mail.example.jp>",
        hostname="mail.example.jp",
        test=True,
        charset=charset,  # type: ignore[arg-type]
    )
    msg = parse(test.personalise(personal(1), DATE_HEADER))
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
    text = content(msg)
    assert "テスト送信" in text and "test send" in text
    assert "/manage/" not in text and "/unsubscribe/" not in text
    assert "変更・解除" not in text
