"""Health reports (raw and hourly) and gateway logs.

Revision ID: r0006
Revises: r0005
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "r0006"
down_revision: str | None = "r0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIGURES = (
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "temperature_max",
    "net_rx_bps",
    "net_tx_bps",
    "spool_depth",
    "spool_dropped",
)


def upgrade() -> None:
    f = sa.Float(precision=53)
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "health_reports",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("ts", f, nullable=False),
        *(sa.Column(name, f, nullable=True) for name in FIGURES),
        sa.Column("data", json, nullable=False),
    )
    op.create_index("ix_health_reports_gateway_id_ts", "health_reports", ["gateway_id", "ts"])
    op.create_table(
        "health_hourly",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("hour", f, nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        *(sa.Column(name, f, nullable=True) for name in FIGURES),
        sa.PrimaryKeyConstraint("gateway_id", "hour", name="pk_health_hourly"),
    )
    op.create_table(
        "gateway_logs",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("ts", f, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("customer_data", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("fields", json, nullable=True),
    )
    op.create_index("ix_gateway_logs_gateway_id_ts", "gateway_logs", ["gateway_id", "ts"])


def downgrade() -> None:
    op.drop_table("gateway_logs")
    op.drop_table("health_hourly")
    op.drop_table("health_reports")
