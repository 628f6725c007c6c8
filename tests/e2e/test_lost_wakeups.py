"""Wake-ups lost while a cloud's LISTEN connection was down are made good once it is back.

Another node (here a second store on the same PostgreSQL database) queues a command and revokes
a gateway without this cloud hearing of either: as when their NOTIFYs came while this cloud's
LISTEN connection was down. The server then drops that connection; once the cloud has it back, it
looks again at every link it holds: the revoked gateway's link is closed, and the command reaches
the other gateway and runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from tests.support.cloudproc import (
    create_token,
    running_agent,
    running_cloud,
    wait_command,
)
from tests.support.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)

from tether.cloud.store import Store
from tether.gateway.agent import AgentStopped

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg_url(postgres_server: PostgresServer) -> AsyncIterator[str]:  # noqa: F811
    url = await postgres_server.create_database()
    yield url
    await postgres_server.drop_database(url)


async def test_a_restored_listener_closes_revoked_links_and_delivers_what_waited(
    tmp_path: Path, pg_url: str
) -> None:
    async with (
        running_cloud(tmp_path / "cloud", database_url=pg_url) as cloud,
        cloud.api() as api,
    ):
        codes = [(await create_token(api, name=f"site-{i}"))["enrollment_code"] for i in (1, 2)]
        async with (
            running_agent(tmp_path / "gw-1", code=codes[0]) as revoked,
            running_agent(tmp_path / "gw-2", code=codes[1]) as kept,
        ):
            await revoked.wait_linked()
            await kept.wait_linked()

            other_node = await Store.open(pg_url)
            try:
                now = datetime.now(UTC)
                await other_node.revoke_gateway(revoked.gateway_id, now=now)
                command = await other_node.create_command(
                    gateway_id=kept.gateway_id,
                    kind="ping",
                    args={},
                    expires_at=now + timedelta(minutes=5),
                    created_by="other-node",
                    now=now,
                )
            finally:
                await other_node.close()

            admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
            try:
                dropped = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            finally:
                await admin.close()
            assert dropped == 1

            done = await wait_command(api, command.command_id, within=30)
            assert done["state"] == "succeeded", done
            with pytest.raises(AgentStopped, match="revoked"):
                await asyncio.wait_for(revoked.task, 30)
            assert kept.agent.linked.is_set()
