"""Shared fixtures: config factory, a real daemon subprocess, a real SMTP sink.

Every test that starts the daemon is marked ``e2e`` here (the other end-to-end tests,
browser and systemd, carry the mark themselves), so ``make check`` can leave them out
and a new daemon test needs no mark of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event
from sqlalchemy.pool import QueuePool

from maild.store.db import Database
from tests.configs import make_config, write_config
from tests.daemon import DaemonProcess
from tests.databases import drop_made_databases, fresh_postgresql
from tests.smtpsink import SmtpSink


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "daemon" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


# Pools disposed while a thread still had one of their connections (an in-process
# server's last write finishing after its test disposed the database): the connection
# comes back to the old pool, which nothing closes; each test's end closes it. Rare, so
# they are simply kept.
_disposed_in_use: list[QueuePool] = []


@pytest.fixture(autouse=True)
def _close_databases() -> Iterator[None]:
    """After each test: close the pooled connections of every engine it used, then drop
    the PostgreSQL databases it made.

    Tests build services (and their engines) freely; a pool left to the garbage
    collector would close its psycopg connections with a ResourceWarning in some later
    test, and hold a server connection until then. Autouse fixtures are set up first,
    so this runs after the test's own teardown (its daemons are stopped).
    """
    # Held, not weakly: an engine another fixture lets go of first (monkeypatch undoing a
    # module global, say) would otherwise be collected with its connections still open.
    engines: dict[int, Engine] = {}

    def remember(connection: Connection) -> None:
        engines.setdefault(id(connection.engine), connection.engine)

    event.listen(Engine, "engine_connect", remember)
    try:
        yield
    finally:
        event.remove(Engine, "engine_connect", remember)
        for engine in engines.values():
            pool = engine.pool
            # Counted before: dispose() resets the count.
            in_use = pool if isinstance(pool, QueuePool) and pool.checkedout() > 0 else None
            engine.dispose()  # closes the idle connections; the engine gets a new pool
            if in_use is not None:
                _disposed_in_use.append(in_use)
        for pool in _disposed_in_use:
            if pool.checkedin():
                pool.dispose()
        drop_made_databases()


def pytest_sessionfinish() -> None:
    drop_made_databases()  # any made outside a test (none should be)


@pytest.fixture
def config_path(tmp_path: Path) -> Callable[..., Path]:
    """``config_path(**sections)`` writes a config under tmp_path and returns its path."""

    def make(**overrides: dict[str, Any]) -> Path:
        return write_config(tmp_path, **overrides)

    return make


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``daemon(config_path, env=None)`` starts ``maild serve``; all are stopped afterwards."""
    started: list[DaemonProcess] = []

    def start(path: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        process = DaemonProcess(path, tmp_path / "daemon.log", env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh database at the newest schema, on the backend the test run is for."""
    database = Database(make_config(tmp_path).database_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A real SMTP server on a free loopback port that records what maild sends."""
    with SmtpSink() as server:
        yield server


@pytest.fixture
def postgresql() -> Callable[[], str]:
    """``postgresql()`` makes a fresh database on the test server and returns its URL.
    Runs in the PostgreSQL half only; skips in the SQLite half (tests.databases)."""
    return fresh_postgresql
