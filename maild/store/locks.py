"""Advisory locks: work that one node at a time may do, when several share the database.

On PostgreSQL these are the server's advisory locks, in maild's own namespace (the
two-key form, the first key :data:`NAMESPACE`), so another application on the same
server cannot collide with them. The server lets them go when the connection ends, so a
node that dies holding one blocks nobody.

On SQLite they are no-ops: a SQLite database is one file on one machine, shared by one
daemon and the operators' commands, never by several nodes, and SQLite lets one writer
in at a time by itself. A second housekeeping pass or a second ``db upgrade`` on it
finds nothing left to do (SQLite runs each migration in one transaction too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from sqlalchemy import Connection, Engine, text

# "mail" in ASCII: the first key of every maild advisory lock.
NAMESPACE = 0x6D61696C


class Lock(IntEnum):
    """The second key: what the lock guards."""

    MIGRATIONS = 1
    HOUSEKEEPING = 2


def _on_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def lock_for_transaction(connection: Connection, lock: Lock) -> None:
    """Wait for ``lock`` and hold it until the connection's transaction ends."""
    if _on_postgresql(connection):
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": NAMESPACE, "key": int(lock)},
        )


@contextmanager
def try_lock(engine: Engine, lock: Lock) -> Iterator[bool]:
    """``lock`` if no other node holds it: yields True while held, False (at once) if not.

    Held on a connection of its own for the whole block, so the block may commit as many
    transactions as it likes.
    """
    with engine.connect() as connection:
        if not _on_postgresql(connection):
            yield True
            return
        keys = {"namespace": NAMESPACE, "key": int(lock)}
        got = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:namespace, :key)"), keys))
        connection.commit()  # end the SELECT's transaction; the lock is the session's
        try:
            yield got
        finally:
            if got:
                connection.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), keys)
                connection.commit()
