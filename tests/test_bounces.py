"""Bounces: reading them (a corpus of real shapes), scoring them, and taking them over SMTP.

The score tests use a real SQLite file and a FakeClock set to Japanese times,
because the day a point belongs to is a day in the service's time zone. The
SMTP tests run the real listener on an OS-chosen port (the harness of
``test_smtp_inbound``) and, for the whole story, a real fan-out to a real SMTP
sink: the alert's own envelope sender is where the bounce goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from maild.alerts.alertfile import AlertDraft
from maild.alerts.window import WindowRules
from maild.alerts.workflow import Alerts, Source
from maild.common.clock import FakeClock
from maild.delivery.fanout import FanoutSender
from maild.mail.errors import DeliveryError, PermanentFailure, TemporaryFailure
from maild.mail.relay import open_relay
from maild.residents.areas import AreaMap
from maild.residents.bounces import (
    ALREADY_TODAY,
    NOT_ACTIVE,
    SCORED,
    SUSPENDED_NOW,
    UNKNOWN_SUBSCRIBER,
    Bounces,
    classify,
    relay_failure_counts,
)
from maild.residents.categories import CATEGORY_IDS, mask_from_categories
from maild.residents.links import Links, new_link_key
from maild.residents.subscribers import revive
from maild.store.db import Database
from maild.store.models import ACTIVE, PENDING, SUSPENDED, Subscriber, SubscriberArea
from tests.configs import make_config
from tests.databases import UNUSABLE_DATABASES, unusable_database
from tests.smtpsink import SmtpSink
from tests.test_smtp_inbound import BLANK, KEY, Harness, run

CORPUS = Path(__file__).parent / "corpus" / "bounces"
JST = ZoneInfo("Asia/Tokyo")
ALL_CATEGORIES = mask_from_categories(CATEGORY_IDS)


def jst(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A moment in December 2026, Japanese time (7 December is a Monday)."""
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=JST)


def add_subscriber(db: Database, address: str, status: str = ACTIVE, score: int = 0) -> int:
    now = jst(1, 9)
    with db.transaction() as session:
        subscriber = Subscriber(
            address=address,
            status=status,
            category_mask=ALL_CATEGORIES,
            link_key=new_link_key(),
            created_at=now,
            updated_at=now,
            activated_at=None if status == PENDING else now,
            bounce_score=score,
            areas=[SubscriberArea(area_id="all")],
        )
        session.add(subscriber)
        session.flush()
        return subscriber.id


def subscriber(db: Database, subscriber_id: int) -> Subscriber | None:
    with db.transaction() as session:
        return session.get(Subscriber, subscriber_id)


def state(db: Database, subscriber_id: int) -> tuple[str, int]:
    found = subscriber(db, subscriber_id)
    assert found is not None
    return found.status, found.bounce_score


def postfix_dsn(
    recipient: str,
    verp: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str | None = None,
    original_headers: str = "",
    more_recipients: str = "",
) -> bytes:
    """An RFC 3464 report as Postfix writes it, returned to ``verp``.

    ``more_recipients``: further per-recipient field groups, each after a blank line.
    """
    if diagnostic is None:
        diagnostic = f"smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown"
    boundary = "7C1D2E3F4A.1797000000/relay.mail.example.jp"
    return f"""\
Return-Path: <>
Date: Mon,  7 Dec 2026 10:00:02 +0900 (JST)
From: MAILER-DAEMON@relay.mail.example.jp (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Message-Id: <20261207010002.8D2E3F4A@relay.mail.example.jp>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.mail.example.jp.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<{recipient}>: host mx.example.ne.jp[198.51.100.7] said: {diagnostic[6:]}

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.mail.example.jp
X-Postfix-Queue-ID: 7C1D2E3F4A
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: Mon,  7 Dec 2026 10:00:01 +0900 (JST)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.ne.jp
Diagnostic-Code: {diagnostic}
{more_recipients}
--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original_headers}
--{boundary}--
""".encode()


# --- reading bounces --------------------------------------------------------------------

# The recipient each sample names; the file name's prefix says what it is:
# permanent (counts), policy (permanent, about us: does not count), temporary, none.
RECIPIENTS = {
    "none__dsn-relayed.eml": None,
    "none__vacation-reply.eml": None,
    "permanent__au-ezweb-plain.eml": "jiro.kato@ezweb.ne.jp",
    "permanent__exim-plain.eml": "daisuke@example.com",
    "permanent__postfix-dsn-expired-4.4.1-connect-timeout.eml": "ken.ito@example.ne.jp",
    "permanent__postfix-dsn-expired-4.4.7-suspended.eml": "ken.ito@example.ne.jp",
    "permanent__postfix-dsn-docomo-unknown-user.eml": "taro.yamada@docomo.ne.jp",
    "permanent__postfix-dsn-gmail-5.1.1.eml": "kenji.watanabe.sendai@gmail.com",
    "permanent__qmail-plain.eml": "shota@example.net",
    "permanent__sendmail-docomo-plain.eml": "sakura..chan.@docomo.ne.jp",
    "permanent__sendmail-dsn-docomo-5.2.0-filter.eml": "momo-1234@docomo.ne.jp",
    "policy__postfix-dsn-gmail-5.7.26-dmarc.eml": "akiko.tanaka@gmail.com",
    "temporary__au-kddi-mailbox-full.eml": "mika-0618@ezweb.ne.jp",
    "temporary__exchange-dsn-5.2.2-quota.eml": "ichiro.suzuki@example.co.jp",
    "temporary__gmail-delay-warning.eml": "naoko@example.org",
    "temporary__postfix-dsn-delayed.eml": "hanako@i.softbank.jp",
    "temporary__postfix-dsn-expired-4.2.2-mailbox-full.eml": "yuki.sato@example.ne.jp",
}
VERDICTS = {
    "permanent": (True, True),
    "policy": (True, False),
    "temporary": (False, False),
    "none": (None, False),
}


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(RECIPIENTS)


@pytest.mark.parametrize("name", sorted(RECIPIENTS))
def test_corpus_is_classified(name: str) -> None:
    result = classify((CORPUS / name).read_bytes())
    permanent, counts = VERDICTS[name.split("__")[0]]
    assert (result.permanent, result.counts) == (permanent, counts), result
    recipient = RECIPIENTS[name]
    if recipient is None:
        assert result.recipients == frozenset()
    else:
        assert recipient in result.recipients
        # Whatever the reason line quotes, it never holds the address itself.
        assert recipient not in result.reason and result.reason


def test_japanese_carrier_plain_bounces_are_read_past_flufl_bounce() -> None:
    # flufl.bounce knows neither format; these are what our own reading adds.
    ezweb = classify((CORPUS / "permanent__au-ezweb-plain.eml").read_bytes())
    assert "550 user unknown" in ezweb.reason
    kddi = classify((CORPUS / "temporary__au-kddi-mailbox-full.eml").read_bytes())
    assert kddi.reason == "As their mailbox is full."


def test_the_returned_original_is_not_read_as_part_of_the_notice() -> None:
    data = (
        b"From: MAILER-DAEMON@mx.example.ne.jp\nSubject: Warning: could not send message\n\n"
        b"Your message has been delayed and will be retried.\n\n"
        b"   ----- Original message follows -----\n\n"
        b"Subject: test\n\nQuoted by the resident: 550 Unknown user\n"
    )
    assert classify(data).permanent is False
    # Without the marker the quoted line would be read as the failure.
    assert classify(data.replace(b"Original message follows", b"")).permanent is True


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "permanent", "counts"),
    [
        ("failed", "5.1.1", None, True, True),
        ("failed", "5.0.0", "smtp; 550 Unknown user x@docomo.ne.jp", True, True),
        ("Failed (user unknown)", "5.1.1 (bad mailbox)", None, True, True),
        ("error", "5.1.1", None, True, True),  # OpenSMTPD's non-standard Action
        ("failed", "", "smtp; 550 no such user", True, True),
        ("failed", "", "smtp; 451 try later", True, True),  # failed is final, 4xx or not
        ("failed", "", "", True, True),  # RFC 3464 §2.3.3: failed is final
        ("failed", "4.4.7", "X-Postfix; delivery time expired", True, True),  # expired in the queue
        ("failed", "4.7.1", "smtp; 451 4.7.1 greylisted", True, False),  # about us: not counted
        ("failed", "5.2.2", "smtp; 552 5.2.2 over quota", False, False),
        ("failed", "5.0.0", "smtp; 552 Mailbox full", False, False),
        ("failed", "5.7.1", "smtp; 554 5.7.1 Relay access denied", True, False),
        ("delayed", "4.2.2", "smtp; 452 4.2.2 Mailbox full", False, False),
        ("delayed", "5.1.1", None, False, False),  # delayed is never final
        ("delivered", "2.0.0", "smtp; 250 2.0.0 Ok", None, False),
        ("expanded", "2.0.0", "smtp; 250 2.0.0 Ok", None, False),
    ],
)
def test_dsn_fields_decide(
    action: str, status: str, diagnostic: str | None, permanent: bool | None, counts: bool
) -> None:
    data = postfix_dsn(
        "taro@docomo.ne.jp",
        "bounce+x@mail.example.jp",
        action=action,
        status=status,
        diagnostic=diagnostic,
    )
    result = classify(data)
    assert (result.permanent, result.counts) == (permanent, counts), result


def test_dsn_with_several_recipients_is_permanent_if_any_failed() -> None:
    data = postfix_dsn(
        "a@example.jp",
        "bounce+x@mail.example.jp",
        action="delayed",
        status="4.4.1",
        more_recipients="\nFinal-Recipient: rfc822; b@example.jp\nAction: failed\nStatus: 5.1.1\n",
    )
    result = classify(data)
    assert result.permanent is True and result.recipients == frozenset({"b@example.jp"})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage \x80\x81",
        b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status"
        b"\nContent-Transfer-Encoding: base64\n\n!!!not base64!!!\n--x--\n",
        b"Content-Type: multipart/report; boundary=\n\nno parts at all",
        b"Subject: =?bogus-charset?q?x?=\nFrom: =?utf-8?b?broken\n\n550 Unknown user",
    ],
)
def test_malformed_mail_is_not_a_failure_and_does_not_raise(data: bytes) -> None:
    assert classify(data).permanent is None


def test_base64_encoded_delivery_status_is_read() -> None:
    import base64

    report = b"Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; a@example.jp\nAction: failed\n"
    report += b"Status: 5.1.1\n"
    data = (
        b"From: MAILER-DAEMON@mx.example\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
        b"Content-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(report) + b"--b--\n"
    )
    result = classify(data)
    assert result.permanent is True and result.status == "5.1.1"


def test_global_delivery_status_is_read() -> None:
    # RFC 6533: UTF-8 in the report, which the email package parses like message/rfc822.
    data = (
        "From: MAILER-DAEMON@mx.example.jp\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=global-delivery-status; boundary=b\n\n"
        "--b\nContent-Type: text/plain\n\nfailed\n"
        "--b\nContent-Type: message/global-delivery-status\n\n"
        "Reporting-MTA: dns; mx.example.jp\n\n"
        "Final-Recipient: utf-8; 太郎@example.jp\nAction: failed\nStatus: 5.1.1\n--b--\n"
    ).encode()
    result = classify(data)
    assert (result.permanent, result.status) == (True, "5.1.1")
    assert result.recipients == frozenset({"太郎@example.jp"})


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (PermanentFailure(550, "5.1.1 <taro@docomo.ne.jp>: User unknown", stage="rcpt"), True),
        (PermanentFailure(550, "Unknown user taro@docomo.ne.jp", stage="rcpt"), True),
        (PermanentFailure(550, "Unknown user taro@docomo.ne.jp", stage="data"), True),
        (PermanentFailure(553, "5.1.3 Bad recipient address syntax", stage="rcpt"), True),
        (PermanentFailure(550, "5.7.1 Sender rejected", stage="mail"), False),
        (PermanentFailure(554, "5.7.1 Relay access denied", stage="rcpt"), False),
        (PermanentFailure(550, "5.7.26 DMARC policy", stage="data"), False),
        (PermanentFailure(552, "5.2.2 Mailbox full", stage="rcpt"), False),
        (PermanentFailure(552, "Mailbox full", stage="data"), False),
        (PermanentFailure(None, "subscriber no longer active", stage="rcpt"), False),
        (TemporaryFailure(450, "4.2.1 Try later", stage="rcpt"), False),
        (TemporaryFailure(None, "Connection refused", stage="connect"), False),
    ],
)
def test_relay_refusals_that_count(error: DeliveryError, counts: bool) -> None:
    assert relay_failure_counts(error) is counts


# --- the score ------------------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Database, FakeClock, Bounces]]:
    config = make_config(tmp_path)
    db = Database(config.database_url)
    db.upgrade()
    clock = FakeClock(jst(7, 10))
    yield db, clock, Bounces.from_config(config, db, clock)
    db.dispose()


def test_one_point_a_day_and_suspension_on_the_fifth_separate_day(
    rig: tuple[Database, FakeClock, Bounces],
) -> None:
    db, clock, bounces = rig
    taro = add_subscriber(db, "taro@docomo.ne.jp")
    outcomes = []
    for _ in range(4):
        outcomes.append(bounces.record_permanent(taro, "550 Unknown user"))
        clock.advance(hours=2)
        outcomes.append(bounces.record_permanent(taro, "550 Unknown user"))
        assert state(db, taro)[0] == ACTIVE
        clock.advance(days=1)
    assert outcomes == [SCORED, ALREADY_TODAY] * 4
    assert state(db, taro) == (ACTIVE, 4)
    assert bounces.record_permanent(taro, "550 Unknown user") == SUSPENDED_NOW
    # Suspended, never deleted (docs/mail-delivery.md); later bounces change nothing.
    assert state(db, taro) == (SUSPENDED, 5)
    clock.advance(days=1)
    assert bounces.record_permanent(taro, "550 Unknown user") == NOT_ACTIVE
    assert state(db, taro) == (SUSPENDED, 5)


def test_the_day_is_the_service_time_zone_day(rig: tuple[Database, FakeClock, Bounces]) -> None:
    db, clock, bounces = rig
    taro = add_subscriber(db, "taro@docomo.ne.jp")
    # 08:45 and 09:15 in Tokyo are two UTC days but one Japanese one.
    clock.set(jst(8, 8, 45))
    assert bounces.record_permanent(taro, "x") == SCORED
    clock.set(jst(8, 9, 15))
    assert bounces.record_permanent(taro, "x") == ALREADY_TODAY
    # 23:50 and 00:10 are minutes apart but two days.
    clock.set(jst(8, 23, 50))
    assert bounces.record_permanent(taro, "x") == ALREADY_TODAY
    clock.set(jst(9, 0, 10))
    assert bounces.record_permanent(taro, "x") == SCORED
    assert state(db, taro) == (ACTIVE, 2)


def test_a_week_without_bounces_starts_the_score_again(
    rig: tuple[Database, FakeClock, Bounces],
) -> None:
    db, clock, bounces = rig
    taro = add_subscriber(db, "taro@docomo.ne.jp")
    hanako = add_subscriber(db, "hanako@ezweb.ne.jp")
    for _ in range(3):
        bounces.record_permanent(taro, "x")
        bounces.record_permanent(hanako, "x")
        clock.advance(days=1)
    # Last bounces on the 9th. Seven days later is still "within a week" (weekly alerts) …
    clock.set(jst(16, 17, 0))
    bounces.record_permanent(hanako, "x")
    assert state(db, hanako) == (ACTIVE, 4)
    # … eight days later is not.
    clock.set(jst(17, 9, 0))
    bounces.record_permanent(taro, "x")
    assert state(db, taro) == (ACTIVE, 1)


def test_threshold_comes_from_the_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, bounces={"threshold": 2})
    db = Database(config.database_url)
    db.upgrade()
    try:
        clock = FakeClock(jst(7, 10))
        bounces = Bounces.from_config(config, db, clock)
        taro = add_subscriber(db, "taro@docomo.ne.jp")
        assert bounces.record_permanent(taro, "x") == SCORED
        clock.advance(days=1)
        assert bounces.record_permanent(taro, "x") == SUSPENDED_NOW
    finally:
        db.dispose()


def test_pending_and_unknown_subscribers_are_not_scored(
    rig: tuple[Database, FakeClock, Bounces],
) -> None:
    db, clock, bounces = rig
    pending = add_subscriber(db, "new@docomo.ne.jp", status=PENDING)
    assert bounces.record_permanent(pending, "x") == NOT_ACTIVE
    assert state(db, pending) == (PENDING, 0)
    assert bounces.record_permanent(9999, "x") == UNKNOWN_SUBSCRIBER


def test_score_joins_the_callers_transaction(rig: tuple[Database, FakeClock, Bounces]) -> None:
    db, clock, bounces = rig
    taro = add_subscriber(db, "taro@docomo.ne.jp")

    class Abort(Exception):
        pass

    with pytest.raises(Abort), db.transaction() as session:
        assert bounces.score(session, taro, "550 from the relay") == SCORED
        raise Abort
    assert state(db, taro) == (ACTIVE, 0)
    with db.transaction() as session:
        bounces.score(session, taro, "550 from the relay")
    assert state(db, taro) == (ACTIVE, 1)


def test_revive(rig: tuple[Database, FakeClock, Bounces]) -> None:
    db, clock, bounces = rig
    suspended = add_subscriber(db, "a@docomo.ne.jp", status=SUSPENDED, score=5)
    scored = add_subscriber(db, "b@docomo.ne.jp", score=3)
    pending = add_subscriber(db, "c@docomo.ne.jp", status=PENDING)
    now = clock.now()
    with db.transaction() as session:
        results = [
            revive(session.get_one(Subscriber, i), now) for i in (suspended, scored, pending)
        ]
    assert results == [True, False, False]
    assert [state(db, i) for i in (suspended, scored, pending)] == [
        (ACTIVE, 0),
        (ACTIVE, 0),
        (PENDING, 0),
    ]
    revived = subscriber(db, suspended)
    assert revived is not None and revived.last_bounce_at is None
    assert revived.updated_at == now
    # Revived, the count starts over: one bounce does not suspend them again.
    assert bounces.record_permanent(suspended, "x") == SCORED


# --- over SMTP ---------------------------------------------------------------------------------


def test_dsn_to_the_verp_address_scores_once_a_day(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro@docomo.ne.jp")
        verp = h.verp_address(taro)
        dsn = postfix_dsn("taro@docomo.ne.jp", verp)
        assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 250]
        assert state(h.db, taro) == (ACTIVE, 1)
        assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 250]
        assert state(h.db, taro) == (ACTIVE, 1)
        assert h.outcomes == ["bounce:scored", "bounce:already-today"]
        assert h.rows() == []  # a bounce is never answered

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("file", "outcome"),
    [
        ("temporary__postfix-dsn-delayed.eml", "bounce:temporary"),
        ("temporary__postfix-dsn-expired-4.2.2-mailbox-full.eml", "bounce:temporary"),
        ("temporary__au-kddi-mailbox-full.eml", "bounce:temporary"),
        ("policy__postfix-dsn-gmail-5.7.26-dmarc.eml", "bounce:not-counted"),
        ("none__vacation-reply.eml", "bounce:not-a-failure"),
        ("none__dsn-relayed.eml", "bounce:not-a-failure"),
    ],
)
def test_mail_that_does_not_count_is_taken_and_changes_nothing(
    tmp_path: Path, file: str, outcome: str
) -> None:
    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro@docomo.ne.jp", score=2)
        verp = h.verp_address(taro)
        # A vacation program answers the envelope sender, with its own address as sender.
        sender = "<hanako.yamada@example.ne.jp>" if "vacation" in file else "<>"
        data = (CORPUS / file).read_bytes()
        assert await h.send(sender, data, rcpt=f"<{verp}>") == [250, 250, 250]
        assert state(h.db, taro) == (ACTIVE, 2)
        assert h.outcomes == [outcome]
        assert h.rows() == []

    run(tmp_path, scenario)


def test_docomo_and_au_plain_bounces_count(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        for file, address in (
            ("permanent__sendmail-docomo-plain.eml", "sakura..chan.@docomo.ne.jp"),
            ("permanent__au-ezweb-plain.eml", "jiro.kato@ezweb.ne.jp"),
        ):
            who = add_subscriber(h.db, address)
            verp = h.verp_address(who)
            assert await h.send("<>", (CORPUS / file).read_bytes(), rcpt=f"<{verp}>") == [
                250,
                250,
                250,
            ]
            assert state(h.db, who) == (ACTIVE, 1)
        assert h.outcomes == ["bounce:scored"] * 2

    run(tmp_path, scenario)


def test_bare_bounce_address_and_unknown_subscribers_are_taken(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        dsn = postfix_dsn("typo@docomo.ne.jp", "bounce@mail.example.jp")
        assert await h.send("<>", dsn, rcpt="<bounce@mail.example.jp>") == [250, 250, 250]
        erased = h.verp_address(424242)
        assert await h.send("<>", dsn, rcpt=f"<{erased}>") == [250, 250, 250]
        assert h.outcomes == ["bounce:unattributed", "bounce:unknown-subscriber"]

    run(tmp_path, scenario)


def test_registration_and_bounce_recipients_in_one_message(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro@docomo.ne.jp", score=1)
        verp = h.verp_address(taro)
        client = await h.client()
        assert (await client.command("MAIL FROM:<jiro@docomo.ne.jp>"))[0] == 250
        assert (await client.command("RCPT TO:<entry@mail.example.jp>"))[0] == 250
        assert (await client.command(f"RCPT TO:<{verp}>"))[0] == 250
        assert (await client.data(BLANK))[0] == 250
        await client.close()
        # Each recipient got its own treatment: jiro an answer; for taro the blank mail
        # is no bounce, so their score stays.
        assert [r.recipient for r in h.rows()] == ["jiro@docomo.ne.jp"]
        assert state(h.db, taro) == (ACTIVE, 1)
        assert h.outcomes == ["bounce:not-a-failure", "register"]

    run(tmp_path, scenario)


@pytest.mark.parametrize("unusable", UNUSABLE_DATABASES)
def test_database_failure_is_451_and_the_retry_counts(tmp_path: Path, unusable: str) -> None:
    url = unusable_database(unusable, tmp_path)

    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro@docomo.ne.jp")
        verp = h.verp_address(taro)
        dsn = postfix_dsn("taro@docomo.ne.jp", verp)
        h.bounces.db = Database(url)
        try:
            assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 451]
        finally:
            h.bounces.db.dispose()
            h.bounces.db = h.db
        assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 250]
        assert state(h.db, taro) == (ACTIVE, 1)
        assert h.outcomes == ["error", "bounce:scored"]

    run(tmp_path, scenario)


def test_logs_hold_neither_the_address_nor_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, str] = {}

    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro.yamada@docomo.ne.jp")
        verp = h.verp_address(taro)
        seen["token"] = verp.split("+")[1].split("@")[0]
        dsn = postfix_dsn("taro.yamada@docomo.ne.jp", verp)
        await h.send("<>", dsn, rcpt=f"<{verp}>")
        await h.send("<>", dsn, rcpt=f"<bounce+{seen['token'][:-2]}xx@mail.example.jp>")
        # A report naming someone else is logged as such, masked.
        await h.send("<>", postfix_dsn("hanako@ezweb.ne.jp", verp), rcpt=f"<{verp}>")

    with caplog.at_level(logging.INFO, logger="maild"):
        run(tmp_path, scenario)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("maild")]
    everything = "\n".join(lines)
    assert "taro.yamada@" not in everything and "hanako@" not in everything
    assert seen["token"] not in everything and seen["token"][:-2] not in everything
    assert any("score 1 of 5" in line and "t***@docomo.ne.jp" in line for line in lines)
    assert any("bad token" in line for line in lines)
    assert any("h***@ezweb.ne.jp" in line for line in lines)


# --- the whole story: an alert, its bounces, the next alert ------------------------------------


def test_bounces_of_alerts_suspend_after_five_days_and_the_next_alert_skips(
    tmp_path: Path, sink: SmtpSink
) -> None:
    async def scenario(h: Harness) -> None:
        h.clock.set(jst(7, 10))
        areas = AreaMap.load(h.config.areas.file)
        rules = WindowRules.from_config(h.config.window, h.config.service.timezone)
        alerts = Alerts(h.config, h.db, areas, h.clock, rules)
        relay = open_relay(h.config.relay, h.config.smtp.hostname)
        fanout = FanoutSender(
            h.config, h.db, alerts, relay, Links(KEY, (), h.clock), h.verp, h.clock
        )
        dead = add_subscriber(h.db, "sakura..chan.@docomo.ne.jp")
        alive = add_subscriber(h.db, "hanako@ezweb.ne.jp")

        async def send_alert(number: int) -> dict[str, str]:
            """Send one urgent alert to everyone; returns recipient → envelope sender."""
            before = len(sink.envelopes)
            draft = AlertDraft(
                subject=f"不審者（声かけ）事案の発生 {number}",
                area_ids=("all",),
                category="child-women",
                urgent=True,
                send_after=None,
                sender=None,
                body="12月7日午後4時ころ、路上で児童が声をかけられました。",
                encoding="utf-8",
            )
            alert_id = alerts.intake(draft, Source(None, "operator"))
            count = alerts.release(alert_id)
            assert count is not None
            if count:
                assert await fanout.send_batch()
                await sink.wait_for_async(before + count)
            sent = sink.envelopes[before:]
            return {e.rcpt_tos[0].replace('"', ""): e.mail_from for e in sent}

        try:
            for day in range(5):
                sent = await send_alert(day)
                assert set(sent) == {"sakura..chan.@docomo.ne.jp", "hanako@ezweb.ne.jp"}
                verp = sent["sakura..chan.@docomo.ne.jp"]
                assert re.fullmatch(r"bounce\+[\w.-]+@mail\.example\.jp", verp)
                dsn = postfix_dsn(
                    '"sakura..chan."@docomo.ne.jp',
                    verp,
                    status="5.0.0",
                    diagnostic="smtp; 550 Unknown user sakura..chan.@docomo.ne.jp",
                )
                assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 250]
                if day == 0:
                    # The relay sent it again: still one point today.
                    assert await h.send("<>", dsn, rcpt=f"<{verp}>") == [250, 250, 250]
                assert state(h.db, dead) == (SUSPENDED if day == 4 else ACTIVE, day + 1)
                h.clock.advance(days=1)
            assert h.outcomes == ["bounce:scored", "bounce:already-today"] + [
                "bounce:scored"
            ] * 3 + ["bounce:suspended"]
            # Suspended, not deleted; the next alert reaches only the live address.
            assert await send_alert(5) == {"hanako@ezweb.ne.jp": sent["hanako@ezweb.ne.jp"]}
            assert state(h.db, alive) == (ACTIVE, 0)
            assert subscriber(h.db, dead) is not None
        finally:
            await relay.close()

    run(tmp_path, scenario, relay={"url": sink.url})


def test_concurrent_bounces_for_one_subscriber_score_once(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        taro = add_subscriber(h.db, "taro@docomo.ne.jp")
        verp = h.verp_address(taro)
        dsn = postfix_dsn("taro@docomo.ne.jp", verp)
        results = await asyncio.gather(*(h.send("<>", dsn, rcpt=f"<{verp}>") for _ in range(5)))
        assert results == [[250, 250, 250]] * 5
        # On SQLite two of them may both see the morning's score and both say "scored";
        # either way they write the same one point.
        assert state(h.db, taro) == (ACTIVE, 1)
        assert set(h.outcomes) <= {"bounce:scored", "bounce:already-today"}
        assert "bounce:scored" in h.outcomes

    run(tmp_path, scenario)
