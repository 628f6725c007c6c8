"""Link tiers through a real squid whose timeouts cut connections: down a tier, and back.

squid's ``read_timeout`` bounds how long a CONNECT tunnel may stay idle. Cut below the
WebSocket's idle gap (the cloud's heartbeat interval) and below ``unstable_after``, the agent's
WebSocket links die young: it moves to HTTPS long-poll, whose requests are shorter than the cut.
Cut below the long-poll wait too, and it moves to periodic poll. Restarted with normal timeouts
on the same port, squid lets the agent's probes through and the agent climbs back to the
WebSocket by itself. Commands run on every tier, and telemetry crosses every change exactly once.

Timings are scaled down so each test takes tens of seconds: the cloud's heartbeat is 20 s, the
agent probes upward every ~2 s, counts a link younger than 6 s as cut, and holds long-polls 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.cloudproc import (
    Cloud,
    RunningAgent,
    StartAgent,
    run_command,
    running_cloud,
    wait_for,
    wait_gateway,
)
from tests.support.testbed import nginx, squid
from tests.support.testbed.certs import ServerCert

from tether.gateway.agent import Agent
from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig
from tether.gateway.uploader import Uploader
from tether.pki.ca import CertificateAuthority
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.messages import TelemetryAck, TelemetryBatch

pytestmark = [pytest.mark.slow]

HEARTBEAT = 20.0
QUICK: dict[str, Any] = {
    "probe_interval": 2.0,
    "unstable_after": 6.0,
    "longpoll_wait": 3.0,
    "poll_interval": 1.0,
}
#: squid read timeouts (s): below the WebSocket's idle gap and unstable_after, above the
#: long-poll wait; then below the long-poll wait, above the poll interval.
CUTS_WEBSOCKET = 4
CUTS_LONG_POLL = 2
UPSTREAM_NAME = "cloud.tether.test"
#: Every wait for a tier change: a few probe rounds and link attempts on a busy machine.
TIER_WAIT = 40.0


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """The cloud, trusting the client certificate header from nginx on 127.0.0.1."""
    async with running_cloud(
        tmp_path / "cloud",
        heartbeat_interval=HEARTBEAT,
        trusted_proxies=("127.0.0.1",),
        extra_hostnames=("127.0.0.1", "::1", UPSTREAM_NAME),
    ) as running:
        yield running


class SiteProxy:
    """squid on one port, restarted with other timeouts as a site's admins would."""

    def __init__(self) -> None:
        self.proxy: squid.Squid | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, read_timeout: int | None = None) -> None:
        self.stop()
        self.proxy = squid.start_squid(read_timeout=read_timeout, port=self.port)
        self.port = self.proxy.port

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


@pytest.fixture
def site_proxy() -> Iterator[SiteProxy]:
    if not squid.available():
        pytest.skip("squid is not installed (scripts/sysdeps.sh)")
    proxy = SiteProxy()
    try:
        yield proxy
    finally:
        proxy.stop()


def _on(agent: Agent, tier: str) -> bool:
    return agent.linked.is_set() and agent.status.tier == tier


def _tier_changes(agent: Agent, since: int) -> list[str]:
    """The agent's tier changes recorded after its first *since* history entries."""
    return [line for _, line in agent.status.history[since:] if line.startswith("tier ")]


async def _settle_on(agent: Agent, tier: str) -> None:
    """Wait until the agent holds a link on *tier*, then until two more upward probes ran
    (and failed): it stays on the tier that works instead of climbing back into the cut."""
    await wait_for(lambda: _on(agent, tier), within=TIER_WAIT, what=f"the agent on {tier}")
    seen, probes = len(agent.status.history), agent.status.probes
    await wait_for(lambda: agent.status.probes >= probes + 2, within=TIER_WAIT, what="2 probes")
    assert _tier_changes(agent, seen) == []
    assert agent.status.tier == tier


async def _ping_on(api: httpx.AsyncClient, gw: RunningAgent, tier: str) -> None:
    seen = len(gw.agent.status.history)
    done = await run_command(api, gw.gateway_id, "ping", within=TIER_WAIT)
    assert done["state"] == "succeeded", done
    # It ran on that tier: the agent did not change tiers meanwhile.
    assert _tier_changes(gw.agent, seen) == []
    assert gw.agent.status.tier == tier


async def _back_to_websocket(api: httpx.AsyncClient, gw: RunningAgent) -> None:
    await wait_for(lambda: _on(gw.agent, "ws"), within=TIER_WAIT, what="the agent back on ws")
    await wait_gateway(api, gw.gateway_id, lambda g: g["linked"] and g["tier"] == "ws")
    assert any("a better tier answered the probe" in line for _, line in gw.agent.status.history)
    await _ping_on(api, gw, "ws")


async def test_websocket_cut_by_proxy_idle_timeout_long_poll_then_back(
    api: httpx.AsyncClient, start_agent: StartAgent, site_proxy: SiteProxy
) -> None:
    site_proxy.start(read_timeout=CUTS_WEBSOCKET)
    gw = await start_agent("cut-ws", proxy=site_proxy.url, **QUICK)
    await _settle_on(gw.agent, "long-poll")
    await _ping_on(api, gw, "long-poll")
    detail = (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()
    assert detail["gateway"]["tier"] == "long-poll"
    assert detail["tier_reason"].startswith("ws links die after"), detail

    site_proxy.start()  # same port, squid's default timeouts
    await _back_to_websocket(api, gw)


async def test_long_poll_cut_by_proxy_idle_timeout_poll_then_back(
    api: httpx.AsyncClient, start_agent: StartAgent, site_proxy: SiteProxy
) -> None:
    site_proxy.start(read_timeout=CUTS_LONG_POLL)
    gw = await start_agent("cut-long-poll", proxy=site_proxy.url, **QUICK)
    await _settle_on(gw.agent, "poll")
    await _ping_on(api, gw, "poll")
    detail = (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()
    assert detail["gateway"]["tier"] == "poll"
    assert "long-polls cut after" in detail["tier_reason"], detail
    assert [h["tier"] for h in detail["tier_history"]][-3:] == ["ws", "long-poll", "poll"]

    site_proxy.start()
    await _back_to_websocket(api, gw)


# --- telemetry across tier changes -------------------------------------------------------------

STREAM = "building"


@pytest.fixture
def load_balancer(cloud: Cloud) -> Iterator[nginx.LoadBalancer]:
    if not nginx.available():
        pytest.skip("nginx is not installed (scripts/sysdeps.sh)")
    ca = CertificateAuthority.load_or_create(cloud.settings.pki_dir)
    key_pem, chain_pem = ca.issue_server(
        ["127.0.0.1"], lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    lb = nginx.LoadBalancer(
        upstream=f"https://127.0.0.1:{cloud.port}",
        server_cert=ServerCert(cert_pem=chain_pem, key_pem=key_pem, chain_pem=chain_pem),
        ca_path=cloud.ca_path,
        upstream_name=UPSTREAM_NAME,
        client_cert_header="X-Tether-Client-Cert",
    )
    try:
        yield lb
    finally:
        lb.stop()


async def _telemetry_flows_on(agent: Agent, uploader: Uploader, tier: str) -> None:
    await wait_for(lambda: _on(agent, tier), within=TIER_WAIT, what=f"the agent on {tier}")
    acked = uploader.stats.observations_acked

    def flowing() -> bool:
        return uploader.stats.observations_acked > acked + 1000 and _on(agent, tier)

    await wait_for(flowing, within=TIER_WAIT, what=f"telemetry acknowledged on {tier}")


class Building:
    """Feeds the agent a simulated building's readings, 96 points five times a second."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.model = BuildingModel(SimulatedBuildingConfig(seed=7))
        self.appended = 0
        self.t = 1_718_000_000.0
        self._task: asyncio.Task[None] | None = None

    async def _feed(self) -> None:
        while True:
            observations = self.model.observations_at(self.t)
            self.t += 1.0  # each poll its own timestamp: (point, ts) is unique per reading
            await self.agent.append(STREAM, observations)
            self.appended += len(observations)
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._feed())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _store_counts(database: Path, gateway_id: str) -> tuple[int, int, tuple[int, int, int]]:
    """Rows stored, distinct (point, ts) among them, and the stream's (hwm, accepted, dups)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT count(*) FROM observations WHERE gateway_id = ?", (gateway_id,)
        ).fetchone()[0]
        distinct = db.execute(
            "SELECT count(*) FROM (SELECT DISTINCT point_id, ts FROM observations"
            " WHERE gateway_id = ?)",
            (gateway_id,),
        ).fetchone()[0]
        mark = db.execute(
            "SELECT hwm, accepted, duplicates FROM telemetry_streams"
            " WHERE gateway_id = ? AND stream = ?",
            (gateway_id, STREAM),
        ).fetchone()
    return int(rows), int(distinct), (int(mark[0]), int(mark[1]), int(mark[2]))


async def test_telemetry_crosses_tier_changes_exactly_once(
    cloud: Cloud,
    api: httpx.AsyncClient,
    start_agent: StartAgent,
    load_balancer: nginx.LoadBalancer,
) -> None:
    load_balancer.start(websocket=True)
    gw = await start_agent(
        "busy", cloud_url=load_balancer.url, upload_batch=200, upload_window=4, **QUICK
    )
    agent = gw.agent
    assert agent.uploader is not None
    uploader = agent.uploader
    building = Building(agent)
    building.start()
    try:
        # Each stage: nginx restarted (every open connection cut), the agent on the tier that
        # passes, and telemetry acknowledged on that tier before the next change.
        stages: list[tuple[str, dict[str, Any]]] = [
            ("ws", {"websocket": True}),
            ("long-poll", {"websocket": False}),
            ("poll", {"websocket": False, "read_timeout": 1}),
            ("ws", {"websocket": True}),
        ]
        for number, (tier, config) in enumerate(stages):
            if number:
                load_balancer.start(**config)
            await _telemetry_flows_on(agent, uploader, tier)
    finally:
        await building.stop()
    appended = building.appended
    assert agent.spool is not None
    spool = agent.spool
    last_seq = (await spool.last_seqs())[STREAM]
    assert last_seq == appended
    database = cloud.data_dir / "tether.db"

    def committed() -> bool:
        return _store_counts(database, gw.gateway_id)[2][0] == last_seq

    await wait_for(committed, within=TIER_WAIT, what="the cloud to commit the spool's last seq")
    rows, distinct, (hwm, accepted, duplicates) = await asyncio.to_thread(
        _store_counts, database, gw.gateway_id
    )
    assert hwm == last_seq
    assert accepted == appended
    assert rows == appended  # nothing lost, nothing stored twice
    assert distinct == rows
    [stream] = (await api.get(f"/api/v1/gateways/{gw.gateway_id}/streams")).json()
    assert stream["last_seq"] == last_seq
    assert stream["accepted"] == appended
    assert stream["gaps"] == 0
    assert stream["duplicates"] == duplicates == uploader.stats.duplicates
    history = (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()["tier_history"]
    assert [h["tier"] for h in history][-4:] == ["ws", "long-poll", "poll", "ws"], history
    # Why it went to poll, in words: nginx's status line, not its HTML error page.
    assert history[-2]["reason"].endswith("(long-poll exchange answered 504: Gateway Time-out)")

    # A batch sent again (its acknowledgement lost) is counted, never stored twice.
    first = BuildingModel(SimulatedBuildingConfig(seed=7)).observations_at(1_718_000_000.0)
    again = TelemetryBatch(stream=STREAM, first_seq=1, last_seq=len(first), observations=first)
    async with httpx.AsyncClient(
        verify=agent.identity.ssl_context(), trust_env=False, timeout=20.0
    ) as client:
        response = await client.post(
            f"{load_balancer.url}/link/exchange",
            params={"tier": "poll"},
            content=encode_frames([again]),
            headers={"Content-Type": "application/x-tether-frames"},
        )
    assert response.status_code == 200, response.text
    decoder = FrameDecoder(max_frame=1 << 20)
    [ack] = decoder.feed(response.content)
    assert isinstance(ack, TelemetryAck)
    assert (ack.last_seq, ack.duplicates) == (len(first), len(first))
    rows_after, _, (_, accepted_after, duplicates_after) = await asyncio.to_thread(
        _store_counts, database, gw.gateway_id
    )
    assert (rows_after, accepted_after) == (rows, accepted)
    assert duplicates_after == duplicates + len(first)
