"""subscribers' own receiving hours, deliveries held until then (issue 18 item 5)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 01:10:00
"""

import sqlalchemy as sa
from alembic import op

import maild.store.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hours_start", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hours_end", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("hours_urgent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # A nullable column without a default: no rewrite of a large deliveries table.
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", maild.store.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("not_before")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("hours_urgent")
        batch_op.drop_column("hours_end")
        batch_op.drop_column("hours_start")
