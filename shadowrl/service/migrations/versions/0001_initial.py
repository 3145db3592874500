"""The first schema: deployments, jobs, verdicts and schedules.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scenario", sa.Text(), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("scenario_hash", sa.String(64), nullable=True),
        sa.Column("synced_at", sa.Float(), nullable=True),
        sa.Column("drift", sa.Integer(), nullable=False),
        sa.Column("drift_changes", sa.Text(), nullable=True),
        sa.Column("procedure_source", sa.String(16), nullable=False),
        sa.Column("procedure_job", sa.Integer(), nullable=True),
        sa.Column("procedure_path", sa.Text(), nullable=True),
        sa.Column("published_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("out_dir", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_jobs_deployment", "jobs", ["deployment"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    op.create_index("ix_verdicts_deployment", "verdicts", ["deployment"])
    op.create_table(
        "schedules",
        sa.Column("deployment", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("next_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_index("ix_verdicts_deployment", "verdicts")
    op.drop_table("verdicts")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_deployment", "jobs")
    op.drop_table("jobs")
    op.drop_table("deployments")
