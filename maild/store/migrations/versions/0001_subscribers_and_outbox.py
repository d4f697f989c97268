"""subscribers and outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28 23:06:35.315056
"""

import sqlalchemy as sa
from alembic import op

import maild.store.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", maild.store.db.UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", maild.store.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", maild.store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_due", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("category_mask", sa.Integer(), nullable=False),
        sa.Column("link_key", sa.String(length=32), nullable=False),
        sa.Column("created_at", maild.store.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", maild.store.db.UTCDateTime(), nullable=False),
        sa.Column("activated_at", maild.store.db.UTCDateTime(), nullable=True),
        sa.Column("last_answer_at", maild.store.db.UTCDateTime(), nullable=True),
        sa.Column("bounce_score", sa.Integer(), nullable=False),
        sa.Column("last_bounce_at", maild.store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscribers_status"), ["status"], unique=False)

    op.create_table(
        "subscriber_areas",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("area_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscriber_id", "area_id"),
    )
    with op.batch_alter_table("subscriber_areas", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscriber_areas_area", ["area_id", "subscriber_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("subscriber_areas", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriber_areas_area")

    op.drop_table("subscriber_areas")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscribers_status"))

    op.drop_table("subscribers")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_due")

    op.drop_table("outbox")
