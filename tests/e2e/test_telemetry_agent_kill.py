"""``kill -9`` of the agent, again and again, during a heavy upload: the cloud ends up holding
every observation the spool took, exactly once.

The agent runs as a child process (tests/e2e/telemetry_agent.py) with the simulated building at
~5,800 observations/s; it prints every append the spool made durable. It is killed at seeded
random moments (after a random number of appends), restarted, and killed again. Then the
connector is switched off, the agent drains its spool, and the cloud's store is compared with
the spool's sequence numbers and with what the building produced for each printed append.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import httpx
from tests.e2e.telemetry_agent import (
    SIMULATED,
    STREAM,
    AgentProcess,
    cloud_rows,
    connectors_config,
    present_per_append,
    read_spool,
)
from tests.support.cloudproc import Cloud, create_token, enroll_gateway

KILLS = 5


async def put_connectors(api: httpx.AsyncClient, gateway_id: str, **kw: Any) -> int:
    response = await api.put(
        f"/api/v1/gateways/{gateway_id}/config/connectors", json=connectors_config(**kw)
    )
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


async def streams(api: httpx.AsyncClient, gateway_id: str) -> dict[str, dict[str, Any]]:
    response = await api.get(f"/api/v1/gateways/{gateway_id}/streams")
    assert response.status_code == 200, response.text
    return {s["stream"]: s for s in response.json()}


async def test_kill_9_of_the_agent_loses_and_doubles_nothing(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient
) -> None:
    gw_dir = tmp_path / "gw"
    code = (await create_token(api, name="killed"))["enrollment_code"]
    gateway_id = (await enroll_gateway(code, gw_dir)).gateway_id
    await put_connectors(api, gateway_id)

    rng = random.Random(0x7E7)
    runs: list[AgentProcess] = []
    for k in range(KILLS):
        agent = await AgentProcess(gw_dir).start()
        runs.append(agent)
        target = rng.randint(1, 12)
        if k == 0:  # the first run gets its configuration over the link, then uploads
            await agent.wait(lambda a=agent: a.acks, "a first acknowledgement")
        await agent.wait(
            lambda a=agent, n=target: len(a.appends) >= n, f"{target} appends in run {k}"
        )
        code = await agent.kill()
        assert code == -9

    version = await put_connectors(api, gateway_id, enabled=False)
    final = await AgentProcess(gw_dir).start()
    runs.append(final)
    [config] = await final.wait(
        lambda: [c for c in final.configs if c["config"] == version], "the connector switched off"
    )
    assert config["ok"], config
    last = config["last_seqs"][STREAM]
    await final.wait(lambda: final.acks.get(STREAM, 0) >= last, f"the ack of {last}")
    assert await final.stop() == 0

    # The spool: every sequence number it handed out was acknowledged, nothing dropped.
    spool = read_spool(gw_dir)
    assert spool.last_seqs == {STREAM: last}
    assert (spool.held, spool.dropped) == (0, 0)

    # The cloud: sequence numbers 1..last, each stored once, no gap.
    [stream] = (await streams(api, gateway_id)).values()
    assert stream["stream"] == STREAM
    assert stream["last_seq"] == last
    assert stream["accepted"] == last
    assert stream["gaps"] == 0
    assert stream["dropped_on_gateway"] == 0
    rows = cloud_rows(cloud.database, gateway_id)
    assert len(rows) == last
    assert len({(point, ts) for point, ts, _ in rows}) == last, "an observation is doubled"

    # Every append the spool confirmed to the connector is there, with the building's values.
    appends = [a for run in runs for a in run.appends]
    assert len(appends) >= KILLS
    assert present_per_append(rows, appends, SIMULATED) == [a.n for a in appends]
    # Sequence numbers are handed out once: the printed ranges follow one another, and what
    # lies between them is at most one append per kill (made durable, killed before printing).
    ranges = sorted((a.first, a.last) for a in appends)
    assert all(b[0] > a[1] for a, b in itertools.pairwise(ranges))
    unprinted = last - sum(a.n for a in appends)
    assert 0 <= unprinted <= KILLS * max(a.n for a in appends)
