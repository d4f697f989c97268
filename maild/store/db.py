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
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, Engine, Integer, Select, String, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15000
# Connections of the durable engine: the SMTP answer writer and the web's /signup threads.
DURABLE_POOL_SIZE = 4
IN_MEMORY = (None, "", ":memory:")  # SQLite database names that are no file

AnySelect: TypeAlias = "Select[*tuple[Any, ...]]"


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
        self._plain: dict[AnySelect, _PlainQuery] = {}
        self._readers = _ThreadReaders(Path(parsed.database or "")) if in_file else None

    def plain_row(self, statement: AnySelect, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a read-only ``statement`` of plain columns, from the driver itself.

        For a query on a hot path (the register form): SQLAlchemy's Connection and Result
        cost three times the query itself there. The statement is compiled once; values
        go in and come out as the driver has them, so only integer and string columns and
        parameters are allowed (checked when it is compiled), and ``params`` are named by
        the statement's ``bindparam`` names.

        On SQLite each thread reads through a connection of its own (:class:`_ThreadReaders`);
        elsewhere through the pool.
        """
        query = self._plain.get(statement)
        if query is None:
            query = self._plain[statement] = _PlainQuery.of(statement, self.engine.dialect)
        bound = dict(params) if query.order is None else tuple(params[k] for k in query.order)
        if self._readers is not None:
            rows = self._readers.connection().execute(query.sql, bound)
            try:
                row = rows.fetchone()
            finally:
                rows.close()  # ends the read transaction even if more rows matched
            return None if row is None else tuple(row)
        connection = self.engine.raw_connection()  # from the pool, back to it (rolled back)
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(query.sql, bound)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()
        return None if row is None else tuple(row)

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
        if self._readers is not None:
            self._readers.close()


class _ThreadReaders:
    """One read-only SQLite connection per thread, for :meth:`Database.plain_row`.

    Checking a connection out of SQLAlchemy's pool and back in (with its rollback) cost
    the register page twice its query, and its lock is one more place where the web's
    threads wait for each other. Each connection is in autocommit mode, so a query is
    its own read transaction and no snapshot outlives it (WAL checkpoints are not held
    back); ``query_only`` makes a write through it an error.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []
        self._generation = 0  # close() starts a new one: a thread's old connection is shut

    def connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            connection = sqlite3.connect(
                self._path,
                timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,  # close() runs in another thread
            )
            connection.execute("PRAGMA query_only=ON")
            with self._lock:
                self._open.append(connection)
                local.generation, local.connection = self._generation, connection
        return local.connection  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            connections, self._open = self._open, []
        for connection in connections:
            connection.close()


@dataclass(frozen=True)
class _PlainQuery:
    """A statement compiled for :meth:`Database.plain_row`."""

    sql: str
    order: tuple[str, ...] | None  # parameter names in order, for a positional driver (qmark)

    @classmethod
    def of(cls, statement: AnySelect, dialect: Dialect) -> _PlainQuery:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        types = [c.type for c in statement.selected_columns]
        types += [b.type for b in compiled.binds.values()]
        if not all(isinstance(t, Integer | String) for t in types):
            raise TypeError("Database.plain_row takes integer and string columns and parameters")
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return cls(str(compiled), order)


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
