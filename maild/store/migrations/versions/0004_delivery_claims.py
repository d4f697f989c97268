"""delivery claims

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:31:36.900985
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_claim"), ["claim"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_claim"))
        batch_op.drop_column("claim")
