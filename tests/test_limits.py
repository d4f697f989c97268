"""The ``[limits]`` answer budget: its arithmetic under a FakeClock, its lock under real
threads, its keys in the config, and one budget shared by a real SMTP listener and the
web's ``/signup`` over one real SQLite database."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maild.common.clock import FakeClock
from maild.common.config import ConfigError, LimitsConfig
from maild.inbound.handler import InboundHandler
from maild.inbound.listener import InboundServer
from maild.residents.limits import (
    HOURLY,
    IP_RATE,
    AnswerBudget,
    Charge,
    OverBudget,
    is_trusted,
    peer_key,
)
from maild.service.services import build_services
from maild.store.models import OutboxMail
from maild.web.app import create_app
from tests.configs import ClosingClient, make_config, run_now
from tests.test_smtp_inbound import Client as SmtpClient

PEER = "198.51.100.7"


def budget(
    per_minute: int = 3, per_hour: int = 3000, trusted: tuple[str, ...] = ()
) -> AnswerBudget:
    limits = LimitsConfig(
        answers_per_ip_per_minute=per_minute,
        answers_per_hour=per_hour,
        trusted_networks=tuple(ipaddress.ip_network(n) for n in trusted),
    )
    return AnswerBudget(limits, FakeClock())


def over(b: AnswerBudget, ip: str | None) -> OverBudget:
    with pytest.raises(OverBudget) as refused:
        b.take(ip)
    return refused.value


# --- arithmetic ------------------------------------------------------------------------


def test_per_ip_limit_counts_a_sliding_minute() -> None:
    b = budget(per_minute=3)
    clock = b.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        b.take(PEER)
        clock.advance(seconds=10)
    refused = over(b, PEER)
    assert (refused.reason, refused.retry_after) == (IP_RATE, 30)
    b.take("198.51.100.8")  # another peer has its own minute
    clock.advance(seconds=30)  # the first answer is a minute old now
    b.take(PEER)
    assert b.spent(PEER) == 3 and b.spent() == 5


def test_hourly_cap_holds_for_everyone_trusted_or_not() -> None:
    b = budget(per_minute=100, per_hour=4, trusted=("203.0.113.0/24",))
    for ip in ("203.0.113.1", "203.0.113.2", PEER, None):
        b.take(ip)
    for ip in ("203.0.113.1", PEER, None):
        refused = over(b, ip)
        assert (refused.reason, refused.retry_after) == (HOURLY, 3600)
    assert isinstance(b.clock, FakeClock)
    b.clock.advance(minutes=59, seconds=59)
    assert over(b, PEER).retry_after == 1
    b.clock.advance(seconds=1)
    b.take(PEER)


def test_trusted_and_unknown_peers_skip_the_per_ip_limit() -> None:
    b = budget(per_minute=1, trusted=("203.0.113.0/24", "2001:db8::/32"))
    for ip in ("203.0.113.9", "::ffff:203.0.113.9", "2001:db8::25", None, None):
        b.take(ip)
    b.take(PEER)
    assert over(b, PEER).reason == IP_RATE
    # The same peer seen by a dual-stack listener is the same peer.
    assert over(b, "::ffff:198.51.100.7").reason == IP_RATE
    assert b.spent() == 6


def test_an_ipv6_peer_is_counted_by_its_64() -> None:
    b = budget(per_minute=2)
    b.take("2001:db8:1:2::1")
    b.take("2001:db8:1:2:ffff::99")
    assert over(b, "2001:db8:1:2::abcd").reason == IP_RATE
    b.take("2001:db8:1:3::1")  # the next /64 is another peer
    assert b.spent("2001:db8:1:2::7") == 2
    assert peer_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert peer_key("::ffff:192.0.2.1") == peer_key("192.0.2.1") == "192.0.2.1"


def test_is_trusted() -> None:
    networks = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")]
    assert is_trusted("203.0.113.200", networks)
    assert is_trusted("::ffff:203.0.113.200", networks)
    assert is_trusted("2001:db8:1::1", networks)
    assert not is_trusted("203.0.114.1", networks)
    assert not is_trusted(None, networks)
    assert not is_trusted("not an ip", networks)
    assert not is_trusted("203.0.113.1", [])


def test_refund_gives_the_answer_back_once() -> None:
    b = budget(per_minute=2)
    first = b.take(PEER)
    second = b.take(PEER)
    over(b, PEER)
    b.refund(second)
    b.refund(second)  # a second refund gives nothing more
    assert b.spent(PEER) == 1 and b.spent() == 1
    third = b.take(PEER)
    assert third is not first
    over(b, PEER)
    # A refund after the charge has left the window changes nothing either.
    assert isinstance(b.clock, FakeClock)
    b.clock.advance(hours=2)
    b.refund(first)
    assert b.spent(PEER) == 0 and b.spent() == 0


def test_charges_at_the_same_moment_are_refunded_one_by_one() -> None:
    b = budget(per_minute=5)
    charges = [b.take(PEER) for _ in range(3)]
    assert len({c.at for c in charges}) == 1  # the clock did not move
    b.refund(charges[1])
    assert b.spent(PEER) == 2
    b.refund(charges[1])  # not another charge that merely looks the same
    assert b.spent(PEER) == 2
    b.refund(charges[0])
    assert b.spent(PEER) == 1


def test_reconfigure_keeps_what_was_spent() -> None:
    b = budget(per_minute=5)
    for _ in range(3):
        b.take(PEER)
    b.reconfigure(dataclasses.replace(b.limits, answers_per_ip_per_minute=3))
    assert over(b, PEER).reason == IP_RATE
    b.reconfigure(dataclasses.replace(b.limits, answers_per_ip_per_minute=4))
    b.take(PEER)


def test_threads_together_never_overrun_the_limit() -> None:
    b = budget(per_minute=100, per_hour=150)
    taken: list[Charge] = []
    refused: list[str] = []
    start = threading.Barrier(16)

    def worker(n: int) -> None:
        start.wait()
        for _ in range(25):
            try:
                taken.append(b.take(PEER if n % 2 else f"192.0.2.{n}"))
            except OverBudget as e:
                refused.append(e.reason)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(taken) == 150 and len(refused) == 16 * 25 - 150
    assert b.spent() == 150 and b.spent(PEER) <= 100


# --- configuration -------------------------------------------------------------------------


def test_new_keys_have_generous_defaults(tmp_path: Path) -> None:
    limits = make_config(tmp_path).limits
    assert limits.sessions_per_ip == 50
    assert limits.command_timeout == 300.0
    assert limits.recipients_per_message == 100
    custom = make_config(
        tmp_path,
        limits={"sessions_per_ip": 5, "command_timeout": 2, "recipients_per_message": 10},
    ).limits
    assert (custom.sessions_per_ip, custom.command_timeout, custom.recipients_per_message) == (
        5,
        2.0,
        10,
    )


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"sessions_per_ip": 0}, "[limits] sessions_per_ip: must be between 1 and 10000, not 0"),
        ({"sessions_per_ip": "many"}, "[limits] sessions_per_ip: must be an integer"),
        ({"command_timeout": 0}, "[limits] command_timeout: must be between 0.1 and 3600"),
        ({"command_timeout": 7200}, "[limits] command_timeout: must be between 0.1 and 3600"),
        ({"command_timeout": "5m"}, "[limits] command_timeout: must be a number"),
        ({"recipients_per_message": 0}, "[limits] recipients_per_message: must be between 1"),
        ({"answers_per_ip_per_minute": 0}, "[limits] answers_per_ip_per_minute: must be at least"),
        ({"answers_per_hour": -1}, "[limits] answers_per_hour: must be at least 1"),
        ({"trusted_networks": ["carriers"]}, "[limits] trusted_networks: 'carriers' is not a"),
    ],
)
def test_bad_limits_name_the_key(tmp_path: Path, limits: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, limits=limits)
    assert message in str(error.value)
    assert str(tmp_path / "maild.toml") in str(error.value)


# --- one budget for the SMTP listener and /signup -----------------------------------------


def test_blank_mails_and_signups_spend_from_one_budget(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"answers_per_ip_per_minute": 3})
    clock = FakeClock()
    services = build_services(config, clock)
    shared = AnswerBudget(config.limits, clock)
    handler = InboundHandler(config, services.registrations, clock, budget=shared)
    app = create_app(
        config,
        services.registrations,
        services.areas,
        services.links,
        clock,
        budget=shared,
        answer_signup=run_now,
    )
    browser = ClosingClient(app)

    def signup(address: str) -> int:
        page = browser.get("/signup")
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match
        answer = browser.post(
            "/signup",
            data={"csrf": match[1], "address": address},
            environ_overrides={"REMOTE_ADDR": "127.0.0.1"},  # as waitress sets it
        )
        return answer.status_code

    async def blank_mail(sender: str) -> list[int]:
        client = await SmtpClient.connect(server.port)
        try:
            assert (await client.command("EHLO client.example.jp"))[0] == 250
            return await client.send(f"<{sender}>", rcpt=f"<{config.smtp.registration_address}>")
        finally:
            await client.close()

    async def main() -> None:
        await server.start(None, config.smtp.listen)
        try:
            # Both arrive from 127.0.0.1: two mails and one signup fill the minute ...
            assert await blank_mail("m1@docomo.ne.jp") == [250, 250, 250]
            assert await asyncio.to_thread(signup, "w1@example.jp") == 200
            assert await blank_mail("m2@docomo.ne.jp") == [250, 250, 250]
            # ... and then neither way gets more.
            assert await asyncio.to_thread(signup, "w2@example.jp") == 429
            assert await blank_mail("m3@docomo.ne.jp") == [250, 250, 450]
            clock.advance(seconds=61)
            assert await asyncio.to_thread(signup, "w2@example.jp") == 200
        finally:
            await server.close(1.0)

    server = InboundServer(handler, config.smtp)
    try:
        asyncio.run(main())
        with services.db.transaction() as session:
            assert session.scalar(select(func.count()).select_from(OutboxMail)) == 4
        assert shared.spent("127.0.0.1") == 1
    finally:
        services.db.dispose()


def test_a_reload_gives_the_web_its_new_limits(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"answers_per_ip_per_minute": 1})
    clock = FakeClock()
    services = build_services(config, clock)
    try:
        app = create_app(config, services.registrations, services.areas, services.links, clock)
        assert app.budget.limits.answers_per_ip_per_minute == 1
        # What maild.service.reload does on SIGHUP.
        app.reconfigure(make_config(tmp_path, limits={"answers_per_ip_per_minute": 7}))
        assert app.budget.limits.answers_per_ip_per_minute == 7
    finally:
        services.db.dispose()
