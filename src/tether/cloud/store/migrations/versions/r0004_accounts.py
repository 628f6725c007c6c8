"""Operator accounts: users, console sessions, and the owner of each API token.

Revision ID: r0004
Revises: r0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "r0004"
down_revision: str | None = "r0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("password_changed_at", ts, nullable=False),
        sa.Column("disabled_at", ts, nullable=True),
        sa.Column("last_login_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("user_id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "sessions",
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("last_seen", ts, nullable=False),
        sa.Column("source", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("session_hash", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.user_id"], name="fk_sessions_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])
    op.create_table(
        "api_token_owners",
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_api_token_owners"),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.token_id"],
            name="fk_api_token_owners_token_id_api_tokens",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name="fk_api_token_owners_user_id_users",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_api_token_owners_user_id", "api_token_owners", ["user_id"])


def downgrade() -> None:
    op.drop_table("api_token_owners")
    op.drop_table("sessions")
    op.drop_table("users")
