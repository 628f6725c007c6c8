"""Command wake-ups: LISTEN/NOTIFY between two nodes on PostgreSQL, in-process on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from tests.support.postgres import PostgresServer

from tether.cloud.store import Store
from tether.cloud.store.notify import MISSED

WAIT_S = 10.0


class Inbox:
    """Collects gateway ids and lets a test wait until a given one has arrived."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._changed = asyncio.Condition()

    async def put(self, gateway_id: str) -> None:
        async with self._changed:
            self.received.append(gateway_id)
            self._changed.notify_all()

    def put_now(self, gateway_id: str) -> None:
        asyncio.get_running_loop().create_task(self.put(gateway_id))

    async def wait_for(self, gateway_id: str, within: float = WAIT_S) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: gateway_id in self.received)


async def test_notification_reaches_listeners_of_another_node(store_url: str) -> None:
    sender = await Store.open(store_url)
    receiver = await Store.open(store_url)
    try:
        inbox, sync_inbox = Inbox(), Inbox()
        async with receiver.listen_commands(inbox.put), sender.listen_commands(sync_inbox.put_now):
            await sender.notify_command("gw-7")
            await inbox.wait_for("gw-7")
            await sync_inbox.wait_for("gw-7")
        # Each node heard it once: through the database on PostgreSQL, or, on SQLite, because
        # both stores live in this process on the same database file.
        assert inbox.received == ["gw-7"]
        assert sync_inbox.received == ["gw-7"]
    finally:
        await sender.close()
        await receiver.close()


async def test_sqlite_notifications_stay_with_their_database(tmp_path: Path) -> None:
    first = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/a/cloud.db")
    second = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/b/cloud.db")
    try:
        mine, theirs = Inbox(), Inbox()
        async with first.listen_commands(mine.put), second.listen_commands(theirs.put):
            await second.notify_command("gw-1")
            await theirs.wait_for("gw-1")
            await first.notify_command("gw-2")
            await mine.wait_for("gw-2")
        assert mine.received == ["gw-2"]
        assert theirs.received == ["gw-1"]
    finally:
        await first.close()
        await second.close()


async def test_a_listener_stops_hearing_after_its_block(store: Store) -> None:
    leaving, staying = Inbox(), Inbox()
    async with store.listen_commands(staying.put):
        async with store.listen_commands(leaving.put):
            await store.notify_command("gw-1")
            await leaving.wait_for("gw-1")
            await staying.wait_for("gw-1")
        await store.notify_command("gw-2")
        # Both callbacks are dispatched together, so once "staying" has it, "leaving" would too.
        await staying.wait_for("gw-2")
    assert leaving.received == ["gw-1"]
    assert staying.received == ["gw-1", "gw-2"]


async def test_a_failing_listener_does_not_starve_the_others(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(gateway_id: str) -> None:
        raise RuntimeError(f"listener bug for {gateway_id}")

    async def broken_async(gateway_id: str) -> None:
        raise RuntimeError(f"async listener bug for {gateway_id}")

    inbox = Inbox()
    async with (
        store.listen_commands(broken),
        store.listen_commands(broken_async),
        store.listen_commands(inbox.put),
    ):
        await store.notify_command("gw-3")
        await inbox.wait_for("gw-3")
        await store.notify_command("gw-4")
        await inbox.wait_for("gw-4")
    assert inbox.received == ["gw-3", "gw-4"]
    assert "listener bug for gw-3" in caplog.text


async def test_awaiting_the_listener_first_is_accepted(store: Store) -> None:
    inbox = Inbox()
    async with await store.listen_commands(inbox.put):
        await store.notify_command("gw-5")
        await inbox.wait_for("gw-5")
    assert inbox.received == ["gw-5"]


async def test_listen_connection_is_restored_after_the_server_drops_it(
    postgres_server: PostgresServer,
) -> None:
    store_url = await postgres_server.create_database()
    sender, receiver = await Store.open(store_url), await Store.open(store_url)
    admin = await asyncpg.connect(store_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        inbox = Inbox()
        async with receiver.listen_commands(inbox.put):
            await sender.notify_command("gw-before")
            await inbox.wait_for("gw-before")
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            )
            assert killed == 1
            # Wake-ups sent while the listener is away are lost: once it is back, the listeners
            # are told so (MISSED), and look again at whatever they hold.
            await inbox.wait_for(MISSED)
            await sender.notify_command("gw-after")
            await inbox.wait_for("gw-after")
        assert inbox.received == ["gw-before", MISSED, "gw-after"]
    finally:
        await admin.close()
        await sender.close()
        await receiver.close()
        await postgres_server.drop_database(store_url)
