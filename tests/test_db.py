"""Database: a private SQLite file in WAL mode, sessions that see each other's commits,
durable transactions that roll back on error, and a schema check that names the fix."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from maild.store.db import Database, SchemaError, make_engine
from maild.store.models import Subscriber
from tests.configs import make_config


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(make_config(tmp_path).database_url)
    database.upgrade()
    yield database
    database.dispose()


def _add(db: Database, key: str) -> None:
    """A pending subscriber ``KEY@example.jp`` whose link key is ``key``."""
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO subscribers (address, status, category_mask, link_key, created_at,"
            f" updated_at, bounce_score) VALUES ('{key}@example.jp', 'pending', 0, '{key}',"
            " '2026-01-01', '2026-01-01', 0)"
        )


def _address(db: Database, key: str, status: str) -> str | None:
    query = select(Subscriber.address).where(
        Subscriber.link_key == key, Subscriber.status == status
    )
    with db.transaction() as session:
        return session.scalar(query)


def test_the_sqlite_file_is_private_and_in_wal_mode(db: Database) -> None:
    path = Path(db.engine.url.database or "")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with db.engine.connect() as connection:
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"


def test_reads_see_what_other_connections_commit(db: Database) -> None:
    _add(db, "k1")
    assert _address(db, "k1", "pending") == "k1@example.jp"
    with db.durable_transaction() as connection:
        connection.exec_driver_sql("UPDATE subscribers SET status = 'active'")
    assert _address(db, "k1", "pending") is None
    assert _address(db, "k1", "active") == "k1@example.jp"


def test_reads_from_many_threads_and_after_dispose(db: Database) -> None:
    _add(db, "k1")
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: _address(db, "k1", "pending"), range(40)))
    assert found == ["k1@example.jp"] * 40
    db.dispose()  # the pools are emptied; a later read opens a new connection
    assert _address(db, "k1", "pending") == "k1@example.jp"


def test_a_failed_durable_transaction_leaves_nothing(db: Database) -> None:
    _add(db, "k1")
    with pytest.raises(RuntimeError), db.durable_transaction() as connection:
        connection.exec_driver_sql("DELETE FROM subscribers")
        raise RuntimeError("after the write")
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_the_schema_check_names_the_command_to_run(tmp_path: Path) -> None:
    database = Database(make_config(tmp_path).database_url)
    try:
        with pytest.raises(SchemaError, match="maild db upgrade"):
            database.check_schema()
        database.upgrade()
        database.check_schema()
    finally:
        database.dispose()


def test_commands_do_not_create_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        make_engine(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()
