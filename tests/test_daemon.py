"""The resident flow against the real daemon: a subprocess, a real relay, real HTTP."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import DaemonFailed, DaemonProcess, maild_command
from tests.databases import ON_POSTGRESQL, UNUSABLE_DATABASES, query, unusable_database
from tests.resident import Browser, csrf_of, link_in, text_of
from tests.smtpsink import SmtpSink

PHONE = "taro..test.@docomo.ne.jp"


def blank_mail(port: int, sender: str = PHONE, headers: str = "") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        message = f"Subject: \r\nMessage-ID: <blank-{time.monotonic_ns()}@phone>\r\n{headers}\r\n"
        smtp.sendmail(
            f"<{sender}>" if ".." in sender else sender, ["entry@mail.example.jp"], message.encode()
        )


def subscriber_rows(config: Path) -> list[tuple[str, str]]:
    return [
        (address, status)
        for address, status in query(config, "SELECT address, status FROM subscribers")
    ]


def test_blank_mail_to_completed_registration(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    config = config_path(relay={"url": sink.url})
    maild = daemon(config)

    started = time.monotonic()
    blank_mail(maild.smtp_port)
    (reply,) = sink.wait_for(1, timeout=5)
    assert time.monotonic() - started < 2.0
    assert list(reply.rcpt_tos) == ['"taro..test."@docomo.ne.jp']  # docs/mail-delivery.md
    msg, text = text_of(reply.data)
    assert "仮登録のお知らせ" in msg["Subject"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"].startswith("<blank-")

    browser = Browser()
    register = link_in(reply.data, "register", maild.base_url)
    status, page = browser.get(register)
    assert status == 200
    assert 'value="aoba"' in page and 'value="child-women"' in page
    status, page = browser.post(
        register,
        [
            ("csrf", csrf_of(page)),
            ("area", "aoba"),
            ("area", "st-sendai-kita"),
            ("category", "child-women"),
            ("category", "street-crime"),
        ],
    )
    assert status == 200, page
    assert "登録" in page

    (done,) = sink.wait_for(2, timeout=5)[1:]
    msg, text = text_of(done.data)
    assert "登録完了のお知らせ" in msg["Subject"]
    assert "/manage/" in text
    assert subscriber_rows(config) == [(PHONE, "active")]

    # A second blank mail within 10 minutes: no second answer.
    blank_mail(maild.smtp_port)
    assert maild.stop() == 0
    assert len(sink.envelopes) == 2

    log = maild.log()
    assert PHONE not in log and "taro..test" not in log
    token = register.rsplit("/", 1)[1]
    assert token not in log and token[:20] not in log


def test_reply_survives_relay_outage_and_restart(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
) -> None:
    path = config_path(relay={"url": sink.url})
    sink.stop()
    maild = daemon(path)
    blank_mail(maild.smtp_port, "hanako@example.jp")
    assert maild.stop() == 0
    assert sink.envelopes == []

    sink.start()
    maild = daemon(path)
    (reply,) = sink.wait_for(1, timeout=20)
    assert list(reply.rcpt_tos) == ["hanako@example.jp"]
    assert maild.stop() == 0
    assert len(sink.envelopes) == 1  # delivered once


def test_foreign_recipient_is_refused_and_daemon_keeps_serving(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
) -> None:
    maild = daemon(config_path(relay={"url": sink.url}))
    with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("spammer@example.com")
        code, _ = smtp.rcpt("victim@example.org")
        assert code == 550
        code, _ = smtp.docmd("NONSENSE")
        assert 500 <= code < 600
    blank_mail(maild.smtp_port, "a@example.jp", headers="Auto-Submitted: auto-replied\r\n")
    blank_mail(maild.smtp_port, "b@example.jp")
    (reply,) = sink.wait_for(1, timeout=5)
    assert list(reply.rcpt_tos) == ["b@example.jp"]
    assert b"healthz" not in maild.healthz() and b'"status"' in maild.healthz()
    assert maild.stop() == 0
    assert len(sink.envelopes) == 1


def test_state_files_are_private(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    tmp_path: Path,
) -> None:
    maild = daemon(config_path())
    blank_mail(maild.smtp_port, "c@example.jp")
    assert maild.stop() == 0
    # The database is a file of ours on SQLite only; PostgreSQL keeps it on the server.
    for name in ("secret.key",) if ON_POSTGRESQL else ("maild.db", "secret.key"):
        mode = (tmp_path / "state" / name).stat().st_mode & 0o777
        assert mode == 0o600, name
    mails = list((tmp_path / "maildir" / "new").iterdir())
    assert len(mails) == 1 and mails[0].stat().st_mode & 0o777 == 0o600
    assert re.search(rb"Delivered-To: c@example.jp", mails[0].read_bytes())


@pytest.mark.parametrize("unusable", UNUSABLE_DATABASES)
def test_a_database_that_cannot_be_opened_is_one_line_at_start(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    tmp_path: Path,
    unusable: str,
) -> None:
    path = config_path(database={"url": unusable_database(unusable, tmp_path)})
    with pytest.raises(DaemonFailed) as failed:
        daemon(path)
    assert "daemon exited with 1" in str(failed.value)
    [line] = str(failed.value).splitlines()[1:]
    assert line.startswith("maild: cannot open the database ")
    done = maild_command(path, "db", "upgrade", check=False)
    assert (done.returncode, done.stderr) == (1, line + "\n")
