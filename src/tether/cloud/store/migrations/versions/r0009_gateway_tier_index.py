"""An index for the sweeper's look for silent HTTPS-tier gateways, which every cloud process
makes every few seconds: without it, each look read every gateway of the fleet.

Revision ID: r0009
Revises: r0008
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0009"
down_revision: str | None = "r0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_gateways_tier_last_seen", "gateways", ["tier", "last_seen"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_gateways_tier_last_seen", table_name="gateways")
