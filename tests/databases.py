"""Which database the tests run on: SQLite files, or a PostgreSQL server.

``MAILD_TEST_BACKEND=postgresql`` (set by ``.ci/with-postgresql``) runs the whole suite
on the server at ``MAILD_TEST_POSTGRESQL``: every config the tests write gets a fresh,
empty database of its own there, so tests never see each other's rows. Without it the
suite runs on SQLite files in each test's temporary directory, as a node without
PostgreSQL would (``make test`` alone is that half).

Tests that need PostgreSQL whatever the config says (a node on an unreachable server,
several nodes on one database) take the ``postgresql`` fixture: they run in the
PostgreSQL half and are skipped in the SQLite half, unless ``MAILD_REQUIRE_POSTGRESQL``
is set (CI), which turns a missing server into a failure.

Every database made here is dropped when the test that made it ends (see
:func:`drop_made_databases`), so a developer's own server is not littered.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, QueuePool

from maild.common.config import load_config
from maild.store.db import Database

SERVER = os.environ.get("MAILD_TEST_POSTGRESQL", "")
BACKEND = os.environ.get("MAILD_TEST_BACKEND", "sqlite")
ON_POSTGRESQL = BACKEND == "postgresql"
REQUIRE_POSTGRESQL = bool(os.environ.get("MAILD_REQUIRE_POSTGRESQL"))
if BACKEND not in ("sqlite", "postgresql"):
    raise RuntimeError(f"MAILD_TEST_BACKEND={BACKEND!r}: sqlite or postgresql")
if ON_POSTGRESQL and not SERVER:
    raise RuntimeError("MAILD_TEST_BACKEND=postgresql needs MAILD_TEST_POSTGRESQL (a server URL)")

_by_folder: dict[Path, str] = {}
# Databases made since the last drop: each pytest worker is one process running one test
# at a time, so these are the current test's.
_made: list[str] = []


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as libpq's connection string (psycopg.connect)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _new_database() -> str:
    server = make_url(SERVER)
    name = f"maild_{secrets.token_hex(6)}"
    with psycopg.connect(_libpq(SERVER), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    _made.append(name)
    return server.set(database=name).render_as_string(hide_password=False)


def _require_postgresql() -> None:
    """Skip unless this is the PostgreSQL half; fail instead when PostgreSQL is required
    and there is no server."""
    if not SERVER:
        if REQUIRE_POSTGRESQL:
            pytest.fail(
                "MAILD_REQUIRE_POSTGRESQL is set but there is no server: run the suite "
                "under .ci/with-postgresql (make test-postgresql)"
            )
        pytest.skip("needs PostgreSQL: runs in the PostgreSQL half (make test-postgresql)")
    if not ON_POSTGRESQL:
        pytest.skip("runs in the PostgreSQL half (MAILD_TEST_BACKEND=postgresql)")


def fresh_postgresql() -> str:
    """A new empty database on the test server, its SQLAlchemy URL: the ``postgresql``
    fixture. Runs only in the PostgreSQL half (see :func:`_require_postgresql`)."""
    _require_postgresql()
    return _new_database()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unusable_database(kind: str, folder: Path) -> str:
    """The URL of a database maild cannot open: ``sqlite-file``, a file in ``folder``
    that is no SQLite database (both halves); ``postgresql-server``, a server that
    refuses the connection (the PostgreSQL half only)."""
    if kind == "sqlite-file":
        broken = folder / "broken.db"
        broken.write_bytes(b"this is not an SQLite database\n" * 200)
        return f"sqlite:///{broken}"
    assert kind == "postgresql-server", kind
    _require_postgresql()
    server = make_url(SERVER).set(port=closed_port(), database="maild")
    return server.render_as_string(hide_password=False)


UNUSABLE_DATABASES = ("sqlite-file", "postgresql-server")


def drop_made_databases() -> None:
    """Drop the databases made since the last call (at the end of every test).

    ``WITH (FORCE)`` (PostgreSQL 13+) ends what is still connected: a daemon the test
    killed may have left a backend behind for a moment.
    """
    if not _made:
        return
    names = list(_made)
    _made.clear()
    for folder in [f for f, url in _by_folder.items() if make_url(url).database in names]:
        del _by_folder[folder]
    with psycopg.connect(_libpq(SERVER), autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(folder: Path) -> str | None:
    """The database of the config written under ``folder``: None is the default SQLite
    file in its state directory; on PostgreSQL the same fresh database for every config
    written into one folder (a test that rewrites its config keeps its data)."""
    if not ON_POSTGRESQL:
        return None
    key = folder.resolve()
    if key not in _by_folder:
        _by_folder[key] = _new_database()
    return _by_folder[key]


def query(config: Path | str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in the database of ``config`` (a config file, or a database URL),
    on a connection of its own: what a test reads behind the daemon's back, whichever
    the backend. Plain SQL, so it must be SQL both backends take."""
    url = config if isinstance(config, str) else load_config(config).database_url
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def table_names(config: Path | str) -> Sequence[str]:
    """The tables in the database of ``config``, whichever the backend."""
    url = config if isinstance(config, str) else load_config(config).database_url
    engine = create_engine(url, poolclass=NullPool)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@contextmanager
def writers_blocked(url: str) -> Iterator[None]:
    """While inside, another connection holds what every writer to ``url`` needs, and
    readers still read: SQLite's write lock (``BEGIN IMMEDIATE``); on PostgreSQL, which
    has no database-wide write lock, a ``SHARE`` lock on every table (it conflicts with
    what INSERT, UPDATE and DELETE take)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database
        blocker = sqlite3.connect(parsed.database, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield
            blocker.rollback()
        finally:
            blocker.close()
        return
    tables = ", ".join(f'"{name}"' for name in table_names(url))
    with psycopg.connect(_libpq(url)) as connection:  # one transaction, rolled back
        connection.execute(f"LOCK TABLE {tables} IN SHARE MODE")
        yield
        connection.rollback()


requires_postgresql = pytest.mark.skipif(
    not ON_POSTGRESQL, reason="needs PostgreSQL: runs in the PostgreSQL half"
)
requires_sqlite = pytest.mark.skipif(
    ON_POSTGRESQL, reason="about SQLite itself (its file, WAL, write lock, pragmas)"
)
"""For a test about SQLite itself; where it has a PostgreSQL counterpart that matters,
that is a test of its own beside it."""


def checked_out(db: Database) -> int:
    """Connections of ``db``'s engine taken from its pool and not given back."""
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)  # the pool maild's engines use, on both backends
    return pool.checkedout()
