"""Users, their grants on experiments and registered models, and secrets shared by server processes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cairn_users",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("created_time", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cairn_users"),
        sa.UniqueConstraint("name", name="uq_cairn_users_name"),
        sa.UniqueConstraint("token_hash", name="uq_cairn_users_token_hash"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "cairn_user_permissions",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(256), nullable=False),
        sa.Column("permission", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "resource_type", "resource", name="pk_cairn_user_permissions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["cairn_users.id"], ondelete="CASCADE", name="fk_cairn_user_permissions_user_id_cairn_users"
        ),
        sa.CheckConstraint("permission IN ('READ', 'EDIT', 'MANAGE')", name="ck_cairn_user_permissions_permission"),
    )
    op.create_index(
        "ix_cairn_user_permissions_resource_type_resource", "cairn_user_permissions", ["resource_type", "resource"]
    )
    op.create_table(
        "cairn_server_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cairn_server_secrets"),
    )


def downgrade() -> None:
    op.drop_table("cairn_server_secrets")
    op.drop_index("ix_cairn_user_permissions_resource_type_resource", table_name="cairn_user_permissions")
    op.drop_table("cairn_user_permissions")
    op.drop_table("cairn_users")
