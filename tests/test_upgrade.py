"""Upgrading from 0.1.0: the state 0.1.0 left (tests/fixtures/v0.1.0) under today's daemon.

Migrations run, the resident's old manage and unsubscribe links still open their
pages (the same secret key signs them; the token format must not have changed), and
the alert 0.1.0 held is released exactly once when the clock passes the window's
opening, although its 0.1.0 job (``maild.scheduler:release_job``) is gone.

On both backends. 0.1.0's state is a SQLite dump; on PostgreSQL the same rows go into
a database that migrations 0001-0004 (0.1.0's schema, unchanged since but for the
module path of ``UTCDateTime``) built there, as a 0.1.0 node on PostgreSQL would have
it. Migrations 0005 and 0006 then run on PostgreSQL as they would on that node.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.pool import NullPool

from maild.common.config import load_config
from maild.residents.keyring import FINGERPRINT_SETTING, fingerprint
from maild.store.db import alembic_config, head_revision
from tests.daemon import DaemonProcess
from tests.databases import ON_POSTGRESQL, query, table_names
from tests.resident import Browser, text_of
from tests.smtpsink import SmtpSink

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"
MONDAY_MORNING = "2026-12-07T08:31:00+09:00"


def restore(config: Path) -> dict[str, Any]:
    """The 0.1.0 database and key of ``config``; returns what the fixtures recorded."""
    settings = load_config(config)
    state = settings.service.state_dir
    state.mkdir(parents=True)
    dump = state / "maild.db" if not ON_POSTGRESQL else config.parent / "v0.1.0.db"
    with sqlite3.connect(dump) as db:
        db.executescript((FIXTURES / "maild.sql").read_text(encoding="utf-8"))
    db.close()
    if ON_POSTGRESQL:
        copy_to_postgresql(dump, settings.database_url)
    key = state / "secret.key"
    key.write_text((FIXTURES / "secret.key.hex").read_text(encoding="ascii"), encoding="ascii")
    key.chmod(0o600)
    return dict(json.loads((FIXTURES / "state.json").read_text(encoding="utf-8")))


def copy_to_postgresql(sqlite_file: Path, url: str) -> None:
    """0.1.0's rows from ``sqlite_file`` into ``url``, built by migrations 0001-0004."""
    command.upgrade(alembic_config(url), "0004")
    source = create_engine(f"sqlite:///{sqlite_file}", poolclass=NullPool)
    target = create_engine(url, poolclass=NullPool)
    old, new = MetaData(), MetaData()
    old.reflect(source)
    new.reflect(target)
    with source.connect() as reading, target.begin() as writing:
        for table in new.sorted_tables:  # parents before children
            if table.name == "alembic_version":
                continue  # 0004 already, from the migrations
            rows = [dict(row._mapping) for row in reading.execute(old.tables[table.name].select())]
            if rows:
                writing.execute(table.insert(), rows)
            if "id" in table.c and rows and table.name != "apscheduler_jobs":
                # The rows came with their ids: move each sequence past them, as 0.1.0's
                # own inserts would have.
                writing.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), :top)"),
                    {"top": max(row["id"] for row in rows)},
                )
    source.dispose()
    target.dispose()


def test_a_0_1_0_installation_upgrades(
    config_path: Callable[..., Path],
    daemon: Callable[..., DaemonProcess],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    config = config_path(relay={"url": sink.url})
    old = restore(config)
    assert query(config, "SELECT version_num FROM alembic_version") == [("0004",)]
    assert "apscheduler_jobs" in table_names(config)
    assert query(config, "SELECT id, status FROM alerts") == [(1, "scheduled")]
    clock = tmp_path / "now"
    clock.write_text(old["clock"])
    env = {"MAILD_CLOCK_FILE": str(clock)}
    maild = daemon(config, env)

    # Migrations ran; the 0.1.0 job table is gone, the alert is still held.
    assert query(config, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    # 0007: the installation's key is the one every node must have from now on.
    old_key = (FIXTURES / "secret.key.hex").read_text(encoding="ascii").strip().encode()
    assert query(config, "SELECT name, value FROM settings") == [
        (FINGERPRINT_SETTING, fingerprint(old_key))
    ]
    # 0006: the held alert got the random part of its Message-IDs.
    [(key,)] = query(config, "SELECT message_key FROM alerts")
    assert key is not None and len(key) == 16
    assert "apscheduler_jobs" not in table_names(config)
    assert query(config, "SELECT status FROM alerts") == [("scheduled",)]

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
    while query(config, "SELECT status FROM alerts") != [("sent",)]:
        assert time.monotonic() < deadline, query(config, "SELECT status FROM alerts")
        time.sleep(0.1)

    # A restart releases nothing again.
    assert maild.stop() == 0
    maild = daemon(config, env)
    time.sleep(1.5)
    assert len(sink.envelopes) == 1
    assert maild.stop() == 0
    # ... and nothing failed on the way (a release that failed once and then went, say).
    assert " ERROR " not in maild.log() and "Traceback" not in maild.log()
