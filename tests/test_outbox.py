"""The outbox sender against a real SMTP sink: sent, deferred with backoff, failed for good.

Rows are queued the way the registration path queues them (answer_many), sent with
:meth:`OutboxSender.send_due` through a real :class:`SmtpRelay`, and read back from
the SQLite file. Time is a FakeClock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from maild.common.clock import FakeClock
from maild.mail.outbox import FIRST_RETRY, OutboxSender
from maild.mail.relay import open_relay
from maild.residents.registration import Request
from maild.service.services import Services, build_services
from maild.store.models import FAILED, QUEUED, SENT, OutboxMail
from tests.configs import make_config
from tests.smtpsink import SmtpSink

RESIDENTS = ["taro@docomo.ne.jp", "hanako@ezweb.ne.jp", "jiro@i.softbank.jp"]


def rows(services: Services) -> dict[str, OutboxMail]:
    with services.db.transaction() as session:
        return {r.recipient: r for r in session.scalars(select(OutboxMail))}


def send_due(services: Services, sink: SmtpSink, clock: FakeClock) -> int:
    async def main() -> int:
        config = dataclasses.replace(services.config.relay, connections=2)
        relay = open_relay(config, "mail.example.jp")
        try:
            return await OutboxSender(services.db, relay, clock, 2, node="node-a").send_due()
        finally:
            await relay.close()

    return asyncio.run(main())


def test_a_batch_records_each_mail_and_retries_the_deferred_one(
    tmp_path: Path, sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    services = build_services(make_config(tmp_path, relay={"url": sink.url}), clock)
    try:
        services.registrations.answer_many([Request(a) for a in RESIDENTS])
        sink.fail_temporarily("hanako@ezweb.ne.jp")
        sink.fail_permanently("jiro@i.softbank.jp")
        sent_at = clock.now()
        with caplog.at_level(logging.INFO, logger="maild.delivery"):
            assert send_due(services, sink, clock) == 3
        found = rows(services)
        taro, hanako, jiro = (found[a] for a in RESIDENTS)
        assert (taro.status, taro.finished_at, taro.last_error) == (SENT, sent_at, None)
        assert (hanako.status, hanako.attempts) == (QUEUED, 1)
        assert hanako.next_attempt_at == sent_at + FIRST_RETRY
        assert hanako.last_error is not None and hanako.last_error.startswith("451")
        assert (jiro.status, jiro.finished_at) == (FAILED, sent_at)
        assert [e.rcpt_tos for e in sink.envelopes] == [("taro@docomo.ne.jp",)]
        # One line for the mails sent, each there by id and masked recipient.
        [line] = [r.getMessage() for r in caplog.records if "sent:" in r.getMessage()]
        assert line == f"outbox: 1 sent: {taro.id} to t***@docomo.ne.jp"
        everything = "\n".join(r.getMessage() for r in caplog.records)
        assert not any(a in everything for a in RESIDENTS)

        # Not due yet: nothing goes out; once due (and the relay takes it), it is sent.
        sink.accept()
        assert send_due(services, sink, clock) == 0
        clock.advance(seconds=FIRST_RETRY.total_seconds())
        assert send_due(services, sink, clock) == 1
        hanako = rows(services)["hanako@ezweb.ne.jp"]
        assert (hanako.status, hanako.attempts) == (SENT, 1)
        assert hanako.finished_at == sent_at + FIRST_RETRY
        assert rows(services)["jiro@i.softbank.jp"].status == FAILED  # never tried again
        assert len(sink.envelopes) == 2
    finally:
        services.db.dispose()


def test_a_mail_the_relay_keeps_refusing_is_given_up_after_a_day(
    tmp_path: Path, sink: SmtpSink
) -> None:
    clock = FakeClock()
    services = build_services(make_config(tmp_path, relay={"url": sink.url}), clock)
    try:
        services.registrations.answer_many([Request("taro@docomo.ne.jp")])
        sink.fail_temporarily()
        clock.advance(hours=24, seconds=1)
        assert send_due(services, sink, clock) == 1
        taro = rows(services)["taro@docomo.ne.jp"]
        assert taro.status == FAILED
        assert taro.finished_at == clock.now()
        assert clock.now() - taro.created_at > dt.timedelta(hours=24)
    finally:
        services.db.dispose()
