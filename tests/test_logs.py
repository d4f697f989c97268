"""Log lines: what clients choose never reaches the journal raw (issue 13.11)."""

from __future__ import annotations

import logging
import re
import smtplib
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from maild.service.logs import ScrubbingFormatter
from tests.daemon import DaemonProcess
from tests.resident import Browser, csrf_of
from tests.smtpsink import SmtpSink

# Raw control characters a log line must not hold (the line break that ends it aside).
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")


def format_line(msg: str, *args: object, exc: bool = False) -> str:
    record = logging.LogRecord("maild.test", logging.INFO, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    return ScrubbingFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_control_characters_in_values_are_escaped() -> None:
    line = format_line(
        "helo %s, sender %s", "exa\x00mple.jp\x08\x08\x1b[31m", "a\r\nINFO maild: forged\u202e"
    )
    assert not RAW_CONTROL.search(line) and "\n" not in line
    assert r"exa\x00mple.jp\x08\x08\x1b[31m" in line
    assert r"a\x0d\x0aINFO maild: forged\u202e" in line


def test_a_traceback_keeps_its_lines() -> None:
    line = format_line("failed for %s", "x\x1by", exc=True)
    first, *rest = line.split("\n")
    assert first.endswith(r"failed for x\x1by")
    assert rest[0] == "Traceback (most recent call last):"


def test_the_daemon_log_holds_no_raw_control_character(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
) -> None:
    maild = daemon(config_path(relay={"url": sink.url}))
    with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
        smtp.ehlo("exa\x00mple.jp\x08\x08")
        assert smtp.docmd("MAIL FROM:<taro@exa\x00mple.jp>")[0] == 250
        assert smtp.docmd("RCPT TO:<x\x08\x08y@elsewhere.example>")[0] == 550
        assert smtp.docmd("RCPT TO:<entry@mail.example.jp>")[0] == 250
        smtp.data(b"Subject: \r\nAuto-Submitted: auto-re\x1b[31mplied\r\n\r\n")
    assert maild.stop() == 0
    log = maild.log()
    # The lines that carry what the client chose are there, escaped.
    assert "refused recipient x***@elsewhere.example" in log
    assert r"mail from t***@exa\x00mple.jp" in log
    bad = [line for line in log.splitlines() if RAW_CONTROL.search(line)]
    assert bad == []


def test_a_flood_past_the_hourly_limit_is_a_few_log_lines_and_exact_metrics(
    config_path: Callable[..., Path],
    daemon: Callable[[Path], DaemonProcess],
    sink: SmtpSink,
) -> None:
    # Issue 13.14: one WARNING per refused mail flooded the journal (49,162 lines in three
    # minutes), and journald's rate limit then dropped the lines that mattered.
    maild = daemon(config_path(relay={"url": sink.url}, limits={"answers_per_hour": 2}))
    with smtplib.SMTP("127.0.0.1", maild.smtp_port, timeout=10) as smtp:
        refused = 0
        for n in range(60):
            try:
                smtp.sendmail(f"p{n}@example.jp", ["entry@mail.example.jp"], b"Subject: \r\n\r\n")
            except smtplib.SMTPDataError as e:
                assert e.smtp_code == 450
                refused += 1
    assert refused == 58
    browser = Browser()
    for n in range(20):  # the web form spends from the same budget
        _, page = browser.get(f"{maild.base_url}/signup")
        fields = [("csrf", csrf_of(page)), ("address", f"w{n}@example.jp")]
        status, _ = browser.post(f"{maild.base_url}/signup", fields)
        assert status == 429
    with urllib.request.urlopen(f"{maild.operators_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert maild.stop() == 0
    assert 'maild_answer_refusals_total{limit="hourly"} 78.0' in metrics
    deferred = [line for line in maild.log().splitlines() if "deferred" in line]
    assert len(deferred) == 2  # the first of each path at once; the rest within the minute
