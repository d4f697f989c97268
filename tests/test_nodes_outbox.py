"""Several nodes on one database: the outbox's claims and the one answer per address.

Two "nodes" are two sets of the daemon's objects (engines, senders, registrations) on
one database, in this process; the relay is a real SMTP sink.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from maild.common.clock import FakeClock
from maild.common.config import load_config
from maild.mail.outbox import LEASE, OutboxSender
from maild.mail.relay import Relay, open_relay
from maild.residents.registration import SENT_REGISTER, THROTTLED, Request
from maild.service.services import Services, build_services
from maild.store.models import QUEUED, SENT, OutboxMail
from tests.nodeconfigs import node_config, share_key, shared_database
from tests.smtpsink import SmtpSink

START = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)


def two_nodes(tmp_path: Path, url: str, sink: SmtpSink, clock: FakeClock) -> list[Services]:
    a = build_services(load_config(node_config(tmp_path, "a", url, relay={"url": sink.url})), clock)
    share_key(tmp_path, "a", "b")
    b = build_services(load_config(node_config(tmp_path, "b", url, relay={"url": sink.url})), clock)
    return [a, b]


def relay_for(services: Services) -> Relay:
    return open_relay(dataclasses.replace(services.config.relay, connections=2), "mail.example.jp")


def sender(services: Services, relay: Relay, **kwargs: float) -> OutboxSender:
    clock = services.clock
    return OutboxSender(
        services.db, relay, clock, 2, node=services.config.service.node_name, **kwargs
    )


def statuses(services: Services) -> Counter[str]:
    with services.db.transaction() as session:
        return Counter(session.scalars(select(OutboxMail.status)))


def received(sink: SmtpSink) -> Counter[str]:
    return Counter(rcpt for envelope in sink.envelopes for rcpt in envelope.rcpt_tos)


# --- outbox claims ----------------------------------------------------------------------


def test_two_nodes_send_every_mail_once(
    postgresql: Callable[[], str], tmp_path: Path, sink: SmtpSink
) -> None:
    nodes = two_nodes(tmp_path, postgresql(), sink, FakeClock(START))
    addresses = [f"resident{n}@example.jp" for n in range(150)]  # three batches' worth
    nodes[0].registrations.answer_many([Request(a) for a in addresses])

    async def send_all(services: Services) -> int:
        relay = relay_for(services)
        try:
            outbox, tried = sender(services, relay), 0
            while sent := await outbox.send_due():
                tried += sent
            return tried
        finally:
            await relay.close()

    async def both() -> list[int]:
        return list(await asyncio.gather(*(send_all(n) for n in nodes)))

    try:
        tried = asyncio.run(both())
        assert sum(tried) == len(addresses)
        assert all(tried), "both nodes took a share"  # SKIP LOCKED: neither waited it out
        assert received(sink) == Counter(addresses)
        assert statuses(nodes[0]) == Counter({SENT: len(addresses)})
    finally:
        for services in nodes:
            services.db.dispose()


def test_a_dead_nodes_mails_go_out_from_another_once_its_lease_runs_out(
    tmp_path: Path, sink: SmtpSink
) -> None:
    clock = FakeClock(START)
    nodes = two_nodes(tmp_path, shared_database(tmp_path), sink, clock)
    addresses = ["taro@docomo.ne.jp", "hanako@ezweb.ne.jp"]
    nodes[0].registrations.answer_many([Request(a) for a in addresses])

    async def main() -> None:
        relays = [relay_for(n) for n in nodes]
        try:
            # Node a claims both mails and dies while the relay has them half-way (RCPT).
            sink.hold()
            dying = asyncio.create_task(sender(nodes[0], relays[0]).send_due())
            await asyncio.to_thread(sink.wait_held, 1)
            dying.cancel()
            await asyncio.gather(dying, return_exceptions=True)
            await relays[0].close()
            sink.release()

            other = sender(nodes[1], relays[1])
            assert other.release_claims() == 0  # a's claims are not b's to free
            assert await other.send_due() == 0  # still a's, for the lease
            clock.advance(seconds=LEASE.total_seconds() - 1)
            assert await other.send_due() == 0
            clock.advance(seconds=2)
            assert await other.send_due() == 2  # the lease ran out: b sends them
        finally:
            for relay in relays:
                await relay.close()

    try:
        asyncio.run(main())
        got = received(sink)
        # Everyone once; a mail node a had handed over whole before the sink held the
        # other (a loaded machine's timing) is in flight at its death and may go again.
        assert set(got) == set(addresses) and sum(got.values()) <= len(addresses) + 1
        assert statuses(nodes[1]) == Counter({SENT: 2})
    finally:
        for services in nodes:
            services.db.dispose()


def test_a_restarted_node_frees_its_own_claims_at_once(tmp_path: Path, sink: SmtpSink) -> None:
    clock = FakeClock(START)
    nodes = two_nodes(tmp_path, shared_database(tmp_path), sink, clock)
    nodes[0].registrations.answer_blank_mail("taro@docomo.ne.jp")

    async def main() -> None:
        relay = relay_for(nodes[0])
        try:
            sink.hold()
            crashed = asyncio.create_task(sender(nodes[0], relay).send_due())
            await asyncio.to_thread(sink.wait_held, 1)
            crashed.cancel()
            await asyncio.gather(crashed, return_exceptions=True)
        finally:
            await relay.close()
            sink.release()
        relay = relay_for(nodes[0])
        try:
            again = sender(nodes[0], relay)  # node a, started again
            assert await again.send_due() == 0
            assert again.release_claims() == 1
            assert await again.send_due() == 1  # no wait for the lease
        finally:
            await relay.close()

    try:
        asyncio.run(main())
        assert received(sink) == Counter({"taro@docomo.ne.jp": 1})
    finally:
        for services in nodes:
            services.db.dispose()


def test_a_slow_batch_keeps_its_claims(tmp_path: Path, sink: SmtpSink) -> None:
    clock = FakeClock(START)
    nodes = two_nodes(tmp_path, shared_database(tmp_path), sink, clock)
    nodes[0].registrations.answer_blank_mail("taro@docomo.ne.jp")

    async def main() -> None:
        relays = [relay_for(n) for n in nodes]
        try:
            sink.hold()  # the relay takes its time
            slow = asyncio.create_task(sender(nodes[0], relays[0], renew_seconds=0.05).send_due())
            await asyncio.to_thread(sink.wait_held, 1)
            clock.advance(seconds=3 * LEASE.total_seconds())  # longer than a lease
            await asyncio.sleep(0.3)  # a few renewals
            assert await sender(nodes[1], relays[1]).send_due() == 0  # renewed: still a's
            sink.release()
            assert await slow == 1
        finally:
            for relay in relays:
                await relay.close()

    try:
        asyncio.run(main())
        assert received(sink) == Counter({"taro@docomo.ne.jp": 1})
        assert statuses(nodes[0]) == Counter({SENT: 1})
    finally:
        for services in nodes:
            services.db.dispose()


def test_a_deferred_mail_is_free_for_any_node_at_its_next_try(
    tmp_path: Path, sink: SmtpSink
) -> None:
    clock = FakeClock(START)
    nodes = two_nodes(tmp_path, shared_database(tmp_path), sink, clock)
    nodes[0].registrations.answer_blank_mail("taro@docomo.ne.jp")

    async def main() -> None:
        relays = [relay_for(n) for n in nodes]
        try:
            sink.fail_temporarily()
            assert await sender(nodes[0], relays[0]).send_due() == 1
            sink.accept()
            clock.advance(minutes=1)
            assert await sender(nodes[1], relays[1]).send_due() == 1
        finally:
            for relay in relays:
                await relay.close()

    try:
        asyncio.run(main())
        assert received(sink) == Counter({"taro@docomo.ne.jp": 1})
        with nodes[0].db.transaction() as session:
            row = session.scalars(select(OutboxMail)).one()
        assert (row.status, row.attempts, row.claimed_by) == (SENT, 1, None)
    finally:
        for services in nodes:
            services.db.dispose()


# --- one answer per address across nodes ------------------------------------------------


def test_two_nodes_answer_the_first_mail_of_a_new_address_once(
    postgresql: Callable[[], str], tmp_path: Path, sink: SmtpSink
) -> None:
    nodes = two_nodes(tmp_path, postgresql(), sink, FakeClock(START))
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def answer(services: Services, requests: list[Request], start: threading.Barrier) -> None:
        start.wait()
        try:
            outcomes.extend(str(o) for o in services.registrations.answer_many(requests))
        except BaseException as e:  # noqa: BLE001 - any escape is the failure under test
            errors.append(e)

    rounds, size = 10, 20
    try:
        for n in range(rounds):
            group = [Request(f"new{n}-{i}@example.jp") for i in range(size)]
            start = threading.Barrier(2)
            # The same new addresses in opposite orders: the inserts must not deadlock.
            threads = [
                threading.Thread(target=answer, args=(nodes[0], group, start)),
                threading.Thread(target=answer, args=(nodes[1], group[::-1], start)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert errors == []
        everyone = Counter(f"new{n}-{i}@example.jp" for n in range(rounds) for i in range(size))
        assert Counter(outcomes) == Counter(
            {SENT_REGISTER: len(everyone), THROTTLED: len(everyone)}
        )
        with nodes[0].db.transaction() as session:
            assert Counter(session.scalars(select(OutboxMail.recipient))) == everyone
            assert set(session.scalars(select(OutboxMail.status))) == {QUEUED}
    finally:
        for services in nodes:
            services.db.dispose()
