"""Several cloud worker processes sharing one port, with PostgreSQL carrying the wake-ups.

A command submitted through whichever worker answers the API must reach a gateway whose link
another worker holds (PostgreSQL LISTEN/NOTIFY), and each command runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.cloudproc import (
    CloudProcess,
    cloud_settings,
    create_token,
    run_command,
    running_agent,
    wait_for,
)
from tests.support.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


class WorkersProcess(CloudProcess):
    def __init__(self, data_dir: Path, database: str, workers: int) -> None:
        super().__init__(data_dir)
        self.workers = workers
        self.cloud.settings = cloud_settings(data_dir, port=self.port, database_url=database)

    @property
    def argv(self) -> list[str]:
        return [*super().argv, "--workers", str(self.workers)]


@pytest.fixture
async def pg_url(postgres_server: PostgresServer) -> AsyncIterator[str]:  # noqa: F811
    url = await postgres_server.create_database()
    yield url
    await postgres_server.drop_database(url)


async def test_commands_reach_links_held_by_other_workers(tmp_path: Path, pg_url: str) -> None:
    process = WorkersProcess(tmp_path / "cloud", pg_url, workers=2)
    cloud = await process.start()
    try:
        async with cloud.api() as api:
            agents = []
            async with contextlib.AsyncExitStack() as stack:
                for i in range(6):
                    token = await create_token(api, name=f"site-{i}")
                    agent = await stack.enter_async_context(
                        running_agent(tmp_path / f"gw{i}", code=token["enrollment_code"])
                    )
                    agents.append(agent)
                for agent in agents:
                    await agent.wait_linked()
                # Links spread over both workers; the API request lands on either. Every
                # command must arrive, whichever worker took it.
                results = await asyncio.gather(
                    *(run_command(api, a.gateway_id, "ping") for a in agents for _ in range(2))
                )
                assert [r["state"] for r in results] == ["succeeded"] * 12
                for agent in agents:
                    seen = agent.agent.ledger.unacknowledged()
                    assert all(e.state == "succeeded" for e in seen)

                async def all_linked() -> bool:
                    listing = (await api.get("/api/v1/gateways")).json()
                    return sum(g["linked"] for g in listing) == len(agents)

                await wait_for(all_linked, what="every gateway shown linked")
    finally:
        assert await process.stop() in (0, -15)


async def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    process = WorkersProcess(tmp_path / "cloud", f"sqlite+aiosqlite:///{tmp_path}/x.db", 2)
    proc = await asyncio.create_subprocess_exec(
        *process.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"needs PostgreSQL" in out


async def test_workers_refuse_too_small_a_share_of_database_connections(tmp_path: Path) -> None:
    # Refused before anything starts: the URL's server is never dialled.
    process = WorkersProcess(tmp_path / "cloud", "postgresql+asyncpg://tether@127.0.0.1:9/x", 20)
    proc = await asyncio.create_subprocess_exec(
        *process.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out
    said = " ".join(out.decode().split())  # the error is wrapped to the terminal
    assert "90 gives each of 20 worker processes 4 PostgreSQL connections" in said
    assert "set it to 100 or more" in said
    assert not (tmp_path / "cloud").exists()  # nothing was prepared
