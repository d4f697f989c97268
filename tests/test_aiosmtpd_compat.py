"""maild/inbound/aiosmtpd_compat.py pinned to stock aiosmtpd, over real sockets.

Each dialogue runs against two servers on 127.0.0.1 with the same settings and
the same kind of handler: aiosmtpd's own ``SMTP`` and maild's ``SMTPSession``.
With its hooks at their defaults, ``SMTPSession`` must say exactly what stock
aiosmtpd says, byte for byte, and hand the handler the same envelopes; each seam
then has a test of what it adds. The version check refuses what the seams were
not written for.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from maild.inbound import aiosmtpd_compat
from maild.inbound.aiosmtpd_compat import SMTPSession, UnsupportedAiosmtpd
from maild.service.serve import Daemon, StartupError
from tests.configs import make_config

TIMEOUT = 10.0
SETTINGS: dict[str, Any] = {
    "hostname": "mail.example.jp",
    "ident": "maild",
    "data_size_limit": 1024,
    "auth_exclude_mechanism": ("LOGIN", "PLAIN"),
}


class Recorder:
    """A handler that takes everything and remembers what it was given."""

    def __init__(self) -> None:
        self.mails: list[tuple[str | None, list[str], bytes | None]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))  # type: ignore[arg-type]
        return "250 2.0.0 OK"


async def serve(
    protocol: Callable[..., SMTP], handler: Any, timeout: float = 300.0
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: protocol(handler, timeout=timeout, loop=loop, **SETTINGS), "127.0.0.1", 0
    )


def port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One whole reply (every line of a multi-line one); b"" once the server has closed."""
    reply = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        reply += line
        if not line or line[3:4] != b"-":
            return reply


async def transcript(server: asyncio.Server, sends: list[bytes]) -> list[bytes]:
    """The greeting, then the reply to each of ``sends`` (each expects exactly one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
    replies = [await read_reply(reader)]
    try:
        for chunk in sends:
            if not replies[-1] and len(replies) > 1:
                break  # the server has closed
            writer.write(chunk)
            await writer.drain()
            replies.append(await read_reply(reader))
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return replies


def lines(*commands: str | bytes) -> list[bytes]:
    return [(c.encode("ascii") if isinstance(c, str) else c) + b"\r\n" for c in commands]


MESSAGE = b"Subject: hello\r\n\r\n.a dot-stuffed line\r\nbody\r\n.\r\n"

# Arguments of MAIL and RCPT: plain, legacy, malformed, and odd.
ADDRESSES = [
    "",
    "<>",
    "<taro@docomo.ne.jp>",
    "<taro@docomo.ne.jp> SIZE=1000 BODY=8BITMIME",
    "<taro@docomo.ne.jp> SIZE=5000",
    "<taro@docomo.ne.jp> BODY=BINARYMIME",
    "<taro@docomo.ne.jp> SMTPUTF8",
    "<taro@docomo.ne.jp> FOO",
    "taro@docomo.ne.jp",
    "taro@docomo.ne.jp SIZE=10",
    "  <taro@docomo.ne.jp>",
    "<taro..dots.@docomo.ne.jp>",
    '<"quoted local"@docomo.ne.jp>',
    "<@relay.example:taro@docomo.ne.jp>",
    "<taro@[192.0.2.1]>",
    "<taro>",
    "<taro@docomo.ne.jp",
    "<<taro@docomo.ne.jp>>",
    "taro",
    "@docomo.ne.jp",
    "<" + "a" * 80 + "@docomo.ne.jp>",
    "(comment) <taro@docomo.ne.jp>",
    "<taro@docomo.ne.jp> (comment)",
    "<\\>",
]


def mail_line(length: int) -> str:
    fixed = len("MAIL FROM:<@docomo.ne.jp>")
    return f"MAIL FROM:<{'a' * (length - fixed)}@docomo.ne.jp>"


DIALOGUES: list[list[bytes]] = [
    *(
        lines(hello, f"MAIL FROM:{a}", f"RCPT TO:{a}", "RSET")
        for a in ADDRESSES
        for hello in ("EHLO client.example.jp", "HELO client.example.jp")
    ),
    lines("MAIL FROM:<taro@docomo.ne.jp>"),  # before HELO
    lines("EHLO client.example.jp", "DATA", "RCPT TO:<a@example.jp>"),  # out of order
    lines("EHLO", "HELO", "EHLO client.example.jp", "EHLO client.example.jp"),
    lines("NOOP", "NOOP x", "HELP", "HELP MAIL", "HELP FOO", "VRFY taro", "VRFY", "EXPN list"),
    lines("XYZZY", "mail from:<a@b.example>", "HeLo x", "QUIT"),
    lines("EHLO client.example.jp", "STARTTLS", "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=", "AUTH LOGIN"),
    lines("", " ", "EHLO client.example.jp", "RSET x", "QUIT now"),
    [b"EHLO client.example.jp\r\n", b"NOOP\n", b"\xff\xfe\r\n", "VRFY 太郎\r\n".encode()],
    [b"EHLO client.example.jp\r\n", b"NOOP " + b"x" * 1100 + b"\r\n", b"NOOP\r\n"],
    # The MAIL line limit: 512, and 538 after EHLO announced SIZE.
    lines(*(mail_line(n) for n in (511, 512, 513, 538)), "HELO x", mail_line(513)),
    lines("EHLO x", *(mail_line(n) for n in (512, 537, 538, 539, 600)), "RSET"),
    # Whole transactions, one with a message over the size limit.
    [
        *lines("EHLO client.example.jp", "MAIL FROM:<taro@docomo.ne.jp>"),
        *lines("RCPT TO:<entry@mail.example.jp>", "RCPT TO:<bounce@mail.example.jp>", "DATA"),
        MESSAGE,
        *lines("MAIL FROM:<>", "RCPT TO:<entry@mail.example.jp>", "DATA"),
        b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n.\r\n",
        *lines("NOOP", "QUIT"),
    ],
    [*lines("HELO x", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA"), MESSAGE],
]


async def compare(sends: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    stock_handler, ours_handler = Recorder(), Recorder()
    stock = await serve(SMTP, stock_handler)
    ours = await serve(SMTPSession, ours_handler)
    try:
        found = await transcript(stock, sends), await transcript(ours, sends)
    finally:
        for server in (stock, ours):
            server.close()
            await server.wait_closed()
    assert ours_handler.mails == stock_handler.mails
    return found


@pytest.mark.parametrize("sends", DIALOGUES)
def test_with_its_hooks_at_their_defaults_a_session_is_stock_aiosmtpd(sends: list[bytes]) -> None:
    stock, ours = asyncio.run(compare(sends))
    assert stock[0].startswith(b"220 mail.example.jp maild")
    assert ours == stock


def test_the_dialogues_reach_the_replies_they_are_meant_to() -> None:
    # Not a comparison of two silences: the dialogues above get the replies that matter.
    async def main() -> set[bytes]:
        seen: set[bytes] = set()
        for sends in DIALOGUES:
            stock, _ = await compare(sends)
            seen |= {reply[:3] for reply in stock}
        return seen

    seen = asyncio.run(main())
    assert {b"220", b"250", b"354", b"221", b"500", b"501", b"502", b"503", b"552", b"555"} <= seen


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# --- the 421 greeting -------------------------------------------------------------------


class Refusing(SMTPSession):
    def greeting_refusal(self) -> str | None:
        return "421 4.7.0 mail.example.jp Too many connections"


def test_a_refused_session_gets_the_421_instead_of_the_greeting_and_is_closed() -> None:
    async def scenario() -> None:
        handler = Recorder()
        server = await serve(Refusing, handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
        assert await read_reply(reader) == b"421 4.7.0 mail.example.jp Too many connections\r\n"
        assert await read_reply(reader) == b""  # and closed: no 220 after it
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert handler.mails == []

    run(scenario)


# --- the reply before an idle close ------------------------------------------------------


class Announcing(SMTPSession):
    def timeout_reply(self) -> str | None:
        return "421 4.4.2 mail.example.jp Timeout exceeded"


async def idle(protocol: Callable[..., SMTP], after: list[bytes]) -> list[bytes]:
    """What a client that says ``after`` and then nothing hears until the server closes."""
    server = await serve(protocol, Recorder(), timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port(server))
    heard = [await read_reply(reader)]
    for chunk in after:
        writer.write(chunk)
        heard.append(await read_reply(reader))
    while heard[-1]:
        heard.append(await read_reply(reader))  # real time: the timeout is kept short
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return heard


@pytest.mark.parametrize("after", [[], lines("EHLO x", "MAIL FROM:<a@b.example>")])
def test_an_idle_session_is_closed_as_stock_aiosmtpd_closes_it(after: list[bytes]) -> None:
    async def scenario() -> None:
        stock = await idle(SMTP, after)
        assert await idle(SMTPSession, after) == stock
        announced = await idle(Announcing, after)
        # The same dialogue and close, with the reply just before it.
        assert announced == [*stock[:-1], b"421 4.4.2 mail.example.jp Timeout exceeded\r\n", b""]

    run(scenario)


# --- command size limits of one's own ----------------------------------------------------


async def limits_across_sessions(protocol: Callable[..., SMTP]) -> list[bytes]:
    """A MAIL line of 530 (over 512, within EHLO's 538) from a session, after another
    session has started, and one of 520 from that other session, which sent no EHLO."""
    server = await serve(protocol, Recorder())
    first_reader, first = await asyncio.open_connection("127.0.0.1", port(server))
    await read_reply(first_reader)
    first.write(b"EHLO client.example.jp\r\n")
    await read_reply(first_reader)
    other_reader, other = await asyncio.open_connection("127.0.0.1", port(server))
    await read_reply(other_reader)  # a new session: aiosmtpd built another protocol
    first.write(mail_line(530).encode("ascii") + b"\r\n")
    replies = [await read_reply(first_reader)]
    other.write(b"HELO client.example.jp\r\n")
    await read_reply(other_reader)
    other.write(mail_line(520).encode("ascii") + b"\r\n")
    replies.append(await read_reply(other_reader))
    for writer in (first, other):
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return replies


def test_each_session_keeps_its_own_command_size_limits() -> None:
    async def scenario() -> None:
        assert [r[:3] for r in await limits_across_sessions(SMTPSession)] == [b"250", b"500"]
        # Why the seam exists: stock aiosmtpd shares them, and the second session's start
        # took back the first one's EHLO. When this fails, aiosmtpd has fixed it: drop the seam.
        assert [r[:3] for r in await limits_across_sessions(SMTP)] == [b"500", b"500"]

    run(scenario)


# --- the version check -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.4.5", "1.4.6", "1.4.10", "1.4.5.post1"])
def test_versions_in_the_range_are_accepted(version: str) -> None:
    aiosmtpd_compat.check_version(version)


@pytest.mark.parametrize(
    "version", ["1.4.4", "1.4.4.post2", "1.4", "1.3.2", "1.5.0", "1.5", "2.0.0", "nightly"]
)
def test_versions_outside_the_range_are_refused_with_a_clear_message(version: str) -> None:
    with pytest.raises(UnsupportedAiosmtpd, match=re.escape(version)) as refused:
        aiosmtpd_compat.check_version(version)
    if version[0].isdigit():
        assert ">=1.4.5,<1.5" in str(refused.value)
        assert "maild/inbound/aiosmtpd_compat.py" in str(refused.value)


def test_the_installed_aiosmtpd_is_supported() -> None:
    aiosmtpd_compat.check_version()


@pytest.mark.parametrize("seam", aiosmtpd_compat.SEAMS)
def test_a_version_without_a_seam_is_refused(monkeypatch: pytest.MonkeyPatch, seam: str) -> None:
    monkeypatch.delattr(SMTP, seam)
    with pytest.raises(UnsupportedAiosmtpd, match=seam):
        aiosmtpd_compat.check_version("1.4.6")


def test_the_range_is_the_one_pyproject_allows() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [line] = [d for d in project["project"]["dependencies"] if d.startswith("aiosmtpd")]
    assert line == f"aiosmtpd{aiosmtpd_compat.SUPPORTED}"


def test_the_daemon_refuses_to_start_on_an_unsupported_aiosmtpd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiosmtpd_compat, "installed_version", lambda: "1.5.0")
    config = make_config(tmp_path, smtp={"listen": "127.0.0.1:0"}, web={"listen": "127.0.0.1:0"})
    with pytest.raises(StartupError, match=r"aiosmtpd 1\.5\.0 is installed.*>=1\.4\.5,<1\.5"):
        asyncio.run(Daemon(config).run())
