"""SIGHUP on the real daemon: ``[housekeeping] keep_days`` and ``base_url`` take effect.

Both were once logged as reloaded and then ignored until a restart (keep_days stayed
in the housekeeping job's own copy of the config; the CSRF cookie's ``Secure`` was
decided once, at start). A restart-only key changed in the same reload is named in
the log. tests/test_reload.py walks every other key in-process.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon import DaemonProcess, maild_command
from tests.databases import query
from tests.smtpsink import SmtpSink
from tests.test_alerts_flow import (
    SATURDAY,
    Clock,
    alert_text,
    drop,
    import_subscribers,
    wait_for_alerts,
    wait_for_log,
    wait_status,
)

TEN_DAYS_LATER = "2026-12-15T10:00:00+09:00"


def csrf_cookie(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/signup", timeout=10) as response:
        cookies = response.headers.get_all("Set-Cookie") or []
    (cookie,) = [c for c in cookies if "csrf" in c.lower()]
    return str(cookie)


def delivery_rows(config: Path) -> tuple[int, list[tuple[Any, ...]]]:
    [(count,)] = query(config, "SELECT count(*) FROM deliveries")
    return int(count), query(config, "SELECT final_counts FROM alerts")


def test_sighup_applies_keep_days_and_base_url(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    clock = Clock(tmp_path / "now", SATURDAY)
    config = config_path(relay={"url": sink.url})
    maild_command(config, "db", "upgrade")
    import_subscribers(config, tmp_path, [("a@example.jp", "aoba", "")])
    maild = daemon(config, clock.env)
    assert maild.process is not None
    assert "Secure" not in csrf_cookie(maild.base_url)

    # An urgent alert goes at once; its delivery rows are kept for keep_days (30).
    drop(tmp_path / "spool", "urgent.txt", alert_text("青葉区", urgent=True))
    (alert,) = wait_for_alerts(config, clock.env, 1)
    wait_status(config, clock.env, alert["id"], "sent")
    clock.set(TEN_DAYS_LATER)
    assert delivery_rows(config) == (1, [(None,)])

    config_path(
        relay={"url": sink.url},
        service={"base_url": "https://mail.example.jp"},
        housekeeping={"keep_days": 7},
        smtp={"hostname": "other.example.jp"},
    )
    mark = len(maild.log())
    maild.process.send_signal(signal.SIGHUP)
    wait_for_log(maild, "reloaded", mark)
    log = maild.log()[mark:]
    assert "[smtp] hostname changed; it needs a restart" in log
    assert "[housekeeping] keep_days" not in log and "[service] base_url" not in log

    # keep_days: the rows of the ten-day-old alert go now, its counts stay.
    deadline = time.monotonic() + 10
    while delivery_rows(config)[0] != 0:
        assert time.monotonic() < deadline, "keep_days = 7 was not applied"
        time.sleep(0.1)
    assert delivery_rows(config)[1] != [(None,)]
    # base_url is https now: the CSRF cookie is Secure.
    assert "Secure" in csrf_cookie(maild.base_url)
    assert maild.stop() == 0
