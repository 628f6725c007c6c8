"""The latest preflight report each gateway ran when its link could not reach its best tier.

Revision ID: r0007
Revises: r0006
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "r0007"
down_revision: str | None = "r0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_preflight",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float(precision=53), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column(
            "report", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("gateway_id", name="pk_gateway_preflight"),
    )


def downgrade() -> None:
    op.drop_table("gateway_preflight")
