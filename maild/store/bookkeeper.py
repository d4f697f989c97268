"""Many small writes from the event loop, each its own transaction, on one held connection.

The fan-out on PostgreSQL records what it sent every few milliseconds (its group
commit, :class:`maild.delivery.claims.SentRecords`), and each relay connection waits
for that record before it sends again. A connection taken from the pool for each write
would cost a checkout each time; this one is held for the batch and given back at
:meth:`Bookkeeper.close`. The statement runs in a worker thread (it waits on the
database), in :meth:`Database.bookkeeping`'s transaction: on PostgreSQL with
``synchronous_commit`` off. (On SQLite the fan-out keeps its record in a file instead,
:mod:`maild.delivery.journal`; the bookkeeper works there too, as an ordinary commit.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Connection

from maild.store.db import Database


class Bookkeeper:
    """Executes one driver-SQL statement per call as its own transaction; use within one
    event loop, one call at a time, and :meth:`close` when done."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.dialect = db.engine.dialect.name
        self._connection: Connection | None = None

    async def execute(self, sql: str, parameters: tuple[Any, ...]) -> None:
        """Run ``sql`` (the driver's paramstyle) with ``parameters`` and commit it."""
        if self._connection is None:
            self._connection = await asyncio.to_thread(self._db.engine.connect)
        try:
            await asyncio.to_thread(self._in_transaction, self._connection, sql, parameters)
        except Exception:
            await self.close()  # the next statement starts on a fresh connection
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.to_thread(connection.close)

    def _in_transaction(self, held: Connection, sql: str, parameters: tuple[Any, ...]) -> None:
        with self._db.bookkeeping(held) as connection:
            connection.exec_driver_sql(sql, parameters)
