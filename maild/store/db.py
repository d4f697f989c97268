"""Database engine, sessions and schema migrations.

SQLite runs in WAL mode with a busy timeout so that the web thread, the
daemon's loop and the command line can write at the same time without
"database is locked"; the file is created 0600 because it holds residents'
addresses (operating rules §7(1)). PostgreSQL (``postgresql+psycopg://``) works
through the same URL key, for several nodes on one database.

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

On PostgreSQL every commit is durable already (``synchronous_commit`` on, the server's
default), so the durable engine is the engine itself.

Where the two backends differ, this module says so (engines, pools, durability, which
URLs); everything else in maild is the same SQL on both. Three places where concurrent
writers meet are written for both, each with a comment: the fan-out's claim and the
bounce score lock their rows (``FOR UPDATE [SKIP LOCKED]``; SQLite has no row locks and
ignores it, its write lock serialises them), and a registration answer retries on the
unique-key race that only PostgreSQL's concurrent writers can meet. The fan-out's record
of sent messages differs too: on PostgreSQL a commit every few milliseconds in the
driver's own SQL (:mod:`maild.store.bookkeeper`); on SQLite, where those commits would
wait for the one write lock, a file of each process's own, marked in the database once a
batch (``maild.delivery.journal``).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from maild.store.locks import Lock, lock_for_transaction

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15000
# Connections of the durable engine: the SMTP answer writer and the web's /signup threads.
DURABLE_POOL_SIZE = 4
IN_MEMORY = (None, "", ":memory:")  # SQLite database names that are no file
# SQLite: enough connections for the web's threads, the loop's workers and the scheduler,
# so none is opened and closed per request.
SQLITE_POOL_SIZE = 16
SQLITE_MAX_OVERFLOW = 16
# PostgreSQL: each connection is a server process, and the server's max_connections (100
# by default) is shared by every process of every node: a node is `maild serve` and its
# [relay] workers processes, each with one engine. At most 8 + 8 per process keeps three
# nodes with one worker each (96) within the default; the threads that use the database
# at once in one process are fewer than 16 (4 web threads, /signup's one, the loop's
# to_thread workers), and one waiting for a connection waits, it does not fail.
POSTGRESQL_POOL_SIZE = 8
POSTGRESQL_MAX_OVERFLOW = 8
# libpq waits for the operating system's TCP timeout (minutes) for a host that does not
# answer; an SMTP session waiting for its answer would outlast the sending MTA's patience.
POSTGRESQL_CONNECT_TIMEOUT_S = 10
# Refuses a migration by raising: (connection, current revision, the newest revision).
UpgradeCheck = Callable[[Connection, str | None, str], None]


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones; storing naive UTC and re-attaching UTC on the way
    out keeps comparisons in SQL and in Python the same. PostgreSQL gets the same
    naive UTC in ``timestamp without time zone``, so the session's ``TimeZone`` (the
    server's, or the role's) never shifts a stored time.
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


class DatabaseUnusable(SchemaError):
    """The database cannot be opened or its schema read or migrated (server down or
    refusing us, a role without the rights, a file that is no SQLite database); the
    message names the database, without its password, and the driver's reason."""


def safe_url(url: str | URL) -> str:
    """A database URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _postgresql_engine(parsed: URL) -> Engine:
    if parsed.drivername == "postgresql":
        # SQLAlchemy's driver for a bare postgresql:// is psycopg2; maild ships psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRESQL_CONNECT_TIMEOUT_S
    if "application_name" not in parsed.query:
        connect_args["application_name"] = "maild"  # pg_stat_activity names us
    return create_engine(
        parsed,
        pool_size=POSTGRESQL_POOL_SIZE,
        max_overflow=POSTGRESQL_MAX_OVERFLOW,
        # A server restart or an idle timeout closes pooled connections under us; test each
        # before use rather than fail the request that takes it.
        pool_pre_ping=True,
        hide_parameters=True,  # SQL errors would otherwise print addresses
        connect_args=connect_args,
    )


def make_engine(url: str, create: bool = True, durable: bool = False) -> Engine:
    """An engine for ``url``; for SQLite the file is created 0600 and put in WAL mode.

    ``create=False`` (the operators' commands) refuses to create a missing SQLite file,
    which would otherwise belong to whoever ran the command instead of the service.
    ``durable=True``: SQLite commits with ``synchronous=FULL`` and begins with ``BEGIN
    IMMEDIATE`` (see the module's docstring); PostgreSQL is durable already.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(parsed)
    if parsed.get_backend_name() != "sqlite":
        raise ValueError(f"{safe_url(parsed)}: maild runs on SQLite or PostgreSQL")
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
        pool_size=DURABLE_POOL_SIZE if durable else SQLITE_POOL_SIZE,
        max_overflow=SQLITE_MAX_OVERFLOW,
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
    def bookkeeping(self, held: Connection | None = None) -> Iterator[Connection]:
        """A Core transaction for the fan-out's record of what it sent: many small commits
        a second, each not flushed to disk on its own. SQLite's ordinary commits are
        like that already (``synchronous=NORMAL``); on PostgreSQL ``synchronous_commit``
        is off for the transaction. Either way a crash of maild loses nothing; a crash of
        the database's machine may undo the last fraction of a second of records, which
        sends those messages again, never misses them.

        ``held``: a connection of :attr:`engine` that the caller keeps open between
        transactions (and closes), instead of one taken from the pool for this one.
        """
        with ExitStack() as stack:
            connection = held if held is not None else stack.enter_context(self.engine.connect())
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield connection

    def upgrade(self, check: UpgradeCheck | None = None) -> None:
        upgrade(self.url, self.engine, check)

    def check_schema(self) -> None:
        """Raise :class:`SchemaError` unless the schema is at the newest revision."""
        with connect(self.engine) as connection, _explained("cannot read", self.engine):
            current = MigrationContext.configure(connection).get_current_revision()
        if current != head_revision():
            raise SchemaError(
                f"the database schema is at {current or 'nothing'}, this maild needs "
                f"{head_revision()}: run `maild db upgrade`"
            )

    def dispose(self) -> None:
        self.engine.dispose()
        self._durable.dispose()


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@functools.cache
def head_revision() -> str:
    """The schema revision this maild's code needs: the newest migration."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def upgrade(url: str, engine: Engine | None = None, check: UpgradeCheck | None = None) -> None:
    """Bring the schema to the newest revision (``maild db upgrade``; ``serve`` runs it too).

    One node at a time (the migrations lock, held until the migration commits): a node
    that waited finds the schema new already. ``check(connection, current, head)`` runs
    under the lock when a migration is due and may refuse it by raising.
    """
    own = engine is None
    engine = engine or make_engine(url)
    cfg = alembic_config(url)
    try:
        with connect(engine) as connection, _explained("cannot migrate", engine):
            with connection.begin():
                lock_for_transaction(connection, Lock.MIGRATIONS)
                current = MigrationContext.configure(connection).get_current_revision()
                if check is not None and current != head_revision():
                    check(connection, current, head_revision())
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
    finally:
        if own:
            engine.dispose()


def connect(engine: Engine) -> Connection:
    """A connection of ``engine``; :class:`DatabaseUnusable` if none can be opened.

    For the first connection an entry point makes (start, ``maild db upgrade``, an
    operator's command), so that a database that is down or refuses us is one sentence,
    not a traceback. Errors after that are the caller's.
    """
    with _explained("cannot open", engine):
        return engine.connect()


@contextmanager
def _explained(what: str, engine: Engine) -> Iterator[None]:
    """A driver's error inside as :class:`DatabaseUnusable`: "cannot open the database
    URL: the driver's first line" (a role without rights on PostgreSQL's public schema,
    a server that is down, a SQLite file that is no database)."""
    try:
        yield
    except DBAPIError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        where = safe_url(engine.url)
        raise DatabaseUnusable(f"{what} the database {where}: {reason}") from None
