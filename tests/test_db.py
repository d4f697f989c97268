"""Database.plain_row: a hot read-only query straight from the driver, per thread on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select

from maild.store.db import Database
from maild.store.models import Subscriber
from tests.configs import make_config

ADDRESS = select(Subscriber.address, Subscriber.id).where(
    Subscriber.status == bindparam("status"), Subscriber.link_key == bindparam("key")
)


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


def test_plain_row_returns_the_first_row_or_none(db: Database) -> None:
    _add(db, "k1")
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) == ("k1@example.jp", 1)
    assert db.plain_row(ADDRESS, {"status": "active", "key": "k1"}) is None
    assert db.plain_row(ADDRESS, {"key": "k1", "status": "pending"}) == ("k1@example.jp", 1)


def test_plain_row_takes_plain_columns_only(db: Database) -> None:
    created = select(Subscriber.created_at).where(Subscriber.id == bindparam("id"))
    with pytest.raises(TypeError, match="integer and string"):
        db.plain_row(created, {"id": 1})  # a UTCDateTime would come back naive


def test_plain_row_sees_what_other_connections_commit(db: Database) -> None:
    # Each thread keeps its reading connection: it must not keep a snapshot too.
    _add(db, "k1")
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) == ("k1@example.jp", 1)
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE subscribers SET status = 'active'")
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) is None
    assert db.plain_row(ADDRESS, {"status": "active", "key": "k1"}) == ("k1@example.jp", 1)


def test_plain_row_reads_from_every_thread_and_after_dispose(db: Database) -> None:
    _add(db, "k1")
    query = {"status": "pending", "key": "k1"}
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda _: db.plain_row(ADDRESS, query), range(40)))
    assert rows == [("k1@example.jp", 1)] * 40
    db.dispose()  # closes the threads' connections; a later read opens a new one
    assert db.plain_row(ADDRESS, query) == ("k1@example.jp", 1)
