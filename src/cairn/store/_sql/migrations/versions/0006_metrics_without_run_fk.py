"""Metric points no longer reference ``runs`` by a foreign key: PostgreSQL checked it row by row on every
insert (half the cost of a ``COPY``). The store keeps its guarantees itself: a write checks (and on PostgreSQL
share-locks) the run row in the write's transaction, and purging a run deletes its points.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_FK = "fk_metrics_run_uuid_runs"


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":  # SQLite cannot drop a constraint: the table is rebuilt
        with op.batch_alter_table("metrics", recreate="always") as batch:
            batch.drop_constraint(_FK, type_="foreignkey")
    else:
        op.drop_constraint(_FK, "metrics", type_="foreignkey")


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM metrics WHERE run_uuid NOT IN (SELECT run_uuid FROM runs)"))
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table("metrics", recreate="always") as batch:
            batch.create_foreign_key(_FK, "runs", ["run_uuid"], ["run_uuid"], ondelete="CASCADE")
    else:
        op.create_foreign_key(_FK, "metrics", "runs", ["run_uuid"], ["run_uuid"], ondelete="CASCADE")
