"""Indexes for reading the audit log by actor, by target and by action, newest first: without
them, each filtered page read the log by id from its newest entry until it found enough.

Revision ID: r0010
Revises: r0009
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0010"
down_revision: str | None = "r0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, leading column): each ends in audit_id, the order a page is read in.
_INDEXES = (
    ("ix_audit_log_actor_audit_id", "actor"),
    ("ix_audit_log_target_audit_id", "target"),
    ("ix_audit_log_action_audit_id", "action"),
)


def upgrade() -> None:
    for name, column in _INDEXES:
        op.create_index(name, "audit_log", [column, "audit_id"], unique=False)


def downgrade() -> None:
    for name, _column in reversed(_INDEXES):
        op.drop_index(name, table_name="audit_log")
