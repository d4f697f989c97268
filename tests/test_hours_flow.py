"""Issue 18 item 5 end to end: a resident registers with their own hours on the daemon's web
pages; alerts released inside and outside them reach each resident once, the held one when
their hours start. The real daemon, a real SMTP sink, and the daemon's clock file."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.daemon import DaemonProcess, maild_command
from tests.resident import Browser, csrf_of, link_in, text_of
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import (
    Clock,
    alert_text,
    drop,
    recipients,
    wait_for_alerts,
    wait_status,
)
from tests.test_daemon import blank_mail

DAY = "day@example.jp"  # chooses 07:00–21:00
ALWAYS = "always@example.jp"  # chooses nothing: any time
MONDAY_1700 = "2026-12-07T17:00:00+09:00"  # inside the sending window and DAY's hours
MONDAY_2230 = "2026-12-07T22:30:00+09:00"
TUESDAY_0659 = "2026-12-08T06:59:00+09:00"
TUESDAY_0700 = "2026-12-08T07:00:00+09:00"


def register_with_hours(maild: DaemonProcess, sink: SmtpSink) -> str:
    """DAY registers the phone way and picks 07:00–21:00; returns the completion mail's text."""
    blank_mail(maild.smtp_port, DAY)
    (reply,) = sink.wait_for(1, timeout=10)
    browser = Browser()
    register = link_in(reply.data, "register", maild.base_url)
    status, page = browser.get(register)
    assert status == 200 and 'name="hours_start"' in page
    status, page = browser.post(
        register,
        [
            ("csrf", csrf_of(page)),
            ("area", "aoba"),
            ("category", "child-women"),
            ("hours_start", "07:00"),
            ("hours_end", "21:00"),
        ],
    )
    assert status == 200, page
    assert "07:00〜21:00" in page
    done = sink.wait_for(2, timeout=10)[1]
    _, text = text_of(done.data)
    return text


def test_an_alert_released_outside_a_residents_hours_reaches_them_when_they_start(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    clock = Clock(tmp_path / "now", MONDAY_1700)
    config = config_path(relay={"url": sink.url})
    maild_command(config, "db", "upgrade")
    csv = tmp_path / "subscribers.csv"
    csv.write_text(f"address,areas,categories\n{ALWAYS},aoba,\n", encoding="utf-8")
    maild_command(config, "subscribers", "import", str(csv))
    maild = daemon(config, clock.env)
    spool = tmp_path / "spool"

    completion = register_with_hours(maild, sink)
    assert "受け取る時間帯: 07:00〜21:00（緊急の情報は時間外でもすぐ届きます）" in completion
    sink.clear()

    # 17:00, inside DAY's hours: a non-urgent alert reaches both at once.
    drop(spool, "afternoon.txt", alert_text("青葉区", urgent=False))
    (afternoon,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, afternoon["id"], "sent")
    assert recipients(sink) == Counter({DAY: 1, ALWAYS: 1})

    # 22:30: the window is closed, so the alert waits for the morning; an approver sends it
    # now. ALWAYS gets it at once; DAY's row is held until 07:00.
    clock.set(MONDAY_2230)
    drop(spool, "night.txt", alert_text("青葉区", urgent=False))
    night = wait_for_alerts(config, clock.env, 2)[1]
    assert night["status"] == "scheduled"
    maild_command(config, "alerts", "send-now", str(night["id"]), env=clock.env)
    deadline = time.monotonic() + 30
    while recipients(sink)[ALWAYS] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    shown = json.loads(
        maild_command(config, "alerts", "show", str(night["id"]), "--json", env=clock.env).stdout
    )
    assert shown["status"] == "sending"
    assert shown["counts"] == {"queued": 0, "held": 1, "sent": 1, "deferred": 0, "failed": 0}
    text = maild_command(config, "alerts", "show", str(night["id"]), env=clock.env).stdout
    assert "時間帯待ち held 1" in text
    listed = maild_command(config, "alerts", "list", env=clock.env).stdout
    assert "(held 1)" in listed

    # A restart overnight keeps the held row; a minute before 07:00 it still waits.
    assert maild.stop() == 0
    clock.set(TUESDAY_0659)
    maild = daemon(config, clock.env)
    time.sleep(2.5)  # several of the fan-out's idle polls
    assert recipients(sink) == Counter({DAY: 1, ALWAYS: 2})

    clock.set(TUESDAY_0700)
    finished = wait_status(config, clock.env, night["id"], "sent")
    assert finished["counts"]["held"] == 0 and finished["counts"]["sent"] == 2
    time.sleep(1.5)  # give a second copy the chance to go
    assert maild.stop() == 0
    assert recipients(sink) == Counter({DAY: 2, ALWAYS: 2})
    last = [e for e in sink.envelopes if DAY in e.rcpt_tos][-1]
    msg, _ = text_of(last.data)
    assert "07:00:00 +0900" in msg["Date"]  # dated when it went: at the start of the hours
