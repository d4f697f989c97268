"""alert message key: the random part of an alert's Message-IDs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:00:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_key", sa.String(length=32), nullable=True))
    # Alerts from before get a key too, so a fan-out in progress keeps one Message-ID
    # per delivery from here on.
    alerts = sa.table("alerts", sa.column("id", sa.Integer), sa.column("message_key", sa.String))
    connection = op.get_bind()
    for (alert_id,) in connection.execute(sa.select(alerts.c.id)).all():
        connection.execute(
            alerts.update().where(alerts.c.id == alert_id).values(message_key=secrets.token_hex(8))
        )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column("message_key", existing_type=sa.String(length=32), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("message_key")
