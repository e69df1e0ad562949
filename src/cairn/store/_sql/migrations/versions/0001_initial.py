"""Initial tracking schema: experiments, runs, params, tags, metrics, latest metrics.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LIFECYCLE_CHECK = "lifecycle_stage IN ('active', 'deleted')"
_PREFIX = 200  # characters of param/tag values in the (key, value) indexes


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("experiment_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("artifact_location", sa.String(1000), nullable=False),
        sa.Column("lifecycle_stage", sa.String(32), nullable=False),
        sa.Column("creation_time", sa.BigInteger),
        sa.Column("last_update_time", sa.BigInteger),
        sa.PrimaryKeyConstraint("experiment_id", name="pk_experiments"),
        sa.UniqueConstraint("name", name="uq_experiments_name"),
        sa.CheckConstraint(_LIFECYCLE_CHECK, name="ck_experiments_lifecycle_stage"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "experiment_tags",
        sa.Column("experiment_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "key", name="pk_experiment_tags"),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.experiment_id"],
            ondelete="CASCADE",
            name="fk_experiment_tags_experiment_id_experiments",
        ),
    )
    op.create_table(
        "runs",
        sa.Column("run_uuid", sa.String(32), nullable=False),
        sa.Column("name", sa.String(250), nullable=False),
        sa.Column("experiment_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=False),
        sa.Column("end_time", sa.BigInteger),
        sa.Column("lifecycle_stage", sa.String(32), nullable=False),
        sa.Column("artifact_uri", sa.String(1000), nullable=False),
        sa.Column("deleted_time", sa.BigInteger),
        sa.PrimaryKeyConstraint("run_uuid", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.experiment_id"], name="fk_runs_experiment_id_experiments"
        ),
        sa.CheckConstraint(_LIFECYCLE_CHECK, name="ck_runs_lifecycle_stage"),
    )
    op.create_index(
        "ix_runs_experiment_id_lifecycle_stage_start_time", "runs", ["experiment_id", "lifecycle_stage", "start_time"]
    )
    for table in ("params", "tags"):
        op.create_table(
            table,
            sa.Column("run_uuid", sa.String(32), nullable=False),
            sa.Column("key", sa.String(250), nullable=False),
            sa.Column("value", sa.Text, nullable=False),
            sa.PrimaryKeyConstraint("run_uuid", "key", name=f"pk_{table}"),
            sa.ForeignKeyConstraint(
                ["run_uuid"], ["runs.run_uuid"], ondelete="CASCADE", name=f"fk_{table}_run_uuid_runs"
            ),
        )
        op.create_index(f"ix_{table}_key_value", table, ["key", sa.text(f"substr(value, 1, {_PREFIX})")])
    op.create_table(
        "metrics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_uuid", sa.String(32), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("is_nan", sa.Boolean, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_metrics"),
        sa.ForeignKeyConstraint(["run_uuid"], ["runs.run_uuid"], ondelete="CASCADE", name="fk_metrics_run_uuid_runs"),
    )
    op.create_index("ix_metrics_run_uuid_key_step", "metrics", ["run_uuid", "key", "step"])
    op.create_table(
        "latest_metrics",
        sa.Column("run_uuid", sa.String(32), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("is_nan", sa.Boolean, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("run_uuid", "key", name="pk_latest_metrics"),
        sa.ForeignKeyConstraint(
            ["run_uuid"], ["runs.run_uuid"], ondelete="CASCADE", name="fk_latest_metrics_run_uuid_runs"
        ),
    )
    op.create_index("ix_latest_metrics_key_value", "latest_metrics", ["key", "value"])


def downgrade() -> None:
    for table in ("latest_metrics", "metrics", "tags", "params", "runs", "experiment_tags", "experiments"):
        op.drop_table(table)
