"""Per-gateway configuration sections with the version each gateway applied.

Revision ID: r0003
Revises: r0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "r0003"
down_revision: str | None = "r0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "gateway_config",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("section", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("applied_error", sa.Text(), nullable=True),
        sa.Column("applied_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("gateway_id", "section", name="pk_gateway_config"),
    )


def downgrade() -> None:
    op.drop_table("gateway_config")
