"""The cloud killed (SIGKILL) and restarted in the middle of ingest, twice: the store ends
up holding every observation the gateway's spool took, exactly once.

The cloud runs as ``tether cloud serve`` (a child process), the agent as the recording child
process of tests/e2e/telemetry_agent.py with the simulated building at ~5,800 observations/s.
Each kill lands right after an acknowledgement reached the agent, while the next batches are
being committed; the agent keeps spooling while the cloud is away and replays when it is back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.telemetry_agent import (
    SIMULATED,
    STREAM,
    AgentProcess,
    cloud_rows,
    connectors_config,
    present_per_append,
    read_spool,
)
from tests.support.cloudproc import Cloud, CloudProcess, create_token, enroll_gateway

KILLS = 2


async def put_connectors(cloud: Cloud, gateway_id: str, **kw: Any) -> int:
    async with cloud.api() as api:
        response = await api.put(
            f"/api/v1/gateways/{gateway_id}/config/connectors", json=connectors_config(**kw)
        )
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


async def streams(cloud: Cloud, gateway_id: str) -> dict[str, dict[str, Any]]:
    async with cloud.api() as api:
        response = await api.get(f"/api/v1/gateways/{gateway_id}/streams")
    assert response.status_code == 200, response.text
    return {s["stream"]: s for s in response.json()}


@pytest.mark.parametrize(
    "tier",
    [
        pytest.param("ws", id="websocket"),
        # Links that die young count against their tier: after the second kill the agent
        # moves down to HTTPS long-poll, and the same exactly-once must hold there.
        pytest.param(None, id="auto"),
    ],
)
async def test_a_cloud_killed_mid_ingest_loses_and_doubles_nothing(
    tmp_path: Path, tier: str | None
) -> None:
    process = CloudProcess(tmp_path / "cloud")
    cloud = await process.start()
    agent: AgentProcess | None = None
    try:
        gw_dir = tmp_path / "gw"
        async with cloud.api() as api:
            code = (await create_token(api, name="steady"))["enrollment_code"]
        gateway_id = (await enroll_gateway(code, gw_dir)).gateway_id
        await put_connectors(cloud, gateway_id)
        agent = await AgentProcess(gw_dir, tier=tier).start()

        rng = random.Random(0xC10D)
        for k in range(KILLS):
            acked = agent.acks.get(STREAM, 0)
            await agent.wait(lambda a=acked: agent.acks.get(STREAM, 0) > a, f"ingest ({k})")
            assert await process.kill() == -9
            # The gateway goes on taking observations while its cloud is gone.
            n = len(agent.appends) + rng.randint(1, 5)
            await agent.wait(lambda n=n: len(agent.appends) >= n, "appends while down")
            await process.start()
        await agent.wait(lambda: agent.links >= KILLS + 1, "a link to each cloud process")
        if tier is not None:
            assert set(agent.tiers) == {tier}

        version = await put_connectors(cloud, gateway_id, enabled=False)
        config = await agent.config_applied(version, "the connector off")
        last = config["last_seqs"][STREAM]
        await agent.wait(lambda: agent.acks.get(STREAM, 0) >= last, f"the ack of {last}")
        assert await agent.stop() == 0
        agent.config_repeats_agree(version)

        spool = read_spool(gw_dir)
        assert spool.last_seqs == {STREAM: last}
        assert (spool.held, spool.dropped) == (0, 0)

        [stream] = (await streams(cloud, gateway_id)).values()
        assert (stream["stream"], stream["last_seq"], stream["accepted"]) == (STREAM, last, last)
        assert (stream["gaps"], stream["dropped_on_gateway"]) == (0, 0)
        rows = cloud_rows(cloud.database, gateway_id)
        assert len(rows) == last
        assert len({(point, ts) for point, ts, _ in rows}) == last, "an observation is doubled"
        assert sum(a.n for a in agent.appends) == last  # the agent was never killed
        assert present_per_append(rows, agent.appends, SIMULATED) == [a.n for a in agent.appends]
    finally:
        if agent is not None and agent.process is not None:
            await agent.kill()
        await process.kill()
