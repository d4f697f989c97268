"""Database engine, sessions and schema migrations.

SQLite runs in WAL mode with a busy timeout so that the web thread, the
daemon's loop and the command line can write at the same time without
"database is locked"; the file is created 0600 because it holds residents'
addresses (operating rules §7(1)). PostgreSQL works through the same URL key.

Two durability levels on SQLite (``PRAGMA synchronous``, per connection):

- ordinary sessions (:meth:`Database.transaction`) commit with ``NORMAL``. In WAL
  mode that never corrupts the database and survives a crash of maild itself;
  only a power cut or kernel crash can undo the last few commits. What they
  write can be done again without anyone outside having been promised it: a
  fan-out's bookkeeping (at worst a mail goes out twice), a page's form, a
  bounce score. Fsyncing each of them would cost a disk flush per batch of a
  fan-out for nothing.
- :meth:`Database.durable_transaction` commits with ``FULL`` (the WAL is
  fsynced before the commit returns) and takes the write lock at ``BEGIN``
  (``BEGIN IMMEDIATE``), so what it reads is still true when it writes. It is
  for a commit after which we promise something to another machine: a
  registration answer queued before the SMTP ``250`` that makes the sending MTA
  delete its copy (RFC 5321 §4.1.1.4). Its callers commit many answers at
  once, so the flush is paid once per group, not per mail.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15000
# Connections of the durable engine: the SMTP answer writer and the web's /signup threads.
DURABLE_POOL_SIZE = 4
IN_MEMORY = (None, "", ":memory:")  # SQLite database names that are no file


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones; storing naive UTC and re-attaching UTC on the way
    out keeps comparisons in SQL and in Python the same.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware one")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SchemaError(Exception):
    """The database is missing or older than this maild; the message says what to run."""


def make_engine(url: str, create: bool = True, durable: bool = False) -> Engine:
    """An engine for ``url``; for SQLite the file is created 0600 and put in WAL mode.

    ``create=False`` (the operators' commands) refuses to create a missing SQLite file,
    which would otherwise belong to whoever ran the command instead of the service.
    ``durable=True``: SQLite commits with ``synchronous=FULL`` and begins with ``BEGIN
    IMMEDIATE`` (see the module's docstring); other databases are durable already.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database)
        if not create and not database.exists():
            raise SchemaError(
                f"database {database} does not exist: start the daemon or run `maild db upgrade`"
            )
        _create_private_file(database)
        # SQLite gives -wal and -shm the database file's mode; create them early anyway
        # so that no umask can widen them.
        for suffix in ("-wal", "-shm"):
            sidecar = database.with_name(database.name + suffix)
            if sidecar.exists():
                os.chmod(sidecar, 0o600)
    engine = create_engine(
        url,
        hide_parameters=True,  # SQL errors would otherwise print addresses
        # Enough connections for the web's threads, the loop's workers and the scheduler,
        # so none is opened and closed per request.
        pool_size=DURABLE_POOL_SIZE if durable else 16,
        max_overflow=16,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    # NORMAL unless durable: why that is enough for ordinary commits, see the docstring.
    synchronous = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if durable:
            # pysqlite would BEGIN (DEFERRED) only before the first write, so a SELECT
            # and the UPDATE that depends on it could see different data; begin
            # ourselves instead (SQLAlchemy's pysqlite "serializable isolation" recipe).
            dbapi_connection.isolation_level = None

    if durable:

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # The write lock from the start: waits (busy_timeout) for another writer
            # rather than failing with a stale snapshot later.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """The engine and a session factory; one session per message or request (STYLE §7)."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite files only: a second, small pool whose commits are flushed to disk.
        parsed = make_url(url)
        in_file = parsed.get_backend_name() == "sqlite" and parsed.database not in IN_MEMORY
        self._durable = make_engine(url, create, durable=True) if in_file else self.engine

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside ``begin()``: committed on success, rolled back on error, closed."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def durable_session(self) -> Iterator[Session]:
        """Like :meth:`transaction`, on disk once committed: for the alert taken from a
        spool file that is then moved out of ``incoming/`` (a power cut must not
        undo the alert after its file was put away)."""
        with Session(self._durable, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def durable_transaction(self) -> Iterator[Connection]:
        """A Core connection in a write transaction that is on disk once it has committed.

        For commits that precede a promise to another machine (an SMTP ``250``); see
        the module's docstring. Rolled back on error.
        """
        with self._durable.begin() as connection:
            yield connection

    @contextmanager
    def bookkeeping(self) -> Iterator[Connection]:
        """A Core transaction for the fan-out's record of what it sent: many small commits
        a second, each not flushed to disk on its own. SQLite's ordinary commits are
        like that already (``synchronous=NORMAL``); on PostgreSQL ``synchronous_commit``
        is off for the transaction. Either way a crash of maild loses nothing; a crash of
        the database's machine may undo the last fraction of a second of records, which
        sends those messages again, never misses them.
        """
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield connection

    def upgrade(self) -> None:
        upgrade(self.url, self.engine)

    def check_schema(self) -> None:
        """Raise :class:`SchemaError` unless the schema is at the newest revision."""
        script = ScriptDirectory.from_config(alembic_config(self.url))
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        if current != script.get_current_head():
            raise SchemaError(
                f"the database schema is at {current or 'nothing'}, this maild needs "
                f"{script.get_current_head()}: run `maild db upgrade`"
            )

    def dispose(self) -> None:
        self.engine.dispose()
        self._durable.dispose()


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, engine: Engine | None = None) -> None:
    """Bring the schema to the newest revision (``maild db upgrade``; ``serve`` runs it too)."""
    engine = engine or make_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
