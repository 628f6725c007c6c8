"""Migrations: applied on open, idempotent, safe to race, and matching the table definitions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from tether.cloud.store import Store
from tether.cloud.store.models import metadata
from tether.cloud.store.store import MIGRATIONS_DIR

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _heads() -> list[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = sorted(ScriptDirectory.from_config(cfg).get_heads())
    assert heads
    return heads


async def _versions(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        return sorted(row[0] for row in rows)


async def test_open_twice_is_idempotent_and_keeps_data(store_url: str) -> None:
    first = await Store.open(store_url)
    try:
        await first.create_gateway(gateway_id="gw-1", name="boiler room", now=NOW)
        assert await _versions(first) == _heads()
    finally:
        await first.close()
    second = await Store.open(store_url)
    try:
        assert await _versions(second) == _heads()
        gateway = await second.get_gateway("gw-1")
        assert gateway is not None
        assert gateway.name == "boiler room"
    finally:
        await second.close()


async def test_nodes_starting_together_migrate_once(store_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(store_url) for _ in range(3)))
    try:
        for store in stores:
            assert await _versions(store) == _heads()
        await stores[0].create_gateway(gateway_id="gw-1", name="a", now=NOW)
        assert [g.gateway_id for g in await stores[2].list_gateways()] == ["gw-1"]
    finally:
        for store in stores:
            await store.close()


async def test_schema_matches_table_definitions(store: Store) -> None:
    def diff(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_downgrade_to_base_then_upgrade_again(store: Store) -> None:
    def run(conn: Connection, target: str, upgrade: bool) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        if upgrade:
            command.upgrade(cfg, target)
        else:
            command.downgrade(cfg, target)

    def tables(conn: Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    async with store.engine.begin() as conn:
        await conn.run_sync(run, "base", False)
        assert tables_after_down(await conn.run_sync(tables))
        await conn.run_sync(run, "heads", True)
        assert {"gateways", "commands", "audit_log"} <= await conn.run_sync(tables)
    assert await _versions(store) == _heads()


def tables_after_down(tables: set[str]) -> bool:
    return not tables & {t.name for t in metadata.sorted_tables}
