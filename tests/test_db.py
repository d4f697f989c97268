"""Database: a private SQLite file in WAL mode, sessions that see each other's commits,
durable transactions that roll back on error, a schema check that names the fix, and a
database that cannot be opened named in one sentence (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from maild.store.db import Database, DatabaseUnusable, SchemaError, make_engine
from maild.store.models import Subscriber
from tests.configs import make_config
from tests.databases import requires_sqlite, unusable_database


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


@requires_sqlite
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


def test_a_missing_postgresql_database_is_named_with_the_fix(
    postgresql: Callable[[], str],
) -> None:
    missing = make_url(postgresql()).set(database="maild_missing").render_as_string(False)
    database = Database(missing, create=False)
    try:
        with pytest.raises(DatabaseUnusable, match='database "maild_missing" does not exist'):
            database.check_schema()
    finally:
        database.dispose()


def test_an_unreachable_server_is_one_sentence_without_the_password(tmp_path: Path) -> None:
    url = make_url(unusable_database("postgresql-server", tmp_path)).set(password="s3cret-pw")
    database = Database(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(DatabaseUnusable) as raised:
            database.upgrade()
    finally:
        database.dispose()
    message = str(raised.value)
    assert message.startswith(f"cannot open the database postgresql+psycopg://{url.username}:***@")
    assert "Connection refused" in message and "\n" not in message
    assert "s3cret-pw" not in message


def test_a_role_without_rights_is_one_sentence_naming_the_reason(
    postgresql: Callable[[], str],
) -> None:
    # Since PostgreSQL 15 only the database's owner may create tables in its public schema
    # (revoked here for older servers too): a database someone else made for maild's role
    # fails the first migration.
    url = make_url(postgresql())
    role = f"maild_role_{secrets.token_hex(4)}"
    admin = Database(url.render_as_string(hide_password=False))
    with admin.engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        connection.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    database = Database(url.set(username=role).render_as_string(hide_password=False))
    try:
        with pytest.raises(
            DatabaseUnusable,
            match="^cannot migrate the database .*: permission denied for schema public$",
        ):
            database.upgrade()
        admin.upgrade()  # now there are tables, and the role may not read them
        with pytest.raises(DatabaseUnusable, match="^cannot read the database .*: permission"):
            database.check_schema()
    finally:
        database.dispose()
        with admin.engine.begin() as connection:
            connection.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def test_a_file_that_is_no_sqlite_database_is_one_sentence(tmp_path: Path) -> None:
    database = Database(unusable_database("sqlite-file", tmp_path))
    try:
        with pytest.raises(DatabaseUnusable, match="broken.db: file is not a database$"):
            database.upgrade()
    finally:
        database.dispose()


def test_stored_times_do_not_depend_on_the_sessions_time_zone(
    postgresql: Callable[[], str],
) -> None:
    url = make_url(postgresql())
    utc = Database(url.render_as_string(hide_password=False))
    tokyo_url = url.update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    tokyo = Database(tokyo_url.render_as_string(hide_password=False))
    at = dt.datetime(2026, 12, 7, 0, 30, tzinfo=dt.UTC)  # 09:30 in Tokyo
    try:
        utc.upgrade()
        with tokyo.transaction() as session:
            assert session.scalar(text("SHOW timezone")) == "Asia/Tokyo"
            session.add(
                Subscriber(
                    address="k1@example.jp",
                    status="pending",
                    category_mask=0,
                    link_key="k1",
                    created_at=at,
                    updated_at=at,
                    bounce_score=0,
                )
            )
        for database in (utc, tokyo):
            with database.transaction() as session:
                assert session.scalar(select(Subscriber.created_at)) == at
                later = at + dt.timedelta(minutes=1)
                assert session.scalar(select(func.count()).where(Subscriber.created_at < later))
    finally:
        utc.dispose()
        tokyo.dispose()
