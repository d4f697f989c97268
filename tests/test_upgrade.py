"""Upgrading from 0.1.0: the state 0.1.0 left (tests/fixtures/v0.1.0) under today's daemon.

Migrations run, the resident's old manage and unsubscribe links still open their
pages (the same secret key signs them; the token format must not have changed), and
the alert 0.1.0 held is released exactly once when the clock passes the window's
opening, although its 0.1.0 job (``maild.scheduler:release_job``) is gone.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from alembic.script import ScriptDirectory

from maild.store.db import alembic_config
from tests.daemon import DaemonProcess
from tests.resident import Browser, text_of
from tests.smtpsink import SmtpSink

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"
MONDAY_MORNING = "2026-12-07T08:31:00+09:00"


def restore(state: Path) -> dict:
    """The 0.1.0 database and key in ``state``; returns what the fixtures recorded."""
    state.mkdir(parents=True)
    with sqlite3.connect(state / "maild.db") as db:
        db.executescript((FIXTURES / "maild.sql").read_text(encoding="utf-8"))
    db.close()
    key = state / "secret.key"
    key.write_text((FIXTURES / "secret.key.hex").read_text(encoding="ascii"), encoding="ascii")
    key.chmod(0o600)
    return dict(json.loads((FIXTURES / "state.json").read_text(encoding="utf-8")))


def query(state: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(state / "maild.db") as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows


HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_a_0_1_0_installation_upgrades(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    old = restore(tmp_path / "state")
    assert query(tmp_path / "state", "SELECT version_num FROM alembic_version") == [("0004",)]
    clock = tmp_path / "now"
    clock.write_text(old["clock"])
    env = {"MAILD_CLOCK_FILE": str(clock)}
    config = config_path(relay={"url": sink.url})
    maild = daemon(config, env)

    # Migrations ran; the 0.1.0 job table is gone, the alert is still held.
    state = tmp_path / "state"
    assert query(state, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    # 0006: the held alert got the random part of its Message-IDs.
    [(key,)] = query(state, "SELECT message_key FROM alerts")
    assert key is not None and len(key) == 16
    assert query(state, "SELECT name FROM sqlite_master WHERE name = 'apscheduler_jobs'") == []
    assert query(state, "SELECT status FROM alerts") == [("scheduled",)]

    # The resident's old links open their pages.
    browser = Browser()
    status, page = browser.get(maild.base_url + old["manage"])
    assert status == 200, page
    assert 'value="aoba"' in page and "taro" not in page  # the address is masked
    status, page = browser.get(maild.base_url + old["unsubscribe"])
    assert status == 200, page
    assert 'name="csrf"' in page

    # Nothing goes out before the window opens ...
    time.sleep(1.5)  # more than one sync of the release scheduler
    assert sink.envelopes == []
    # ... and the held alert goes once when the clock passes the opening.
    clock.write_text(MONDAY_MORNING)
    (mail,) = sink.wait_for(1, timeout=20)
    assert [r.strip('"') for r in mail.rcpt_tos] == [old["subscriber"]["address"]]
    msg, _ = text_of(mail.data)
    assert "不審者" in msg["Subject"]
    deadline = time.monotonic() + 20
    while query(state, "SELECT status FROM alerts") != [("sent",)]:
        assert time.monotonic() < deadline, query(state, "SELECT status FROM alerts")
        time.sleep(0.1)

    # A restart releases nothing again.
    assert maild.stop() == 0
    maild = daemon(config, env)
    time.sleep(1.5)
    assert len(sink.envelopes) == 1
    assert maild.stop() == 0
