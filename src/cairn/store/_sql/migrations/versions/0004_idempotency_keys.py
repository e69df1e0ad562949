"""Idempotency keys: a log-batch carrying a key is written once; a replay of the same key is a no-op.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("created_time", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_time", "idempotency_keys", ["created_time"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_time", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
