"""Per-gateway configuration sections (``connectors``…), versioned, with what the gateway took.

The cloud keeps the wanted document and its version; the gateway acknowledges each version it
applied (or refused, with the reason), so an operator sees whether a change reached the site.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from tether.cloud.store.models import JSONDocument, UTCDateTime, metadata
from tether.cloud.store.store import dialect_insert, write_transaction

__all__ = ["ConfigRecord", "ConfigStore", "gateway_config"]

gateway_config = sa.Table(
    "gateway_config",
    metadata,
    sa.Column("gateway_id", sa.String(64), primary_key=True),
    sa.Column("section", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("data", JSONDocument, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
    sa.Column("applied_version", sa.Integer(), nullable=True),
    sa.Column("applied_error", sa.Text(), nullable=True),
    sa.Column("applied_at", UTCDateTime(), nullable=True),
)


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    gateway_id: str
    section: str
    version: int
    data: dict[str, Any]
    updated_at: datetime
    updated_by: str
    applied_version: int | None
    applied_error: str | None
    applied_at: datetime | None

    @property
    def pending(self) -> bool:
        return self.applied_version != self.version


def _record(row: Any) -> ConfigRecord:
    return ConfigRecord(
        row.gateway_id,
        row.section,
        row.version,
        dict(row.data),
        row.updated_at,
        row.updated_by,
        row.applied_version,
        row.applied_error,
        row.applied_at,
    )


class ConfigStore:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name

    async def put(
        self, gateway_id: str, section: str, data: dict[str, Any], *, by: str
    ) -> ConfigRecord:
        """Store a new version of *section* (the version grows by one each time)."""
        now = datetime.now(UTC)
        insert = dialect_insert(self.dialect, gateway_config)
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                insert.values(
                    gateway_id=gateway_id,
                    section=section,
                    version=1,
                    data=data,
                    updated_at=now,
                    updated_by=by,
                ).on_conflict_do_update(
                    index_elements=["gateway_id", "section"],
                    set_={
                        "version": gateway_config.c.version + 1,
                        "data": insert.excluded.data,
                        "updated_at": now,
                        "updated_by": by,
                    },
                )
            )
            row = (
                await conn.execute(
                    sa.select(gateway_config).where(
                        gateway_config.c.gateway_id == gateway_id,
                        gateway_config.c.section == section,
                    )
                )
            ).one()
        return _record(row)

    async def get(self, gateway_id: str, section: str) -> ConfigRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(gateway_config).where(
                        gateway_config.c.gateway_id == gateway_id,
                        gateway_config.c.section == section,
                    )
                )
            ).one_or_none()
        return _record(row) if row is not None else None

    async def all_for(self, gateway_id: str) -> list[ConfigRecord]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(gateway_config)
                    .where(gateway_config.c.gateway_id == gateway_id)
                    .order_by(gateway_config.c.section)
                )
            ).all()
        return [_record(r) for r in rows]

    async def applied(self, gateway_id: str, section: str, version: int, error: str | None) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                gateway_config.update()
                .where(
                    gateway_config.c.gateway_id == gateway_id,
                    gateway_config.c.section == section,
                    gateway_config.c.version == version,
                )
                .values(applied_version=version, applied_error=error, applied_at=datetime.now(UTC))
            )
