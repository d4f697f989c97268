"""drop APScheduler's job table

Release jobs are now built from the alerts table at every start
(maild.alerts.release); nothing reads the persistent job store any more. Its
rows were pickles naming ``maild.scheduler:release_job``, a module that no longer
exists, so they could not be loaded anyway.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_apscheduler_jobs_next_run_time", table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")


def downgrade() -> None:
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25), index=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
    )
