"""The Bookkeeper: small writes from the event loop that never stop the loop, not even
while another process holds the database's write lock, each committed on one held
connection (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading

from maild.store.bookkeeper import Bookkeeper
from maild.store.db import Database
from tests.databases import checked_out, writers_blocked

SETTING = "INSERT INTO settings (name, value) VALUES ({0}, {0})"


def insert_setting(keeper: Bookkeeper) -> str:
    return SETTING.format("%s" if keeper.dialect == "postgresql" else "?")


def stored(db: Database) -> set[str]:
    with db.engine.connect() as connection:
        return set(connection.exec_driver_sql("SELECT name FROM settings").scalars())


def test_each_statement_is_committed_on_one_held_connection(db: Database) -> None:
    async def scenario() -> None:
        keeper = Bookkeeper(db)
        try:
            await keeper.execute(insert_setting(keeper), ("a", "a"))
            assert "a" in stored(db)  # committed, seen from another connection
            await keeper.execute(insert_setting(keeper), ("b", "b"))
            assert checked_out(db) == 1  # the one held
        finally:
            await keeper.close()
        assert checked_out(db) == 0

    asyncio.run(scenario())
    assert {"a", "b"} <= stored(db)


def test_a_write_while_another_holds_the_write_lock_waits_without_stopping_the_loop(
    db: Database,
) -> None:
    lock_held = threading.Event()
    release = threading.Event()

    def blocker() -> None:
        with writers_blocked(db.url):
            lock_held.set()
            release.wait(10)

    async def scenario() -> float:
        keeper = Bookkeeper(db)
        holder = threading.Thread(target=blocker)
        holder.start()
        try:
            assert await asyncio.to_thread(lock_held.wait, 10)
            write = asyncio.create_task(keeper.execute(insert_setting(keeper), ("late", "late")))
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(20):  # 0.2 s in which the loop must go on
                await asyncio.sleep(0.01)
                assert not write.done()
            ticking = loop.time() - started
            release.set()
            await asyncio.wait_for(write, 10)
            return ticking
        finally:
            release.set()
            await asyncio.to_thread(holder.join, 10)
            await keeper.close()

    # Twenty sleeps of 0.01 s take 0.2 s while nothing blocks the loop. A write blocked
    # on the loop (SQLite's busy handler, PostgreSQL's row lock) would hold it, and with
    # it the release, for the whole busy or lock timeout and then fail.
    assert asyncio.run(scenario()) < 2
    assert "late" in stored(db)
