"""streaming release: recipients written in parts; claims name their node

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fill_next", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("fill_end", sa.Integer(), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("fill_end")
        batch_op.drop_column("fill_next")
