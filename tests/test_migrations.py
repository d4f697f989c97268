"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from maild.store import models  # noqa: F401  (registers the tables)
from maild.store.db import Base, alembic_config, upgrade


def _compare(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    _compare(f"sqlite:///{tmp_path / 'maild.db'}")


def test_models_and_migrations_agree_on_postgresql(postgresql: Callable[[], str]) -> None:
    _compare(postgresql())


def test_the_newest_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'maild.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "-1")
    _compare(url)
