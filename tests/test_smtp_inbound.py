"""The inbound listener, end to end: a real server on 127.0.0.1, a real SQLite outbox.

Each test runs its own event loop (``asyncio.run``) with an :class:`InboundServer`
on an OS-chosen port and talks SMTP to it over a socket, line by line, so that
what goes over the wire (legacy addresses, reply codes) is exactly what the test
says. Time is a FakeClock; nothing sleeps to make time pass.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP
from sqlalchemy import select, text

from maild.common.clock import FakeClock
from maild.common.config import Config
from maild.inbound.handler import InboundHandler
from maild.inbound.listener import InboundServer
from maild.residents.areas import AreaMap
from maild.residents.bounces import Bounces
from maild.residents.links import MANAGE, Links, VerpTokens
from maild.residents.registration import Registrations
from maild.store.db import Database
from maild.store.models import OutboxMail
from tests.configs import make_config
from tests.databases import UNUSABLE_DATABASES, unusable_database, writers_blocked
from tests.test_aiosmtpd_compat import ADDRESSES

CORPUS = Path(__file__).parent / "corpus" / "autoreply"
REGISTRATION = "entry@mail.example.jp"
TIMEOUT = 10.0
KEY = b"k" * 64

BLANK = b"""From: taro@docomo.ne.jp
To: entry@mail.example.jp
Subject:
Message-ID: <blank-0001@docomo.ne.jp>
MIME-Version: 1.0
Content-Type: text/plain; charset="Shift_JIS"


--
090-1234-5678
"""


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


class Client:
    """A bare SMTP client: sends exactly the lines it is given and returns reply codes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.banner = ""

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        code, client.banner = await client.reply()
        assert code == 220, client.banner
        return client

    async def reply(self) -> tuple[int, str]:
        """The next reply; (0, "") when the server has closed the connection."""
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            if not line:
                return 0, "\n".join(lines)
            lines.append(line.decode("ascii").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode("ascii") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def data(self, payload: bytes) -> tuple[int, str]:
        code, reply = await self.command("DATA")
        if code != 354:
            return code, reply
        lines = re.split(rb"\r?\n", payload.rstrip(b"\r\n"))
        stuffed = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
        self.writer.write(stuffed + b".\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(
        self, mail_from: str, payload: bytes = BLANK, rcpt: str = f"<{REGISTRATION}>"
    ) -> list[int]:
        """One transaction; the codes of MAIL, RCPT and (if both passed) DATA."""
        codes = [(await self.command(f"MAIL FROM:{mail_from}"))[0]]
        codes.append((await self.command(f"RCPT TO:{rcpt}"))[0])
        if codes == [250, 250]:
            codes.append((await self.data(payload))[0])
        return codes

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@dataclass
class Harness:
    config: Config
    clock: FakeClock
    db: Database
    server: InboundServer
    outcomes: list[str]
    verp: VerpTokens
    bounces: Bounces

    @property
    def port(self) -> int:
        return self.server.port

    def verp_address(self, subscriber_id: int) -> str:
        """The envelope sender an alert to this subscriber leaves with (as fanout builds it)."""
        local, _, domain = self.config.smtp.bounce_address.rpartition("@")
        return f"{local}+{self.verp.make(subscriber_id)}@{domain}"

    async def client(self) -> Client:
        client = await Client.connect(self.port)
        assert (await client.command("EHLO client.example.jp"))[0] == 250
        return client

    async def send(self, mail_from: str, payload: bytes = BLANK, **kw: Any) -> list[int]:
        client = await self.client()
        try:
            return await client.send(mail_from, payload, **kw)
        finally:
            await client.command("QUIT")
            await client.close()

    def rows(self) -> list[OutboxMail]:
        with self.db.transaction() as session:
            return list(session.scalars(select(OutboxMail).order_by(OutboxMail.id)))


@asynccontextmanager
async def inbound(
    tmp_path: Path,
    sock: socket.socket | None = None,
    wire_bounces: bool = True,
    **overrides: dict[str, Any],
) -> AsyncIterator[Harness]:
    """The listener as the daemon runs it; ``wire_bounces=False``: built without VERP."""
    config = make_config(tmp_path, **overrides)
    db = Database(config.database_url)
    db.upgrade()
    clock = FakeClock()
    links = Links(KEY, (), clock)
    registrations = Registrations(config, db, links, AreaMap.load(config.areas.file), clock)
    verp = VerpTokens(KEY)
    bounces = Bounces.from_config(config, db, clock)
    outcomes: list[str] = []
    handler = InboundHandler(
        config,
        registrations,
        clock,
        outcomes.append,
        verp=verp if wire_bounces else None,
        bounces=bounces if wire_bounces else None,
        siblings=lambda: server.transactions(),
    )
    server = InboundServer(handler, config.smtp)
    await server.start(sock, config.smtp.listen)
    try:
        yield Harness(config, clock, db, server, outcomes, verp, bounces)
    finally:
        await server.close(1.0)
        db.dispose()


def run(
    tmp_path: Path,
    scenario: Callable[[Harness], Awaitable[None]],
    wire_bounces: bool = True,
    **overrides: Any,
) -> None:
    async def main() -> None:
        async with inbound(tmp_path, wire_bounces=wire_bounces, **overrides) as harness:
            await scenario(harness)

    asyncio.run(main())


def parsed(row: OutboxMail) -> email.message.EmailMessage:
    message = email.message_from_bytes(row.data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def body_of(row: OutboxMail) -> str:
    part = parsed(row).get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


# --- answering -----------------------------------------------------------------------


def test_blank_mail_from_a_phone_queues_a_register_mail(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        assert "mail.example.jp maild" in client.banner
        sender = "<taro.yamada-0123@docomo.ne.jp>"
        assert await client.send(sender, corpus("ok__docomo-blank-with-signature.eml")) == [
            250,
            250,
            250,
        ]
        await client.command("QUIT")
        await client.close()
        [row] = h.rows()
        assert row.purpose == "register"
        assert row.recipient == "taro.yamada-0123@docomo.ne.jp"
        assert row.envelope_from == "bounce@mail.example.jp"
        assert "http://127.0.0.1:8080/register/" in body_of(row)
        message = parsed(row)
        assert message["In-Reply-To"] == "<0123456789abcdef.taro.yamada-0123@docomo.ne.jp>"
        assert message["Auto-Submitted"] == "auto-replied"
        assert h.outcomes == ["register"]

    run(tmp_path, scenario)


def test_reply_goes_to_the_envelope_sender_not_the_from_header(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        payload = BLANK.replace(b"From: taro@docomo.ne.jp", b"From: hanako@ezweb.ne.jp")
        assert await h.send("<jiro@i.softbank.jp>", payload) == [250, 250, 250]
        assert [r.recipient for r in h.rows()] == ["jiro@i.softbank.jp"]

    run(tmp_path, scenario)


def test_registered_address_gets_the_manage_mail_from_the_same_path(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("<taro@docomo.ne.jp>")
        token = body_of(h.rows()[0]).split("/register/")[1].split()[0]
        await asyncio.to_thread(
            h.server.handler.registrations.complete_register, token, ["all"], ["other"]
        )
        h.clock.advance(minutes=11)
        assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        assert [r.purpose for r in h.rows()] == ["register", "complete", "manage"]
        assert h.outcomes == ["register", "manage"]

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    "mail_from",
    ["<taro..test.@docomo.ne.jp>", '<"taro..test."@docomo.ne.jp>', "taro..test.@docomo.ne.jp"],
)
def test_legacy_docomo_address_is_answered(tmp_path: Path, mail_from: str) -> None:
    async def scenario(h: Harness) -> None:
        payload = corpus("ok__docomo-legacy-address.eml")
        assert await h.send(mail_from, payload) == [250, 250, 250]
        [row] = h.rows()
        assert row.recipient == "taro..test.@docomo.ne.jp"  # stored unquoted, quoted on the wire
        assert h.outcomes == ["register"]

    run(tmp_path, scenario)


def test_five_blank_mails_within_a_minute_get_one_answer(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        for _ in range(5):
            assert await client.send("<taro@docomo.ne.jp>") == [250, 250, 250]
            h.clock.advance(seconds=10)
        await client.close()
        assert len(h.rows()) == 1
        assert h.outcomes == ["register"] + ["throttled"] * 4
        h.clock.advance(minutes=10)
        assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        assert len(h.rows()) == 2

    run(tmp_path, scenario)


def test_concurrent_blank_mails_get_their_250_only_once_committed_together(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        answers = h.server.handler.answers
        clients = [await h.client() for _ in range(5)]
        try:
            senders = ["a@docomo.ne.jp"] + ["same@docomo.ne.jp"] * 3 + ["b@ezweb.ne.jp"]
            for client, sender in zip(clients, senders, strict=True):
                assert (await client.command(f"MAIL FROM:<{sender}>"))[0] == 250
                assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
            # Another writer holds the database: no answer can be committed meanwhile.
            with writers_blocked(h.config.database_url):
                replies = [asyncio.create_task(clients[0].data(BLANK))]
                assert await eventually(lambda: answers.groups == 1)  # waiting for the lock
                replies += [asyncio.create_task(c.data(BLANK)) for c in clients[1:]]
                assert await eventually(lambda: answers.queued == 4)
                await asyncio.sleep(0.2)  # time enough for a 250 that should not come
                assert not any(r.done() for r in replies)  # no 250 before the commit
                assert h.rows() == []
            assert [(await r)[0] for r in replies] == [250] * 5
            # The four that waited went in one transaction; three mails from one new address
            # at once got one answer and no error.
            assert (answers.groups, answers.written) == (2, 5)
            assert sorted(r.recipient for r in h.rows()) == [
                "a@docomo.ne.jp",
                "b@ezweb.ne.jp",
                "same@docomo.ne.jp",
            ]
            assert sorted(h.outcomes) == ["register"] * 3 + ["throttled"] * 2
        finally:
            for client in clients:  # also after a failed assertion: no leaked sockets
                await client.close()

    run(tmp_path, scenario)


# --- recipients ------------------------------------------------------------------------


def test_only_the_registration_address_is_a_recipient(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        assert (await client.command("MAIL FROM:<taro@docomo.ne.jp>"))[0] == 250
        for foreign in (
            "<other@mail.example.jp>",
            "<entry@example.com>",
            "<entry@mail.example.jp.evil.example>",
            "<entry%example.com@mail.example.jp>",
            "<@mail.example.jp:victim@example.com>",
        ):
            code, reply = await client.command(f"RCPT TO:{foreign}")
            assert (code, reply) == (550, "550 5.1.1 No such user here"), foreign
        assert (await client.command("RCPT TO:<Entry@MAIL.Example.JP>"))[0] == 250
        assert (await client.command("RCPT TO:<entry@mail.example.jp>"))[0] == 250
        assert (await client.data(BLANK))[0] == 250
        await client.close()
        assert len(h.rows()) == 1

    run(tmp_path, scenario)


def test_no_data_without_an_accepted_recipient(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.send("<taro@docomo.ne.jp>", rcpt="<someone@example.com>") == [250, 550]
        client = await h.client()
        await client.command("MAIL FROM:<taro@docomo.ne.jp>")
        await client.command("RCPT TO:<someone@example.com>")
        assert (await client.command("DATA"))[0] == 503
        await client.close()
        assert h.rows() == []

    run(tmp_path, scenario)


def test_bounce_addresses_are_recipients_only_with_a_valid_token(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        assert (await client.command("MAIL FROM:<>"))[0] == 250
        good = h.verp_address(7)
        token = good.split("+", 1)[1].split("@")[0]
        tampered = token[:-1] + ("B" if token.endswith("A") else "A")
        other_key = VerpTokens(b"x" * 64).make(7)
        manage_link = Links(KEY).subscriber_link(MANAGE, 7, "abc")  # right key, wrong salt
        unknown = (550, "550 5.1.1 No such user here")
        for forged in (
            f"<bounce+{other_key}@mail.example.jp>",
            f"<bounce+{manage_link}@mail.example.jp>",
            f"<bounce+{tampered}@mail.example.jp>",
            f"<bounce+{token.swapcase()}@mail.example.jp>",
            "<bounce+@mail.example.jp>",
            "<bounce+8@mail.example.jp>",
        ):
            assert await client.command(f"RCPT TO:{forged}") == unknown, forged
        # Right token, wrong place: only our bounce address carries one.
        assert await client.command(f"RCPT TO:<entry+{token}@mail.example.jp>") == unknown
        assert await client.command(f"RCPT TO:<bounce+{token}@example.com>") == unknown
        assert await client.command(f"RCPT TO:<bouncer+{token}@mail.example.jp>") == unknown
        assert h.outcomes == ["bounce:forged"] * 6
        # The token is case-sensitive (a signature), the rest of the address is not.
        assert (await client.command(f"RCPT TO:<{good}>"))[0] == 250
        assert (await client.command(f"RCPT TO:<BOUNCE+{token}@Mail.Example.JP>"))[0] == 250
        assert (await client.command("RCPT TO:<bounce@mail.example.jp>"))[0] == 250
        await client.close()

    run(tmp_path, scenario)


def test_without_verp_no_bounce_address_is_a_recipient(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        assert (await client.command("MAIL FROM:<>"))[0] == 250
        for address in (h.verp_address(7), "bounce@mail.example.jp"):
            assert (await client.command(f"RCPT TO:<{address}>"))[0] == 550
        assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
        await client.close()
        assert h.outcomes == []

    run(tmp_path, scenario, wire_bounces=False)


def test_handler_wants_verp_and_bounces_together(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = Database(config.database_url)
    try:
        registrations = Registrations(
            config, db, Links(KEY), AreaMap.load(config.areas.file), FakeClock()
        )
        with pytest.raises(ValueError, match="both verp and bounces"):
            InboundHandler(config, registrations, verp=VerpTokens(KEY))
    finally:
        db.dispose()


# --- mail not to answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mail_from", "file", "outcome"),
    [
        ("<>", "null-sender__postfix-dsn.eml", "ignored:null-sender"),
        ("<>", "null-sender__exchange-ndr.eml", "ignored:null-sender"),
        (
            "<kenji.watanabe.sendai@gmail.com>",
            "auto-submitted__gmail-vacation.eml",
            "ignored:auto-submitted",
        ),
        (
            "<MAILER-DAEMON@mx.example.ne.jp>",
            "mailer-daemon__qmail-bounce.eml",
            "ignored:mailer-daemon",
        ),
        ("<news@shop.example.com>", "precedence__bulk-newsletter.eml", "ignored:precedence"),
        (
            "<info@chounaikai.example.jp>",
            "list-header__community-ml-post.eml",
            "ignored:list-header",
        ),
        ("<entry@mail.example.jp>", "own-address__loop.eml", "ignored:own-address"),
        ("<bounce@mail.example.jp>", "own-address__loop.eml", "ignored:own-address"),
    ],
)
def test_automatic_mail_is_accepted_and_not_answered(
    tmp_path: Path, mail_from: str, file: str, outcome: str
) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.send(mail_from, corpus(file)) == [250, 250, 250]
        assert h.rows() == []
        assert h.outcomes == [outcome]

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    "mail_from", ["<taro>", "<taro@localhost>", "<a b@docomo.ne.jp>", '<"a b"@docomo.ne.jp>']
)
def test_invalid_sender_is_accepted_and_not_answered(tmp_path: Path, mail_from: str) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.send(mail_from) == [250, 250, 250]
        assert h.outcomes == ["ignored:invalid-sender"]
        assert h.rows() == []

    run(tmp_path, scenario)


def test_sender_address_is_masked_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(h: Harness) -> None:
        await h.send("<taro.yamada@docomo.ne.jp>")
        await h.send("<>", corpus("null-sender__postfix-dsn.eml"))
        await h.send("<taro.yamada@docomo.ne.jp>", rcpt="<hanako@example.com>")

    with caplog.at_level(logging.INFO, logger="maild"):
        run(tmp_path, scenario)
    smtp_lines = [r.getMessage() for r in caplog.records if r.name == "maild.smtp"]
    assert any("t***@docomo.ne.jp" in line and "register" in line for line in smtp_lines)
    assert any("null-sender" in line for line in smtp_lines)
    assert any("h***@example.com" in line for line in smtp_lines)
    everything = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("maild"))
    assert "taro.yamada@" not in everything and "hanako@" not in everything


# --- limits ------------------------------------------------------------------------------


def test_oversize_message_is_refused_with_552(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        code, ehlo = await client.command("EHLO client.example.jp")
        assert "SIZE 1024" in ehlo
        big = BLANK + (b"x" * 70 + b"\n") * 20
        assert await client.send("<taro@docomo.ne.jp>", big) == [250, 250, 552]
        # A declared size over the limit is refused before any data is sent.
        assert (await client.command("MAIL FROM:<taro@docomo.ne.jp> SIZE=5000"))[0] == 552
        # The session goes on: a blank mail afterwards is answered.
        assert await client.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        await client.close()
        assert len(h.rows()) == 1

    run(tmp_path, scenario, smtp={"max_message_size": 1024})


def test_answers_per_ip_per_minute(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.send("<a1@docomo.ne.jp>") == [250, 250, 250]
        assert await h.send("<a2@docomo.ne.jp>") == [250, 250, 250]
        assert await h.send("<a3@docomo.ne.jp>") == [250, 250, 450]
        # Mail we do not answer costs nothing and is still accepted.
        assert await h.send("<>", corpus("null-sender__postfix-dsn.eml")) == [250, 250, 250]
        h.clock.advance(seconds=61)
        assert await h.send("<a3@docomo.ne.jp>") == [250, 250, 250]
        assert len(h.rows()) == 3
        assert h.outcomes == [
            "register",
            "register",
            "deferred:ip-rate",
            "ignored:null-sender",
            "register",
        ]

    run(tmp_path, scenario, limits={"answers_per_ip_per_minute": 2})


def test_trusted_networks_skip_the_per_ip_limit_but_not_the_hourly_one(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        for n in range(3):
            assert await h.send(f"<a{n}@docomo.ne.jp>") == [250, 250, 250]
        assert await h.send("<a3@docomo.ne.jp>") == [250, 250, 450]
        assert h.outcomes[-1] == "deferred:hourly"
        h.clock.advance(minutes=61)
        assert await h.send("<a3@docomo.ne.jp>") == [250, 250, 250]
        assert len(h.rows()) == 4

    run(
        tmp_path,
        scenario,
        limits={
            "answers_per_ip_per_minute": 1,
            "answers_per_hour": 3,
            "trusted_networks": ["127.0.0.0/8"],
        },
    )


DEFERRED_REPLY = "450 4.7.1 Too many registration requests, please try again later"


async def eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within TIMEOUT: for what the server sees of a client
    hanging up, which happens on its side of the socket a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def blank_mails(h: Harness, senders: list[str], sessions: int) -> list[tuple[int, str]]:
    """Send a blank mail from each sender, spread over ``sessions`` concurrent sessions;
    the DATA reply of each, in the order of ``senders``."""
    replies: list[tuple[int, str]] = [(0, "")] * len(senders)

    async def one_session(indexes: range) -> None:
        client = await h.client()
        try:
            for i in indexes:
                assert (await client.command(f"MAIL FROM:<{senders[i]}>"))[0] == 250
                assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
                replies[i] = await client.data(BLANK)
            assert (await client.command("QUIT"))[0] == 221
        finally:
            await client.close()

    await asyncio.gather(*(one_session(range(s, len(senders), sessions)) for s in range(sessions)))
    return replies


def test_a_flood_from_one_ip_gets_at_most_its_answers_and_the_rest_450(tmp_path: Path) -> None:
    senders = [f"resident{n:03d}@docomo.ne.jp" for n in range(200)]

    async def scenario(h: Harness) -> None:
        # 200 distinct senders through one carrier IP within one (fake) minute, 20 at a time.
        replies = await blank_mails(h, senders, sessions=20)
        answered = [senders[i] for i, (code, _) in enumerate(replies) if code == 250]
        deferred = [reply for code, reply in replies if code == 450]
        assert len(answered) == 20 and len(deferred) == 180
        assert set(deferred) == {DEFERRED_REPLY}
        assert sorted(r.recipient for r in h.rows()) == sorted(answered)
        assert sorted(h.outcomes) == ["deferred:ip-rate"] * 180 + ["register"] * 20
        assert await eventually(lambda: h.server.session_count == 0)  # all ended cleanly
        # The listener keeps serving; a deferred sender's MTA retries a minute later.
        retry = next(s for s in senders if s not in answered)
        h.clock.advance(seconds=61)
        assert await h.send(f"<{retry}>") == [250, 250, 250]
        assert h.rows()[-1].recipient == retry

    run(tmp_path, scenario, limits={"answers_per_ip_per_minute": 20})


def test_a_flood_from_a_trusted_network_is_answered_in_full(tmp_path: Path) -> None:
    senders = [f"resident{n:03d}@docomo.ne.jp" for n in range(200)]

    async def scenario(h: Harness) -> None:
        replies = await blank_mails(h, senders, sessions=20)
        assert {code for code, _ in replies} == {250}
        assert sorted(r.recipient for r in h.rows()) == senders
        assert h.outcomes == ["register"] * 200

    run(
        tmp_path,
        scenario,
        limits={"answers_per_ip_per_minute": 20, "trusted_networks": ["127.0.0.0/8"]},
    )


async def greeting(port: int) -> tuple[Client, int, str]:
    """Connect without insisting on a 220: the client and the server's first reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    code, reply = await client.reply()
    return client, code, reply


def test_sessions_per_ip_refuses_one_more_with_421(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        first = [await h.client() for _ in range(3)]
        assert h.server.sessions_from("127.0.0.1") == 3
        extra, code, reply = await greeting(h.port)
        assert code == 421
        assert reply == (
            "421 4.7.0 mail.example.jp Too many connections from your address, try again later"
        )
        assert await extra.reply() == (0, "")  # and closed
        await extra.close()
        assert h.outcomes == ["limited:sessions"]
        # The sessions already open are unaffected.
        assert await first[0].send("<taro@docomo.ne.jp>") == [250, 250, 250]
        # One leaves: a place is free again.
        assert (await first[0].command("QUIT"))[0] == 221
        await first[0].close()
        assert await eventually(lambda: h.server.sessions_from("127.0.0.1") == 2)
        again = await h.client()
        assert h.server.sessions_from("127.0.0.1") == 3
        for client in (again, *first[1:]):
            await client.close()

    run(tmp_path, scenario, limits={"sessions_per_ip": 3})


def mail_command(length: int) -> str:
    """A MAIL command of exactly ``length`` characters (without CRLF)."""
    fixed = len("MAIL FROM:<@docomo.ne.jp>")
    return f"MAIL FROM:<{'a' * (length - fixed)}@docomo.ne.jp>"


def test_a_sessions_command_limits_are_its_own(tmp_path: Path) -> None:
    # EHLO raises the MAIL line limit by the SIZE parameter's 26 (512 → 538). aiosmtpd
    # keeps the limits on its class: another session's start reset them, and every EHLO
    # raised them for all (aiosmtpd_compat.SMTPSession gives each session its own).
    async def scenario(h: Harness) -> None:
        first = await h.client()
        other, code, _ = await greeting(h.port)  # connected, no EHLO yet
        assert code == 220
        assert (await first.command(mail_command(530)))[0] == 250
        assert (await first.command("RSET"))[0] == 250
        more = [await h.client() for _ in range(3)]  # three more EHLOs
        assert (await first.command(mail_command(560)))[0] == 500
        assert (await more[0].command(mail_command(560)))[0] == 500
        assert (await other.command(mail_command(520)))[0] == 500  # no EHLO: 512
        for client in (first, other, *more):
            await client.close()

    run(tmp_path, scenario)


def test_sessions_from_a_trusted_network_are_not_counted(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        clients = [await h.client() for _ in range(4)]
        assert h.server.sessions_from("127.0.0.1") == 0
        for client in clients:
            assert (await client.command("NOOP"))[0] == 250
            await client.close()
        assert h.outcomes == []

    run(
        tmp_path,
        scenario,
        limits={"sessions_per_ip": 1, "trusted_networks": ["127.0.0.1/32"]},
    )


def test_a_silent_client_gets_421_after_the_command_timeout(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = await Client.connect(h.port)
        # The only test that waits on real time: the timeout is a real timer, kept short,
        # yet long enough that the fresh client below is never this slow on a busy machine
        # (at 0.3 s, one CI run timed that client out between two of its commands).
        code, reply = await silent.reply()
        waited = loop.time() - started
        assert (
            code == 421
            and reply == "421 4.4.2 mail.example.jp Timeout exceeded, closing connection"
        )
        assert 0.95 <= waited < 10.0
        assert await silent.reply() == (0, "")
        await silent.close()
        assert "limited:timeout" in h.outcomes
        # The listener goes on: a client that talks in time is served.
        fresh = await h.client()
        assert await fresh.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        await fresh.close()

    run(tmp_path, scenario, limits={"command_timeout": 1.0})


def test_a_reloaded_command_timeout_holds_for_sessions_that_start_after_it(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        before = await h.client()  # under the configured 300 s
        h.server.handler.reconfigure(make_config(tmp_path, limits={"command_timeout": 0.3}))
        silent = await Client.connect(h.port)
        code, _ = await silent.reply()  # real time again, kept short
        assert code == 421
        assert (await before.command("NOOP"))[0] == 250  # its own timeout stays
        for client in (before, silent):
            await client.close()

    run(tmp_path, scenario)


def test_too_many_recipients_get_452(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        assert (await client.command("MAIL FROM:<taro@docomo.ne.jp>"))[0] == 250
        assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
        assert (await client.command("RCPT TO:<bounce@mail.example.jp>"))[0] == 250
        over = await client.command(f"RCPT TO:<{h.verp_address(7)}>")
        assert over == (452, "452 4.5.3 Too many recipients")
        # Naming one already taken costs nothing; a stranger is still refused as such.
        assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
        assert (await client.command("RCPT TO:<someone@example.com>"))[0] == 550
        assert (await client.data(BLANK))[0] == 250
        # The next transaction starts afresh.
        assert (await client.command("MAIL FROM:<hanako@docomo.ne.jp>"))[0] == 250
        assert (await client.command(f"RCPT TO:<{h.verp_address(7)}>"))[0] == 250
        assert (await client.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
        await client.close()
        assert [r.recipient for r in h.rows()] == ["taro@docomo.ne.jp"]
        assert "limited:recipients" in h.outcomes

    run(tmp_path, scenario, limits={"recipients_per_message": 2})


# --- failures ----------------------------------------------------------------------------


def test_local_failure_is_451_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        with h.db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
        client = await h.client()
        assert (await client.command("MAIL FROM:<taro@docomo.ne.jp>"))[0] == 250
        await client.command(f"RCPT TO:<{REGISTRATION}>")
        code, reply = await client.data(BLANK)
        assert (code, reply) == (451, "451 4.3.0 Temporary local problem, please try again")
        # The same session carries on.
        assert (await client.command("NOOP"))[0] == 250
        await client.close()
        with h.db.engine.begin() as connection:
            connection.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
        # The sending MTA retries; nothing of the failed attempt was kept, so it is answered.
        assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        assert [r.recipient for r in h.rows()] == ["taro@docomo.ne.jp"]
        assert h.outcomes == ["error", "register"]

    with caplog.at_level(logging.INFO, logger="maild.smtp"):
        run(tmp_path, scenario)
    [failure] = [r for r in caplog.records if r.name == "maild.smtp" and r.exc_info]
    assert "t***@docomo.ne.jp" in failure.getMessage()


@pytest.mark.parametrize("unusable", UNUSABLE_DATABASES)
def test_an_unusable_database_is_451_not_a_crash(tmp_path: Path, unusable: str) -> None:
    url = unusable_database(unusable, tmp_path)

    async def scenario(h: Harness) -> None:
        registrations = h.server.handler.registrations
        registrations.db = Database(url)
        try:
            assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 451]
            assert await h.send("<>", corpus("null-sender__postfix-dsn.eml")) == [250, 250, 250]
        finally:
            registrations.db.dispose()
            registrations.db = h.db
        assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        assert h.outcomes == ["error", "ignored:null-sender", "register"]

    run(tmp_path, scenario)


def test_failing_outcome_hook_does_not_break_the_session(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        def broken(outcome: str) -> None:
            raise RuntimeError("metrics are down")

        h.server.handler.on_outcome = broken
        assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]
        assert len(h.rows()) == 1

    run(tmp_path, scenario)


# --- the server ----------------------------------------------------------------------------


def test_close_lets_a_transaction_finish_and_refuses_new_connections(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        busy = await h.client()
        assert (await busy.command("MAIL FROM:<taro@docomo.ne.jp>"))[0] == 250
        assert (await busy.command(f"RCPT TO:<{REGISTRATION}>"))[0] == 250
        idle = await h.client()

        closing = asyncio.create_task(h.server.close(TIMEOUT))
        await asyncio.sleep(0)  # let close() take its first step: it does not wait before it

        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", h.port)
        code, reply = await idle.reply()
        assert code == 421 and "shutting down" in reply
        assert await idle.reply() == (0, "")
        await idle.close()

        assert (await busy.data(BLANK))[0] == 250
        # Whether QUIT or the server's 421 comes first, the session then ends.
        assert (await busy.command("QUIT"))[0] in (221, 421)
        await busy.close()
        await asyncio.wait_for(closing, TIMEOUT)
        assert closing.done() and h.server.session_count == 0
        assert len(h.rows()) == 1

    run(tmp_path, scenario)


def test_close_aborts_a_transaction_that_outlasts_the_timeout(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        stuck = await h.client()
        await stuck.command("MAIL FROM:<taro@docomo.ne.jp>")
        await h.server.close(0.05)
        assert (await stuck.reply())[0] == 421
        assert await stuck.reply() == (0, "")
        await stuck.close()
        assert h.server.session_count == 0
        assert h.rows() == []

    run(tmp_path, scenario)


def test_no_new_transaction_once_closing_has_begun(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.client()
        # The moment between close() starting and it reaching this idle session.
        h.server.closing = True
        code, reply = await client.command("MAIL FROM:<taro@docomo.ne.jp>")
        assert code == 421 and "shutting down" in reply
        assert await client.reply() == (0, "")
        await client.close()
        assert h.rows() == []

    run(tmp_path, scenario)


def test_close_waits_for_a_transaction_reset_by_rset(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        busy = await h.client()
        await busy.command("MAIL FROM:<taro@docomo.ne.jp>")
        closing = asyncio.create_task(h.server.close(TIMEOUT))
        await asyncio.sleep(0)
        assert not closing.done()
        assert (await busy.command("RSET"))[0] == 250
        assert (await busy.reply())[0] == 421
        await asyncio.wait_for(closing, TIMEOUT)
        await busy.close()

    run(tmp_path, scenario)


def test_listens_on_a_socket_passed_by_systemd(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def main() -> None:
        # The configured listen address is ignored in favour of the passed socket.
        async with inbound(tmp_path, sock=listener, smtp={"listen": "127.0.0.1:1"}) as h:
            assert h.port == port
            assert await h.send("<taro@docomo.ne.jp>") == [250, 250, 250]

    asyncio.run(main())


def test_starttls_is_offered_when_a_certificate_is_configured(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.jp")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def scenario(h: Harness) -> None:
        client = await Client.connect(h.port)
        code, ehlo = await client.command("EHLO client.example.jp")
        assert "STARTTLS" in ehlo
        # Not required: plain delivery still works (carriers' MTAs decide for themselves).
        assert await client.send("<plain@docomo.ne.jp>") == [250, 250, 250]
        assert (await client.command("STARTTLS"))[0] == 220
        await client.writer.start_tls(client_context, server_hostname="mail.example.jp")
        code, ehlo = await client.command("EHLO client.example.jp")
        assert code == 250 and "AUTH" not in ehlo
        assert await client.send("<secure@docomo.ne.jp>") == [250, 250, 250]
        await client.command("QUIT")
        await client.close()
        assert sorted(r.recipient for r in h.rows()) == [
            "plain@docomo.ne.jp",
            "secure@docomo.ne.jp",
        ]

    run(
        tmp_path,
        scenario,
        smtp={
            "tls_cert_file": str(tmp_path / "cert.pem"),
            "tls_key_file": str(tmp_path / "key.pem"),
        },
    )


def test_no_starttls_without_a_certificate(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        client = await Client.connect(h.port)
        code, ehlo = await client.command("EHLO client.example.jp")
        assert code == 250 and "STARTTLS" not in ehlo
        assert (await client.command("STARTTLS"))[0] in (454, 502, 503)
        await client.close()

    run(tmp_path, scenario)


def test_starttls_presents_the_configured_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.jp")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    stranger = ssl.create_default_context()  # the system's CAs only: ours is not among them

    async def scenario(h: Harness) -> None:
        refused = await h.client()
        assert (await refused.command("STARTTLS"))[0] == 220
        with pytest.raises(ssl.SSLCertVerificationError):
            await refused.writer.start_tls(stranger, server_hostname="mail.example.jp")
        await refused.close()
        assert await eventually(lambda: h.server.session_count == 0)

        client = await h.client()
        assert (await client.command("STARTTLS"))[0] == 220
        await client.writer.start_tls(trusting, server_hostname="mail.example.jp")
        tls = client.writer.get_extra_info("ssl_object")
        assert isinstance(tls, ssl.SSLObject)
        presented = tls.getpeercert()
        assert presented is not None
        assert ("DNS", "mail.example.jp") in presented["subjectAltName"]
        # The upgraded session is still the one session of this peer (sessions_per_ip = 1).
        assert h.server.sessions_from("127.0.0.1") == 1
        assert (await client.command("EHLO client.example.jp"))[0] == 250
        assert await client.send("<secure@docomo.ne.jp>") == [250, 250, 250]
        await client.command("QUIT")
        await client.close()
        [row] = h.rows()
        assert row.recipient == "secure@docomo.ne.jp" and row.purpose == "register"
        assert h.outcomes == ["tls-failed", "register"]

    run(
        tmp_path,
        scenario,
        smtp={
            "tls_cert_file": str(tmp_path / "chain.pem"),
            "tls_key_file": str(tmp_path / "chain.pem"),
        },
        limits={"sessions_per_ip": 1},
    )


def test_mail_from_is_read_as_stock_aiosmtpd_reads_it(tmp_path: Path) -> None:
    # maild's MAIL is aiosmtpd's own (no hook changes it): the same reply for every argument.
    async def scenario(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        stock = await loop.create_server(
            lambda: SMTP(object(), data_size_limit=1024, hostname="mail.example.jp", loop=loop),
            "127.0.0.1",
            0,
        )
        try:
            ours = await h.client()
            theirs = await Client.connect(stock.sockets[0].getsockname()[1])
            assert (await theirs.command("EHLO client.example.jp"))[0] == 250
            for arg in ADDRESSES:
                expected = await theirs.command(f"MAIL FROM:{arg}")
                assert await ours.command(f"MAIL FROM:{arg}") == expected, arg
                for client in (ours, theirs):
                    assert (await client.command("RSET"))[0] == 250
            for client in (ours, theirs):
                await client.close()
        finally:
            stock.close()
            await stock.wait_closed()

    run(tmp_path, scenario, smtp={"max_message_size": 1024})
