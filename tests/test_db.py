"""Database.plain_row: a hot read-only query straight from the driver, per thread on SQLite."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select

from maild.db import Database
from maild.models import Subscriber
from tests.configs import make_config

ADDRESS = select(Subscriber.address, Subscriber.id).where(
    Subscriber.status == bindparam("status"), Subscriber.link_key == bindparam("key")
)


def test_plain_row_returns_the_first_row_or_none(tmp_path: Path) -> None:
    db = Database(make_config(tmp_path).database_url)
    db.upgrade()
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO subscribers (address, status, category_mask, link_key, created_at,"
            " updated_at, bounce_score) VALUES ('a@example.jp', 'pending', 0, 'k1',"
            " '2026-01-01', '2026-01-01', 0)"
        )
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) == ("a@example.jp", 1)
    assert db.plain_row(ADDRESS, {"status": "active", "key": "k1"}) is None
    assert db.plain_row(ADDRESS, {"key": "k1", "status": "pending"}) == ("a@example.jp", 1)
    db.dispose()


def test_plain_row_takes_plain_columns_only(tmp_path: Path) -> None:
    db = Database(make_config(tmp_path).database_url)
    db.upgrade()
    created = select(Subscriber.created_at).where(Subscriber.id == bindparam("id"))
    with pytest.raises(TypeError, match="integer and string"):
        db.plain_row(created, {"id": 1})  # a UTCDateTime would come back naive
    db.dispose()


def _add(db: Database, key: str) -> None:
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO subscribers (address, status, category_mask, link_key, created_at,"
            f" updated_at, bounce_score) VALUES ('{key}@example.jp', 'pending', 0, '{key}',"
            " '2026-01-01', '2026-01-01', 0)"
        )


def test_plain_row_sees_what_other_connections_commit(tmp_path: Path) -> None:
    # Each thread keeps its reading connection: it must not keep a snapshot too.
    db = Database(make_config(tmp_path).database_url)
    db.upgrade()
    _add(db, "k1")
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) == ("k1@example.jp", 1)
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE subscribers SET status = 'active'")
    assert db.plain_row(ADDRESS, {"status": "pending", "key": "k1"}) is None
    assert db.plain_row(ADDRESS, {"status": "active", "key": "k1"}) == ("k1@example.jp", 1)
    db.dispose()


def test_plain_row_reads_from_every_thread_and_after_dispose(tmp_path: Path) -> None:
    db = Database(make_config(tmp_path).database_url)
    db.upgrade()
    _add(db, "k1")
    query = {"status": "pending", "key": "k1"}
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(lambda _: db.plain_row(ADDRESS, query), range(40)))
    assert rows == [("k1@example.jp", 1)] * 40
    db.dispose()  # closes the threads' connections; a later read opens a new one
    assert db.plain_row(ADDRESS, query) == ("k1@example.jp", 1)
    db.dispose()
