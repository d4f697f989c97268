"""The Alembic migrations build exactly the schema the models describe, and go down and
up again, on the backend of this half of the suite (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

from maild.store import models  # noqa: F401  (registers the tables)
from maild.store.db import Base, alembic_config, upgrade
from tests.configs import make_config
from tests.databases import table_names


def differences(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the database match the models."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    url = make_config(tmp_path).database_url
    upgrade(url)
    assert differences(url) == []


def test_every_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    url = make_config(tmp_path).database_url
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert table_names(url) == ["alembic_version"]
    upgrade(url)
    assert differences(url) == []
    assert "apscheduler_jobs" not in table_names(url)


def test_the_hours_migration_keeps_subscribers_areas_and_ids(tmp_path: Path) -> None:
    """0013 adds columns to ``subscribers`` in place: a copy of the table (Alembic's batch
    mode) would have deleted every area row by the cascade and lost AUTOINCREMENT."""
    url = make_config(tmp_path).database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "0012")
    engine = create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys=ON"))
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO subscribers (id, address, status, category_mask, link_key,"
                    " created_at, updated_at, bounce_score) VALUES (7, 'a@example.jp',"
                    " 'active', 31, 'k', '2026-12-05 00:00:00', '2026-12-05 00:00:00', 0)"
                )
            )
            connection.execute(text("INSERT INTO subscriber_areas VALUES (7, 'aoba')"))
        command.upgrade(alembic_config(url), "0013")
        with engine.connect() as connection:
            areas = connection.execute(text("SELECT * FROM subscriber_areas")).all()
            hours = connection.execute(
                text("SELECT hours_start, hours_end, hours_urgent FROM subscribers")
            ).all()
            if engine.dialect.name == "sqlite":
                table = connection.scalar(
                    text("SELECT sql FROM sqlite_master WHERE name = 'subscribers'")
                )
                assert "AUTOINCREMENT" in table
        assert [tuple(a) for a in areas] == [(7, "aoba")]
        assert [tuple(h) for h in hours] == [(None, None, False)]
        command.downgrade(alembic_config(url), "0012")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM subscriber_areas")).scalar() == 1
    finally:
        engine.dispose()
