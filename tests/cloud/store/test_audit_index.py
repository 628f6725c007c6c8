"""The audit log's filtered pages read an index: on SQLite the query plan says which; on both
SQLite and PostgreSQL the migrations create the indexes and take them away again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from tether.cloud.store import Store
from tether.cloud.store.store import MIGRATIONS_DIR, AuditFilter, audit_select

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

#: Each filter's index and its columns, as the migration makes them.
INDEXES = {
    "ix_audit_log_actor_audit_id": ["actor", "audit_id"],
    "ix_audit_log_target_audit_id": ["target", "audit_id"],
    "ix_audit_log_action_audit_id": ["action", "audit_id"],
}


def _indexes(conn: Connection) -> dict[str, list[str | None]]:
    return {
        i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("audit_log") if i["name"]
    }


def _migrate(conn: Connection, target: str, upgrade: bool) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    if upgrade:
        command.upgrade(cfg, target)
    else:
        command.downgrade(cfg, target)


async def test_the_migration_makes_the_filters_indexes_and_takes_them_away(store: Store) -> None:
    async with store.engine.begin() as conn:
        found = await conn.run_sync(_indexes)
        assert {name: found.get(name) for name in INDEXES} == INDEXES
        await conn.run_sync(_migrate, "r0009", False)
        down = await conn.run_sync(_indexes)
        assert not set(INDEXES) & set(down)
        assert "ix_audit_log_action_source_at" in down  # what r0009 had stays
        await conn.run_sync(_migrate, "heads", True)
        assert {name: (await conn.run_sync(_indexes)).get(name) for name in INDEXES} == INDEXES


async def _plan(store: Store, where: AuditFilter, before_id: int | None = None) -> list[str]:
    """SQLite's plan for the audit page :func:`audit_select` makes, one step a line."""
    compiled = audit_select(where, before_id=before_id, limit=50).compile(
        dialect=store.engine.dialect
    )
    params = compiled.construct_params()
    values = tuple(params[name] for name in compiled.positiontup or ())
    async with store.engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)
        return [str(row[3]) for row in rows]


async def test_a_filtered_page_reads_its_index_on_sqlite(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    try:
        for n in range(60):
            await store.audit(
                actor=f"user{n % 3} (admin)",
                action=("token.create", "gateway.revoke", "command.send")[n % 3],
                target=f"gw-{n % 7}",
                detail=None,
                source="198.51.100.4",
                now=NOW + timedelta(seconds=n),
            )
        for where, before_id, index in (
            (AuditFilter(actor="user1 (admin)"), None, "ix_audit_log_actor_audit_id"),
            (AuditFilter(actor="user1 (admin)"), 30, "ix_audit_log_actor_audit_id"),
            (AuditFilter(target="gw-3"), None, "ix_audit_log_target_audit_id"),
            (AuditFilter(target="gw-3"), 30, "ix_audit_log_target_audit_id"),
            (AuditFilter(action="gateway.revoke"), None, "ix_audit_log_action_audit_id"),
            (AuditFilter(action="gateway.revoke"), 30, "ix_audit_log_action_audit_id"),
        ):
            plan = await _plan(store, where, before_id)
            assert any(index in step for step in plan), (where, before_id, plan)
            # the index gives the page's order too: nothing is sorted after reading
            assert not any("TEMP B-TREE" in step for step in plan), (where, plan)
        unfiltered = await _plan(store, AuditFilter())
        assert not any("ix_audit_log_" in step for step in unfiltered), unfiltered
    finally:
        await store.close()
