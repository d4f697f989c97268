"""subscribers' own receiving hours, deliveries held until then (issue 18 item 5)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 01:10:00

Plain ADD COLUMN and DROP COLUMN, never a batch copy of ``subscribers``: on SQLite a copy
drops the old table, and with foreign keys on that deletes every ``subscriber_areas`` row
(ON DELETE CASCADE); it would also lose the table's AUTOINCREMENT.
"""

import sqlalchemy as sa
from alembic import op

import maild.store.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SUBSCRIBER_COLUMNS = ("hours_start", "hours_end", "hours_urgent")


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("hours_start", sa.Integer(), nullable=True))
    op.add_column("subscribers", sa.Column("hours_end", sa.Integer(), nullable=True))
    op.add_column(
        "subscribers",
        sa.Column("hours_urgent", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # Nullable without a default: no rewrite of a large deliveries table.
    op.add_column(
        "deliveries", sa.Column("not_before", maild.store.db.UTCDateTime(), nullable=True)
    )


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN on both backends (SQLite 3.35+): no copy of the tables.
    op.execute("ALTER TABLE deliveries DROP COLUMN not_before")
    for column in reversed(SUBSCRIBER_COLUMNS):
        op.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
