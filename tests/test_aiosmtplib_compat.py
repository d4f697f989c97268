"""maild/mail/aiosmtplib_compat.py pinned to stock aiosmtplib, against a real relay.

The same message goes to tests/smtpsink.py twice per connection kind (plain,
STARTTLS, implicit TLS, with and without AUTH): once with aiosmtplib's own
``sendmail``, once over a connection aiosmtplib opened and :func:`take_transport`
handed to maild's wire. The relay must see the same thing both times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from maild.common.config import RelayConfig
from maild.mail import aiosmtplib_compat
from maild.mail.aiosmtplib_compat import UnsupportedAiosmtplib, take_transport
from maild.mail.relay import SmtpRelay
from maild.mail.smtp_wire import SmtpWire, data_payload
from maild.service.serve import Daemon, StartupError
from tests.configs import make_config
from tests.smtpsink import ReceivedEnvelope, SmtpSink, TlsMode, smtp_sink

SENDER = "bounce+abc@mail.example.jp"
RECIPIENT = "taro@docomo.ne.jp"
MESSAGE = b"Subject: test\r\n\r\nhello\r\n.a line with a dot\r\n"
LOGIN = ("maild", "s3cret")
KINDS: list[tuple[TlsMode, bool]] = [
    ("none", False),
    ("starttls", False),
    ("implicit", False),
    ("none", True),
    ("starttls", True),
]


def client(sink: SmtpSink, auth: bool) -> aiosmtplib.SMTP:
    options: dict[str, Any] = {}
    if sink.tls != "none":
        options["tls_context"] = sink.client_tls_context()
        options["use_tls"] = sink.tls == "implicit"
        options["start_tls"] = sink.tls == "starttls"
    if auth:
        options["username"], options["password"] = LOGIN
    return aiosmtplib.SMTP(
        hostname=sink.host, port=sink.port, local_hostname="maild.test", **options
    )


async def stock_send(sink: SmtpSink, auth: bool) -> None:
    smtp = client(sink, auth)
    await smtp.connect()
    await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
    transport = smtp.transport
    assert isinstance(transport, asyncio.Transport)
    await smtp.quit()
    await closed(transport)


async def handed_over_send(sink: SmtpSink, auth: bool) -> list[int]:
    smtp = client(sink, auth)
    await smtp.connect()
    if smtp.is_ehlo_or_helo_needed:  # as SmtpRelay does: aiosmtplib greets only to log in
        await smtp.ehlo()
    buffer_seen = hasattr(smtp.protocol, "_buffer")  # the seam the hand-off reads
    transport = take_transport(smtp)
    assert (transport.get_extra_info("ssl_object") is not None) == (sink.tls != "none")
    wire = SmtpWire(transport, 10.0)
    codes = []
    for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA"):
        codes.append((await wire.command(line.encode("ascii"))).code)
    await wire.write(data_payload(MESSAGE))
    codes.append((await wire.reply()).code)
    codes.append((await wire.command(b"QUIT")).code)
    wire.close()
    await closed(transport)
    assert buffer_seen
    return codes


async def closed(transport: asyncio.Transport) -> None:
    """Wait until the socket under ``transport`` is closed (TLS takes a few loop turns)."""
    for _ in range(200):
        sock = transport.get_extra_info("socket")
        if sock is None or sock.fileno() == -1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the connection did not close")


def received(sink: SmtpSink) -> ReceivedEnvelope:
    """The one message the sink took, its connection number aside."""
    [envelope] = sink.wait_for(1)
    sink.clear()
    return dataclasses.replace(envelope, connection=0)


@pytest.mark.parametrize(("tls", "auth"), KINDS)
def test_a_handed_over_connection_delivers_as_aiosmtplib_itself_does(
    tls: TlsMode, auth: bool
) -> None:
    with smtp_sink(tls=tls, auth=LOGIN if auth else None) as sink:
        asyncio.run(stock_send(sink, auth))
        stock = received(sink)
        codes = asyncio.run(handed_over_send(sink, auth))
        ours = received(sink)
    assert codes == [250, 250, 354, 250, 221]
    assert ours == stock
    assert (ours.tls, ours.authenticated_as) == (tls != "none", LOGIN[0] if auth else None)


def test_a_closed_connection_is_not_handed_over() -> None:
    async def main() -> None:
        with smtp_sink() as sink:
            smtp = client(sink, False)
            await smtp.connect()
            transport = smtp.transport
            assert transport is not None
            transport.close()
            with pytest.raises(aiosmtplib_compat.HandOffError):
                take_transport(smtp)
            await asyncio.sleep(0)

    asyncio.run(main())


@pytest.mark.parametrize("version", ["3.0.0", "4.0.2", "5.1.3", "5.99"])
def test_versions_in_the_range_are_accepted(version: str) -> None:
    aiosmtplib_compat.check_version(version)


@pytest.mark.parametrize("version", ["2.0.2", "1.1.7", "6.0.0", "6", "10.0", "dev"])
def test_versions_outside_the_range_are_refused_with_a_clear_message(version: str) -> None:
    with pytest.raises(UnsupportedAiosmtplib, match=re.escape(version)) as refused:
        aiosmtplib_compat.check_version(version)
    if version[0].isdigit():
        assert ">=3.0,<6" in str(refused.value)


def test_the_installed_aiosmtplib_is_supported() -> None:
    aiosmtplib_compat.check_version()


def test_a_relay_is_not_built_on_an_unsupported_aiosmtplib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(aiosmtplib_compat, "installed_version", lambda: "6.0.0")
    with pytest.raises(UnsupportedAiosmtplib):
        SmtpRelay(RelayConfig(url="smtp://127.0.0.1:2525"), "maild.test")
    config = make_config(tmp_path, relay={"url": "smtp://127.0.0.1:2525"})
    with pytest.raises(StartupError, match=r"aiosmtplib 6\.0\.0 is installed.*>=3\.0,<6"):
        asyncio.run(Daemon(config).run())


def test_the_range_is_the_one_pyproject_allows() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [line] = [d for d in project["project"]["dependencies"] if d.startswith("aiosmtplib")]
    assert line == f"aiosmtplib{aiosmtplib_compat.SUPPORTED}"
