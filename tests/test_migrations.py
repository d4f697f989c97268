"""The Alembic migrations build exactly the schema the models describe, and go down and
up again, on the backend of this half of the suite (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
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
