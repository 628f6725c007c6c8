"""Link history: each gateway's current tier, the reason, and recent tier changes.

Revision ID: r0005
Revises: r0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "r0005"
down_revision: str | None = "r0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_links",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "history", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("gateway_id", name="pk_gateway_links"),
    )


def downgrade() -> None:
    op.drop_table("gateway_links")
