"""Which database the tests run on: SQLite files, or a PostgreSQL server.

``MAILD_TEST_BACKEND=postgresql`` (set by ``.ci/with-postgresql``) runs the whole suite
on the server at ``MAILD_TEST_POSTGRESQL``: every config the tests write gets a fresh,
empty database of its own there, so tests never see each other's rows. Without it the
suite runs on SQLite files in each test's temporary directory, as a node without
PostgreSQL would. Tests that need PostgreSQL whatever the backend (several nodes on
one database) take the ``postgresql`` fixture, which skips without a server unless
``MAILD_REQUIRE_POSTGRESQL`` is set (CI).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

SERVER = os.environ.get("MAILD_TEST_POSTGRESQL", "")
BACKEND = os.environ.get("MAILD_TEST_BACKEND", "sqlite")
ON_POSTGRESQL = BACKEND == "postgresql"
if ON_POSTGRESQL and not SERVER:
    raise RuntimeError("MAILD_TEST_BACKEND=postgresql needs MAILD_TEST_POSTGRESQL (a server URL)")

_by_folder: dict[Path, str] = {}


def fresh_postgresql() -> str:
    """A new empty database on the test server; its SQLAlchemy URL."""
    if not SERVER:
        if os.environ.get("MAILD_REQUIRE_POSTGRESQL"):
            pytest.fail("MAILD_REQUIRE_POSTGRESQL is set but MAILD_TEST_POSTGRESQL is not")
        pytest.skip("no PostgreSQL server: run under .ci/with-postgresql (README)")
    server = make_url(SERVER)
    name = f"maild_{secrets.token_hex(6)}"
    libpq = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.set(database=name).render_as_string(hide_password=False)


def database_url(folder: Path) -> str | None:
    """The database of the config written under ``folder``: None is the default SQLite
    file in its state directory; on PostgreSQL the same fresh database for every config
    written into one folder (a test that rewrites its config keeps its data)."""
    if not ON_POSTGRESQL:
        return None
    key = folder.resolve()
    if key not in _by_folder:
        _by_folder[key] = fresh_postgresql()
    return _by_folder[key]


requires_sqlite = pytest.mark.skipif(
    ON_POSTGRESQL, reason="about the SQLite file itself (mode, WAL, locking)"
)
