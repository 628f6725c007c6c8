"""Heartbeats keep idle links up: many pings pass and no link is dropped or reopened.

A deadline due "now" once became a receive timeout of 0, which aiohttp reads as no timeout at
all: the agent stopped pinging and the cloud dropped the link. With a 1 s heartbeat that showed
within seconds on a quarter of the links.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.cloudproc import create_token, running_agent, running_cloud, wait_for

from tether.gateway.link import WebSocketTier

pytestmark = pytest.mark.slow

LINKS = 6
PINGS = 8


async def test_idle_links_survive_many_heartbeats(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud", heartbeat_interval=1.0) as cloud,
        cloud.api() as api,
    ):
        agents = []
        for i in range(LINKS):
            token = await create_token(api, name=f"hb-{i}")
            ctx = running_agent(tmp_path / f"gw{i}", code=token["enrollment_code"])
            agents.append((ctx, await ctx.__aenter__()))
        try:
            for _, agent in agents:
                await agent.wait_linked()

            def pings(agent: object) -> int:
                tier = agent.agent._tier  # type: ignore[attr-defined]
                if not isinstance(tier, WebSocketTier) or tier.session is None:
                    return 0
                return tier.session._ping_seq

            await wait_for(
                lambda: all(pings(a) >= PINGS for _, a in agents),
                within=60,
                what=f"{PINGS} heartbeats on every link",
            )
            assert [a.agent.status.links_opened for _, a in agents] == [1] * LINKS
            listing = (await api.get("/api/v1/gateways")).json()
            assert sum(g["linked"] for g in listing) == LINKS
        finally:
            for ctx, _ in reversed(agents):
                await ctx.__aexit__(None, None, None)
