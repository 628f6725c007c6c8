"""Telemetry: observations, per-stream high-water marks, discovered devices and points.

Revision ID: r0002
Revises: r0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "r0002"
down_revision: str | None = "r0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    big = sa.BigInteger()
    op.create_table(
        "telemetry_streams",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(128), nullable=False),
        sa.Column("hwm", big, nullable=False, server_default="0"),
        sa.Column("accepted", big, nullable=False, server_default="0"),
        sa.Column("duplicates", big, nullable=False, server_default="0"),
        sa.Column("gaps", big, nullable=False, server_default="0"),
        sa.Column("dropped_reported", big, nullable=False, server_default="0"),
        sa.Column("updated_at", ts, nullable=True),
        sa.PrimaryKeyConstraint("gateway_id", "stream", name="pk_telemetry_streams"),
    )
    op.create_table(
        "observations",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("point_id", sa.String(255), nullable=False),
        sa.Column("ts", sa.Float(precision=53), nullable=False),
        sa.Column("value_num", sa.Float(precision=53), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("quality", sa.String(16), nullable=False),
    )
    op.create_index(
        "ix_observations_gateway_id_point_id_ts", "observations", ["gateway_id", "point_id", "ts"]
    )
    op.create_table(
        "devices",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(255), nullable=False),
        sa.Column("connector", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(255), nullable=False, server_default=""),
        sa.Column("model", sa.String(255), nullable=False, server_default=""),
        sa.Column("location", sa.String(255), nullable=False, server_default=""),
        sa.Column("attributes", _json(), nullable=True),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "device_id", name="pk_devices"),
    )
    op.create_table(
        "points",
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("point_id", sa.String(255), nullable=False),
        sa.Column("device_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False, server_default=""),
        sa.Column("writable", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("last_ts", sa.Float(precision=53), nullable=True),
        sa.Column("last_value_num", sa.Float(precision=53), nullable=True),
        sa.Column("last_value_text", sa.Text(), nullable=True),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "point_id", name="pk_points"),
    )


def downgrade() -> None:
    op.drop_table("points")
    op.drop_table("devices")
    op.drop_index("ix_observations_gateway_id_point_id_ts", table_name="observations")
    op.drop_table("observations")
    op.drop_table("telemetry_streams")
