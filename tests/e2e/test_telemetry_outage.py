"""A link down for longer than the spool can hold: the oldest observations are dropped first,
counted, reported to the cloud, and everything else arrives exactly once.

The agent (a child process, tests/e2e/telemetry_agent.py) has a 256 KiB spool (agent.toml in its
data directory) and a simulated building producing ~290 KB/s. The cloud (``tether cloud serve``)
is stopped until the gateway has dropped several times what its spool holds, then started again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.e2e.telemetry_agent import (
    SIMULATED,
    STREAM,
    AgentProcess,
    cloud_rows,
    connectors_config,
    present_per_append,
    read_spool,
)
from tests.support.cloudproc import Cloud, CloudProcess, create_token, enroll_gateway, wait_for

SPOOL_BYTES = 256 * 1024


async def put_connectors(cloud: Cloud, gateway_id: str, **kw: Any) -> int:
    async with cloud.api() as api:
        response = await api.put(
            f"/api/v1/gateways/{gateway_id}/config/connectors", json=connectors_config(**kw)
        )
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


async def stream_record(cloud: Cloud, gateway_id: str) -> dict[str, Any]:
    async with cloud.api() as api:
        response = await api.get(f"/api/v1/gateways/{gateway_id}/streams")
    assert response.status_code == 200, response.text
    [record] = response.json()
    assert record["stream"] == STREAM
    result: dict[str, Any] = record
    return result


async def test_an_outage_longer_than_the_spool_drops_the_oldest_and_says_so(
    tmp_path: Path,
) -> None:
    process = CloudProcess(tmp_path / "cloud")
    cloud = await process.start()
    agent: AgentProcess | None = None
    try:
        gw_dir = tmp_path / "gw"
        async with cloud.api() as api:
            code = (await create_token(api, name="outage"))["enrollment_code"]
        gateway_id = (await enroll_gateway(code, gw_dir)).gateway_id
        (gw_dir / "agent.toml").write_text(f"spool_max_bytes = {SPOOL_BYTES}\n")
        await put_connectors(cloud, gateway_id)
        agent = await AgentProcess(gw_dir).start()
        await agent.wait(lambda: agent.acks.get(STREAM, 0) > 0, "the upload under way")

        assert await process.stop() == 0  # the link is down until the cloud is back
        acked_before = agent.acks[STREAM]
        committed_before = stored_mark(cloud.database, gateway_id)
        assert committed_before >= acked_before
        await agent.wait(
            lambda: agent.appends[-1].dropped >= 20_000, "drops of several spools' worth"
        )
        await process.start()

        version = await put_connectors(cloud, gateway_id, enabled=False)
        config = await agent.config_applied(version, "the connector off")
        last = config["last_seqs"][STREAM]
        await agent.wait(lambda: agent.acks.get(STREAM, 0) >= last, f"the ack of {last}")
        dropped = agent.appends[-1].dropped  # no append after this one: no drop either
        record = await wait_for(
            lambda: _reported(cloud, gateway_id, dropped), what="the drop report stored"
        )
        assert await agent.stop() == 0
        agent.config_repeats_agree(version)

        # The gateway's account: everything acknowledged or dropped, the drops reported.
        spool = read_spool(gw_dir)
        assert spool.last_seqs == {STREAM: last}
        assert spool.held == 0
        assert spool.dropped == spool.dropped_reported == dropped
        assert dropped >= 20_000

        # The cloud's account: the mark is the last sequence number; what it lacks is a gap.
        assert record["last_seq"] == last
        assert record["dropped_on_gateway"] == dropped
        gaps = record["gaps"]
        assert record["accepted"] + gaps == last
        rows = cloud_rows(cloud.database, gateway_id)
        assert len(rows) == record["accepted"]
        assert len({(point, ts) for point, ts, _ in rows}) == len(rows), "a doubled observation"

        # What is missing is one run of the oldest sequence numbers of the outage, all of them
        # dropped by the gateway; everything before and after it is there.
        present = present_per_append(rows, agent.appends, SIMULATED)
        missing: list[int] = []
        for a, held in zip(agent.appends, present, strict=True):
            missing += range(a.first, a.last - held + 1)
        assert len(missing) == gaps > 0
        assert missing == list(range(missing[0], missing[-1] + 1)), "missing is not one run"
        # Oldest first: the run starts right after what the cloud had when it stopped.
        assert missing[0] == committed_before + 1
        assert missing[-1] <= spool.last_dropped_seq, "missing but never dropped"
        # Dropped yet not missing: batches the cloud committed while the spool dropped them
        # (as the cloud stopped, before their acks arrived; or in flight as it came back).
        assert gaps <= dropped
    finally:
        if agent is not None and agent.process is not None:
            await agent.kill()
        await process.kill()


def stored_mark(database: str, gateway_id: str) -> int:
    """The stream's high-water mark in the store of a stopped cloud."""
    db = sqlite3.connect(f"file:{database.split(':///', 1)[1]}?mode=ro", uri=True)
    try:
        [(mark,)] = db.execute(
            "SELECT hwm FROM telemetry_streams WHERE gateway_id = ? AND stream = ?",
            (gateway_id, STREAM),
        ).fetchall()
    finally:
        db.close()
    return int(mark)


async def _reported(cloud: Cloud, gateway_id: str, dropped: int) -> dict[str, Any] | None:
    record = await stream_record(cloud, gateway_id)
    return record if record["dropped_on_gateway"] == dropped else None
