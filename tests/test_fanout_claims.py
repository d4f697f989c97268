"""The fan-out's claims: the next batch is claimed while one goes out, and neither a pause
nor a stop leaves a claim behind for other nodes to wait out."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from sqlalchemy import event, func, select

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.delivery.claims import BATCH, SentRecords
from maild.delivery.fanout import FanoutSender
from maild.mail.relay import open_relay
from maild.service.services import Services, build_services
from maild.store.models import Delivery
from tests.configs import make_config
from tests.databases import checked_out, requires_postgresql
from tests.smtpsink import SmtpSink
from tests.subscribers import add_active

URGENT = AlertDraft("件名", ("aoba",), "other", True, None, None, "本文", "utf-8")
NOON = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)  # a Monday, 12:00 in Tokyo
RESIDENTS = 3 * BATCH


def site(tmp_path: Path, sink: SmtpSink, residents: int = RESIDENTS) -> Services:
    """An urgent alert released to ``residents`` subscribers, all its rows written."""
    s = build_services(make_config(tmp_path, relay={"url": sink.url}), FakeClock(NOON))
    add_active(s, residents, NOON, prefix="r")
    alert_id = s.alerts.intake(URGENT, Source(None, "sato"))
    s.alerts.release(alert_id)
    while s.alerts.fill():
        pass
    return s


def claimed(s: Services) -> int:
    with s.db.transaction() as session:
        count = session.scalar(
            select(func.count()).where(
                Delivery.claimed_until.is_not(None), Delivery.status != "sent"
            )
        )
    return count or 0


def sent(s: Services) -> int:
    with s.db.transaction() as session:
        return session.scalar(select(func.count()).where(Delivery.status == "sent")) or 0


def test_the_next_batch_is_claimed_while_one_goes_out_and_freed_at_a_stop(
    tmp_path: Path, sink: SmtpSink
) -> None:
    s = site(tmp_path, sink)
    sink.accept()

    async def scenario() -> tuple[int, int]:
        relay = open_relay(s.config.relay, s.config.smtp.hostname)
        fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, s.clock)
        try:
            assert await fanout.send_batch()
            await asyncio.sleep(0.5)  # the claim ahead runs in a thread
            ahead = claimed(s)
            stopping = asyncio.Event()
            stopping.set()  # run() sends nothing more: it only lets go of what it holds
            await fanout.run(stopping)
            return ahead, claimed(s)
        finally:
            await relay.close()

    ahead, after_stop = asyncio.run(scenario())
    assert sent(s) == BATCH
    assert ahead == BATCH  # the next batch was claimed before it was asked for
    assert after_stop == 0  # and is free for any node once this one stops
    s.db.dispose()


def test_a_relay_outage_frees_the_batch_claimed_ahead(tmp_path: Path, sink: SmtpSink) -> None:
    s = site(tmp_path, sink)
    s.config = make_config(tmp_path, relay={"url": "smtp://127.0.0.1:1"})  # nobody listens

    async def scenario() -> int:
        relay = open_relay(s.config.relay, s.config.smtp.hostname)
        fanout = FanoutSender(s.config, s.db, s.alerts, relay, s.links, s.verp, s.clock)
        try:
            assert await fanout.send_batch()  # every message fails to connect: paused
            assert not await fanout.send_batch()  # paused: nothing sent, nothing kept
            return claimed(s)
        finally:
            await relay.close()

    assert asyncio.run(scenario()) == 0
    assert sent(s) == 0
    s.db.dispose()


@requires_postgresql  # SQLite's record is the sent journal (tests/test_journal.py)
def test_sent_records_mark_exactly_the_groups_given_on_one_held_connection(
    tmp_path: Path, sink: SmtpSink
) -> None:
    s = site(tmp_path, sink)
    with s.db.transaction() as session:
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    checkouts: list[object] = []
    event.listen(s.db.engine, "checkout", lambda *args: checkouts.append(args))
    groups = [ids[:1], ids[5:37], ids[100:103], ids[5:8]]  # sizes 1, 32, 3, and 3 again

    async def scenario() -> None:
        records = SentRecords(s.db)
        try:
            for group in groups:
                await records.write(group)
            assert len(checkouts) == 1  # held from the first group on
        finally:
            await records.close()

    asyncio.run(scenario())
    assert checked_out(s.db) == 0  # and given back
    with s.db.transaction() as session:
        marked = {i: status for i, status in session.execute(select(Delivery.id, Delivery.status))}
    assert {i for i, status in marked.items() if status == "sent"} == {
        i for group in groups for i in group
    }
    assert set(marked.values()) == {"sent", "queued"}
