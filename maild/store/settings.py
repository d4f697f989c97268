"""Values every node must agree on, by name, in the ``settings`` table.

Written once by whichever node comes first and read by the others: :func:`first_value`
is an insert that keeps the row already there, so two nodes starting at once agree on
one value (the two backends say "insert unless there" each in its own dialect).
"""

from __future__ import annotations

from sqlalchemy import Connection, Insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from maild.store.models import Setting


def value(connection: Connection, name: str) -> str | None:
    return connection.scalar(select(Setting.value).where(Setting.name == name))


def first_value(connection: Connection, name: str, proposed: str) -> str:
    """``proposed`` unless the setting has a value already; returns the value it has now."""
    statement: Insert
    if connection.dialect.name == "postgresql":
        statement = postgresql.insert(Setting).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(Setting).on_conflict_do_nothing()
    connection.execute(statement.values(name=name, value=proposed))
    stored = value(connection, name)
    assert stored is not None
    return stored


def replace(connection: Connection, name: str, old: str, new: str) -> bool:
    """Set ``name`` to ``new`` if it still is ``old``; False if another node changed it first."""
    result = connection.execute(
        update(Setting).where(Setting.name == name, Setting.value == old).values(value=new)
    )
    return bool(result.rowcount)
