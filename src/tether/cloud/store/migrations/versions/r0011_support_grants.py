"""Support grants: a support user may reach a gateway only under one, scoped and time-limited.

Revision ID: r0011
Revises: r0010
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "r0011"
down_revision: str | None = "r0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "support_grants",
        sa.Column("grant_id", sa.String(32), nullable=False),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Column("revoked_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("grant_id", name="pk_support_grants"),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["gateways.gateway_id"],
            name="fk_support_grants_gateway_id_gateways",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_support_grants_gateway_id_username", "support_grants", ["gateway_id", "username"]
    )
    op.create_index("ix_support_grants_username", "support_grants", ["username"])


def downgrade() -> None:
    op.drop_table("support_grants")
