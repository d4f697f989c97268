"""maild.mail.relay against a real SMTP server (tests/smtpsink.py) and a real Maildir."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from maild.common.config import RelayConfig
from maild.mail.errors import DeliveryError, PermanentFailure, TemporaryFailure, mask_addresses
from maild.mail.relay import MaildirRelay, Relay, SmtpRelay, open_relay
from tests.smtpsink import SmtpSink, smtp_sink

T = TypeVar("T")

HOSTNAME = "maild.test"
SENDER = "bounce+abc123@mail.example.jp"
TARO = "taro@docomo.ne.jp"
LEGACY = "taro..test.@docomo.ne.jp"
LEGACY_ON_WIRE = '"taro..test."@docomo.ne.jp'
MESSAGE = b"Subject: test\r\nTo: someone\r\n\r\nhello\r\n.starts with a dot\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """Every relay test runs against a relay that pipelines (RFC 2920) and one that
    does not."""
    with smtp_sink(pipelining=request.param) as s:
        yield s


def run(make_relay: Callable[[], Relay], use: Callable[[Relay], Awaitable[T]]) -> T:
    """Run ``use(relay)`` in a fresh event loop, closing the relay afterwards."""

    async def main() -> T:
        relay = make_relay()
        try:
            return await use(relay)
        finally:
            await relay.close()

    return asyncio.run(main())


def smtp_relay(url: str, **options: object) -> Callable[[], Relay]:
    tls_context = options.pop("tls_context", None)
    config = RelayConfig(url=url, **options)  # type: ignore[arg-type]
    return lambda: open_relay(config, HOSTNAME, tls_context=tls_context)  # type: ignore[arg-type]


def failure_of(make_relay: Callable[[], Relay], recipient: str = TARO) -> DeliveryError:
    async def use(relay: Relay) -> DeliveryError:
        with pytest.raises(DeliveryError) as caught:
            await relay.send(SENDER, recipient, MESSAGE)
        return caught.value

    return run(make_relay, use)


# --- plain SMTP ------------------------------------------------------------------------------


def test_plain_send_delivers_envelope_and_bytes(sink: SmtpSink) -> None:
    run(smtp_relay(sink.url), lambda relay: relay.send(SENDER, TARO, MESSAGE))

    [received] = sink.wait_for(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == (TARO,)
    assert received.data == MESSAGE  # dot-stuffing undone by the server, nothing else changed
    assert received.tls is False


def test_bare_line_ends_and_leading_dots_reach_the_relay_intact(sink: SmtpSink) -> None:
    message = b".first line starts with a dot\nbare LF\rbare CR\r\n..two dots\r\nlast"
    run(smtp_relay(sink.url), lambda relay: relay.send(SENDER, TARO, message))

    [received] = sink.wait_for(1)
    assert received.data == (
        b".first line starts with a dot\r\nbare LF\r\nbare CR\r\n..two dots\r\nlast\r\n"
    )


def test_open_relay_picks_the_transport(tmp_path: Path) -> None:
    assert isinstance(open_relay(RelayConfig(url="smtp://127.0.0.1:2525"), HOSTNAME), SmtpRelay)
    maildir = open_relay(RelayConfig(url=f"maildir:{tmp_path}"), HOSTNAME)
    assert isinstance(maildir, MaildirRelay)


def test_legacy_recipient_and_sender_are_quoted_on_the_wire(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        await relay.send(SENDER, LEGACY, MESSAGE)
        await relay.send(LEGACY, TARO, MESSAGE)

    run(smtp_relay(sink.url), use)

    first, second = sink.wait_for(2)
    assert first.rcpt_tos == (LEGACY_ON_WIRE,)
    assert second.mail_from == LEGACY_ON_WIRE


def test_null_sender_is_sent_as_empty_path(sink: SmtpSink) -> None:
    run(smtp_relay(sink.url), lambda relay: relay.send("", TARO, MESSAGE))
    assert sink.wait_for(1)[0].mail_from == ""


def test_address_that_could_inject_commands_is_refused(sink: SmtpSink) -> None:
    error = failure_of(smtp_relay(sink.url), "taro@docomo.ne.jp>\r\nRCPT TO:<x@example.jp")
    assert isinstance(error, PermanentFailure)
    assert sink.envelopes == []


def test_many_messages_share_one_connection(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        for i in range(5):
            await relay.send(SENDER, f"user{i}@docomo.ne.jp", MESSAGE)

    run(smtp_relay(sink.url, connections=3), use)

    received = sink.wait_for(5)
    assert [r.rcpt_tos for r in received] == [(f"user{i}@docomo.ne.jp",) for i in range(5)]
    assert sink.connection_count == 1
    assert {r.connection for r in received} == {received[0].connection}
    # MAIL, RCPT and DATA in one write when the relay allows it, never when it does not.
    assert sink.pipelined == (5 if sink.pipelining else 0)


def test_concurrent_sends_stay_within_the_pool(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        await asyncio.gather(*(relay.send(SENDER, f"u{i}@au.com", MESSAGE) for i in range(12)))

    run(smtp_relay(sink.url, connections=2), use)

    received = sink.wait_for(12)
    assert all(len(r.rcpt_tos) == 1 for r in received)  # one recipient per message
    assert 1 <= sink.connection_count <= 2


# --- reply codes -----------------------------------------------------------------------------


def test_4xx_is_a_temporary_failure_and_the_connection_stays_usable(sink: SmtpSink) -> None:
    sink.fail_temporarily(TARO, code=452, text="4.2.2 Mailbox full")

    async def use(relay: Relay) -> DeliveryError:
        with pytest.raises(TemporaryFailure) as caught:
            await relay.send(SENDER, TARO, MESSAGE)
        await relay.send(SENDER, "hanako@ezweb.ne.jp", MESSAGE)
        return caught.value

    error = run(smtp_relay(sink.url), use)

    assert (error.code, error.stage) == (452, "rcpt")
    assert error.text == "4.2.2 Mailbox full"
    assert [r.rcpt_tos for r in sink.wait_for(1)] == [("hanako@ezweb.ne.jp",)]
    assert sink.connection_count == 1  # RSET, not a new connection


def test_5xx_is_a_permanent_failure_with_masked_text(
    sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.fail_permanently(TARO, code=550, text=f"5.1.1 <{TARO}>: Unknown user")
    caplog.set_level(logging.DEBUG, logger="maild.delivery")

    error = failure_of(smtp_relay(sink.url))

    assert isinstance(error, PermanentFailure)
    assert (error.code, error.stage) == (550, "rcpt")
    assert error.text == "5.1.1 <t***@docomo.ne.jp>: Unknown user"
    assert TARO not in str(error)
    assert "t***@docomo.ne.jp" in caplog.text
    assert TARO not in caplog.text
    assert sink.envelopes == []


def test_failure_at_end_of_data_is_mapped_too(sink: SmtpSink) -> None:
    sink.fail_permanently(TARO, code=554, text="5.7.1 Message rejected", at="data")
    error = failure_of(smtp_relay(sink.url))
    assert isinstance(error, PermanentFailure)
    assert (error.code, error.stage) == (554, "data")

    sink.fail_temporarily(code=451, text="4.7.1 Greylisted", at="data")
    error = failure_of(smtp_relay(sink.url))
    assert isinstance(error, TemporaryFailure)
    assert (error.code, error.stage) == (451, "data")


def test_one_refused_recipient_does_not_affect_the_next(sink: SmtpSink) -> None:
    sink.fail_permanently()  # everyone …
    sink.accept("hanako@ezweb.ne.jp")  # … but her

    async def use(relay: Relay) -> None:
        with pytest.raises(PermanentFailure):
            await relay.send(SENDER, TARO, MESSAGE)
        await relay.send(SENDER, "hanako@ezweb.ne.jp", MESSAGE)

    run(smtp_relay(sink.url), use)
    assert [r.rcpt_tos for r in sink.wait_for(1)] == [("hanako@ezweb.ne.jp",)]


# --- outages and reconnects ----------------------------------------------------------------


def test_relay_down_is_temporary_and_sending_resumes_when_it_is_back(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> DeliveryError:
        await relay.send(SENDER, "first@docomo.ne.jp", MESSAGE)  # leaves a pooled connection
        await asyncio.to_thread(sink.stop)
        with pytest.raises(TemporaryFailure) as caught:
            await relay.send(SENDER, TARO, MESSAGE)
        await asyncio.to_thread(sink.start)
        await relay.send(SENDER, TARO, MESSAGE)
        return caught.value

    error = run(smtp_relay(sink.url), use)

    assert error.code is None
    assert error.stage == "connect"
    assert [r.rcpt_tos for r in sink.wait_for(2)] == [("first@docomo.ne.jp",), (TARO,)]


def test_connection_closed_by_the_server_is_replaced(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        await relay.send(SENDER, "first@docomo.ne.jp", MESSAGE)
        await asyncio.to_thread(sink.drop_connections)
        await relay.send(SENDER, TARO, MESSAGE)

    run(smtp_relay(sink.url), use)

    first, second = sink.wait_for(2)
    assert first.connection != second.connection
    assert sink.connection_count == 2


def test_pooled_connection_lost_at_mail_from_is_retried_on_a_new_one(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        await relay.send(SENDER, "first@docomo.ne.jp", MESSAGE)
        sink.fail_next_mail()  # 421 and hang up, as a server timing out an idle client
        await relay.send(SENDER, TARO, MESSAGE)

    run(smtp_relay(sink.url), use)

    first, second = sink.wait_for(2)
    assert second.rcpt_tos == (TARO,)
    assert first.connection != second.connection


def test_421_on_a_fresh_connection_is_temporary_and_not_retried(sink: SmtpSink) -> None:
    sink.fail_next_mail()
    error = failure_of(smtp_relay(sink.url))
    assert isinstance(error, TemporaryFailure)
    assert (error.code, error.stage) == (421, "mail")
    assert sink.envelopes == []
    assert sink.connection_count == 1


def test_closed_relay_refuses_temporarily(sink: SmtpSink) -> None:
    async def use(relay: Relay) -> None:
        await relay.close()
        with pytest.raises(TemporaryFailure):
            await relay.send(SENDER, TARO, MESSAGE)

    run(smtp_relay(sink.url), use)
    assert sink.envelopes == []


# --- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_with_a_trusted_ca(mode: str) -> None:
    with smtp_sink(tls=mode) as tls_sink:  # type: ignore[arg-type]
        make = smtp_relay(tls_sink.url, tls_context=tls_sink.client_tls_context())
        run(make, lambda relay: relay.send(SENDER, LEGACY, MESSAGE))

        [received] = tls_sink.wait_for(1)
    assert received.tls is True
    assert received.rcpt_tos == (LEGACY_ON_WIRE,)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_untrusted_certificate_fails_with_verification_on(mode: str) -> None:
    with smtp_sink(tls=mode) as tls_sink:  # type: ignore[arg-type]
        error = failure_of(smtp_relay(tls_sink.url))  # system CAs only
        assert tls_sink.envelopes == []
    assert isinstance(error, TemporaryFailure)
    assert error.stage == "connect"
    assert "certificate verify failed" in error.text


def test_verification_can_be_switched_off() -> None:
    with smtp_sink(tls="starttls") as tls_sink:
        run(
            smtp_relay(tls_sink.url, verify_tls=False),
            lambda relay: relay.send(SENDER, TARO, MESSAGE),
        )
        assert tls_sink.wait_for(1)[0].tls is True


def test_starttls_required_but_not_offered(sink: SmtpSink) -> None:
    error = failure_of(smtp_relay(f"smtp+starttls://{sink.host}:{sink.port}"))
    assert isinstance(error, TemporaryFailure)
    assert error.stage == "connect"
    assert sink.envelopes == []


def test_relay_that_insists_on_starttls_is_a_setup_problem_not_a_bounce() -> None:
    with smtp_sink(tls="starttls") as tls_sink:
        error = failure_of(smtp_relay(f"smtp://{tls_sink.host}:{tls_sink.port}"))
    assert isinstance(error, TemporaryFailure)
    assert (error.code, error.stage) == (530, "connect")


# --- AUTH ------------------------------------------------------------------------------------


def _password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "relay.password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", ["none", "starttls"])
def test_auth_with_password_file(tmp_path: Path, mode: str) -> None:
    with smtp_sink(tls=mode, auth=("maild", "s3cret ＆ 秘密")) as auth_sink:  # type: ignore[arg-type]
        make = smtp_relay(
            auth_sink.url,
            username="maild",
            password_file=_password_file(tmp_path, "s3cret ＆ 秘密"),
            tls_context=auth_sink.client_tls_context() if mode != "none" else None,
        )
        run(make, lambda relay: relay.send(SENDER, TARO, MESSAGE))
        [received] = auth_sink.wait_for(1)
    assert received.authenticated_as == "maild"


def test_wrong_password_is_temporary(tmp_path: Path) -> None:
    with smtp_sink(auth=("maild", "s3cret")) as auth_sink:
        error = failure_of(
            smtp_relay(
                auth_sink.url, username="maild", password_file=_password_file(tmp_path, "wrong")
            )
        )
        assert auth_sink.envelopes == []
    assert isinstance(error, TemporaryFailure)
    assert (error.code, error.stage) == (535, "connect")


def test_missing_login_is_temporary() -> None:
    with smtp_sink(auth=("maild", "s3cret")) as auth_sink:
        error = failure_of(smtp_relay(auth_sink.url))
    assert isinstance(error, TemporaryFailure)
    assert error.code == 530


# --- pacing ----------------------------------------------------------------------------------


def test_max_per_second_paces_all_sends(sink: SmtpSink) -> None:
    count, rate = 5, 20.0

    async def use(relay: Relay) -> float:
        start = time.monotonic()
        await asyncio.gather(*(relay.send(SENDER, f"u{i}@au.com", MESSAGE) for i in range(count)))
        return time.monotonic() - start

    elapsed = run(smtp_relay(sink.url, connections=4, max_per_second=rate), use)

    assert len(sink.wait_for(count)) == count
    assert elapsed >= (count - 1) / rate * 0.8


# --- Maildir ---------------------------------------------------------------------------------


def test_maildir_writes_private_files_with_trace_headers(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "maildir"
    config = RelayConfig(url=f"maildir:{folder}")

    async def use(relay: Relay) -> None:
        await relay.send(SENDER, LEGACY, MESSAGE)
        await relay.send(SENDER, TARO, MESSAGE)

    run(lambda: open_relay(config, HOSTNAME), use)

    assert sorted(p.name for p in folder.iterdir()) == ["cur", "new", "tmp"]
    assert list((folder / "tmp").iterdir()) == []
    files = sorted((folder / "new").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    assert len({p.name for p in files}) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    contents = [p.read_bytes() for p in files]
    recipients = set()
    for content in contents:
        assert content.startswith(f"Return-Path: <{SENDER}>\n".encode())
        assert b"\r\n" not in content
        msg = email.message_from_bytes(content, policy=email.policy.default)
        assert msg["Subject"] == "test"
        assert msg.get_content() == "hello\n.starts with a dot\n"
        recipients.add(content.split(b"\n")[1])
    assert recipients == {
        f"Delivered-To: {LEGACY_ON_WIRE}".encode(),
        f"Delivered-To: {TARO}".encode(),
    }


def test_maildir_that_cannot_be_written_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    error = failure_of(lambda: MaildirRelay(blocker / "maildir", HOSTNAME))
    assert isinstance(error, TemporaryFailure)
    assert error.code is None


def test_mask_addresses_in_free_text() -> None:
    text = 'RCPT <"taro..test."@docomo.ne.jp> and hanako@ezweb.ne.jp, not @here'
    assert mask_addresses(text) == "RCPT <t***@docomo.ne.jp> and h***@ezweb.ne.jp, not @here"


def test_a_relay_that_stalls_is_logged_once_per_outage_with_its_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 13.13: a relay that stops answering after DATA left no line saying so.
    stalling = threading.Event()
    stalling.set()

    async def main() -> list[str]:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 stall.test ESMTP\r\n")
            while line := await reader.readline():
                command = line[:4].upper()
                if command in (b"EHLO", b"HELO"):
                    writer.write(b"250 stall.test\r\n")
                elif command == b"DATA":
                    writer.write(b"354 go on\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    if stalling.is_set():
                        continue  # the message is never answered
                    writer.write(b"250 2.0.0 OK\r\n")
                elif command == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = RelayConfig(url=f"smtp://127.0.0.1:{port}", connections=3)
        relay = SmtpRelay(config, HOSTNAME, timeout=0.3)
        outcomes: list[str] = []
        try:
            sends = [relay.send(SENDER, TARO, MESSAGE) for _ in range(6)]
            for result in await asyncio.gather(*sends, return_exceptions=True):
                assert isinstance(result, TemporaryFailure) and result.timed_out
                outcomes.append(result.stage)
            stalling.clear()
            await relay.send(SENDER, TARO, MESSAGE)
        finally:
            await relay.close()
            server.close()
        return outcomes

    with caplog.at_level(logging.INFO, logger="maild.delivery"):
        assert asyncio.run(main()) == ["data"] * 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    stalled = [w for w in warnings if "stalled" in w]
    assert len(stalled) == 1
    assert "127.0.0.1:" in stalled[0] and "at data" in stalled[0] and "0.3 s" in stalled[0]
    assert any("answers again" in w for w in warnings)
