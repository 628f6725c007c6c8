"""An index for the login throttle, which counts failed logins in the audit log (shared by
every worker process) instead of in each process's memory.

Revision ID: r0008
Revises: r0007
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0008"
down_revision: str | None = "r0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_log_action_source_at", "audit_log", ["action", "source", "at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_action_source_at", table_name="audit_log")
