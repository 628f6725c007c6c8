"""Faults seen in the field, end to end: the agent against a real cloud on loopback.

A certificate renewed at the ``cloud_url`` override, a revoked gateway that stops again after a
restart, a refused configuration that stays refused, losses to a full disk reported, a cloned
identity recognised, repeated link errors folded and proxies named.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from tests.support.cloudproc import (
    Cloud,
    StartAgent,
    create_token,
    enroll_gateway,
    free_port,
    running_agent,
    running_cloud,
    start_agent,
    wait_for,
    wait_gateway,
)
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway import agent as agent_module
from tether.gateway.agent import REPLACED_BACKOFF, AgentStopped
from tether.gateway.spool import SpoolFull
from tether.protocol.telemetry import Observation

DEAD_URL = "https://127.0.0.1:{port}"


def _observations(n: int, start: int = 0) -> list[Observation]:
    return [Observation("p-1", 1_700_000_000.0 + start + i, float(i)) for i in range(n)]


async def test_renewal_goes_to_the_cloud_url_override_and_keeps_the_enrolled_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    lifetime = timedelta(seconds=6)
    async with (
        running_cloud(tmp_path / "cloud", certificate_lifetime=lifetime) as cloud,
        cloud.api() as api,
    ):
        code = (await create_token(api, name="moved"))["enrollment_code"]
        identity = await enroll_gateway(code, tmp_path / "gw")
        # The host named at enrollment is gone; agent.toml points at where the cloud is now.
        old = DEAD_URL.format(port=free_port())
        meta_path = identity.directory / "identity.json"
        meta = json.loads(meta_path.read_text())
        meta["cloud_url"] = old
        meta_path.write_text(json.dumps(meta))
        async with running_agent(tmp_path / "gw", cloud_url=cloud.url) as gw:
            await gw.wait_linked()
            first = gw.agent.identity.certificate.serial_number
            await wait_for(
                lambda: gw.agent.identity.certificate.serial_number != first,
                within=4 * lifetime.total_seconds(),
                what="the certificate to be renewed at the override URL",
            )
            assert gw.agent.identity.cloud_url == old  # the enrollment record is unchanged
            assert json.loads(meta_path.read_text())["cloud_url"] == old
        assert f"linked to {cloud.url} on tier" in caplog.text
        assert f"linked to {old}" not in caplog.text
        assert "certificate renewal failed" not in caplog.text


@pytest.mark.parametrize("tier", ["ws", "long-poll", "poll"])
async def test_a_revoked_gateway_started_again_stops_with_the_revoked_exit(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, tier: str
) -> None:
    code = (await create_token(api, name=f"revoked-{tier}"))["enrollment_code"]
    await enroll_gateway(code, tmp_path / "gw")
    first = start_agent(tmp_path / "gw")
    await first.wait_linked()
    response = await api.post(f"/api/v1/gateways/{first.gateway_id}/revoke")
    assert response.status_code == 200, response.text
    with pytest.raises(AgentStopped):
        await first.task

    # Started again (a service manager restarting it): the refusal says revoked, it stops.
    again = start_agent(tmp_path / "gw", tier=tier)
    with pytest.raises(AgentStopped, match="revoked"):
        await wait_for(lambda: again.task.done() and again.task.result(), what="the stop")
    assert again.agent.status.links_opened == 0


async def test_a_refused_connectors_config_is_refused_again_when_delivered_again(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("refuses")
    document = {"instances": {"x": {"connector": "no-such-connector"}}}
    response = await api.put(f"/api/v1/gateways/{gw.gateway_id}/config/connectors", json=document)
    assert response.status_code == 200, response.text
    version = response.json()["version"]

    async def refused() -> dict[str, object] | None:
        sections = (await api.get(f"/api/v1/gateways/{gw.gateway_id}/config")).json()
        found = [s for s in sections if s["section"] == "connectors"]
        return found[0] if found and found[0]["applied_error"] else None

    first = await wait_for(refused, what="the cloud to record the refusal")
    assert "no-such-connector" in str(first["applied_error"])

    # A redelivery (every new link brings the section again) gets the same answer.
    ack = await gw.agent._apply_config("connectors", version, document)
    assert not ack.ok
    assert ack.error is not None
    assert "no-such-connector" in ack.error
    opened = gw.agent.status.links_opened
    gw.agent.request_restart("relink")
    await wait_for(lambda: gw.agent.status.links_opened > opened, what="a new link")
    again = await wait_for(refused, what="the refusal after the redelivery")
    assert again["applied_error"] == first["applied_error"]
    assert again["applied_version"] == version


async def test_submits_refused_by_a_full_disk_are_lost_counted_logged_and_reported(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway.agent")
    code = (await create_token(api, name="full-disk"))["enrollment_code"]
    with mounted_tmpfs("3m") as where:
        async with running_agent(where / "gw", code=code) as gw:
            await gw.wait_linked()
            # Something else fills the disk.
            with (where / "filler").open("wb") as filler:
                for _ in range(1000):  # bounded: 3 MiB fill up after a few
                    try:
                        filler.write(b"\0" * 65536)
                        filler.flush()
                    except OSError:
                        break
            refused = 0
            for batch in range(200):
                try:
                    await gw.agent.append("building", _observations(500, batch * 500))
                except SpoolFull:
                    refused += 500
                    break
            assert refused, "the disk never filled up"
            assert gw.agent.refused["building"] == refused
            assert "the spool refused" in caplog.text
            assert "disk is full" in caplog.text
            streams_url = f"/api/v1/gateways/{gw.gateway_id}/streams"

            async def reported() -> bool:
                streams = (await api.get(streams_url)).json()
                return any(
                    s["stream"] == "building" and s["dropped_on_gateway"] >= refused
                    for s in streams
                )

            await wait_for(reported, what="the cloud to count the refused observations")


async def test_drops_at_the_spool_bound_are_logged_locally(
    start_agent: StartAgent, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway.agent")
    monkeypatch.setattr(agent_module, "DROP_CHECK_EVERY", 0.0)
    # The cloud cannot be reached: nothing drains, so the bound is met within a few appends.
    dead = DEAD_URL.format(port=free_port())
    gw = await start_agent("bounded", linked=False, cloud_url=dead, spool_max_bytes=128 * 1024)
    spool = await wait_for(lambda: gw.agent.spool, what="the spool to open")
    assert spool is not None
    appended = 0
    for batch in range(50):  # bounded: the bound holds about three of these appends
        await gw.agent.append("building", _observations(2000, batch * 2000))
        appended += 2000
        if await spool.drop_report(include_reported=True):
            break
    drops = await spool.drop_report(include_reported=True)
    assert drops, "the spool bound never dropped anything"
    dropped = drops["building"].total
    assert 0 < dropped < appended
    assert (await spool.depth()).observations == appended - dropped
    await wait_for(lambda: "the spool dropped the oldest" in caplog.text, what="the local warning")
    assert f"the spool dropped the oldest {dropped} of building" in caplog.text
    assert gw.agent.status.links_opened == 0


async def test_a_cloned_identity_is_named_and_the_agents_back_off(
    tmp_path: Path, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway.agent")
    code = (await create_token(api, name="cloned"))["enrollment_code"]
    identity = await enroll_gateway(code, tmp_path / "a")
    shutil.copytree(identity.directory, tmp_path / "b" / "identity")
    async with running_agent(tmp_path / "a") as a, running_agent(tmp_path / "b") as b:

        def backing_off() -> bool:
            waits = (a.agent.status.retry_in, b.agent.status.retry_in)
            return any(w is not None and w >= REPLACED_BACKOFF[0] for w in waits)

        await wait_for(backing_off, within=60.0, what="an agent to back off")
        assert "probably running with this gateway's identity" in caplog.text
        assert identity.gateway_id in caplog.text
        # The cloud keeps one of them linked.
        await wait_gateway(api, identity.gateway_id, lambda g: bool(g["linked"]))


async def test_repeated_link_errors_are_folded_and_read_the_same(
    tmp_path: Path, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    code = (await create_token(api, name="unreachable"))["enrollment_code"]
    dead = f"https://localhost:{free_port()}"  # a DNS name: the preflight checks it
    async with running_agent(
        tmp_path / "gw", code=code, cloud_url=dead, tier="ws", preflight_interval=3600.0
    ) as gw:
        await wait_for(lambda: gw.agent.status.errors >= 4, what="several failed attempts")
        await wait_for(lambda: gw.agent.preflight.last_report, what="the preflight")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("link: ")]
    assert all("object at 0x" not in line and "ssl:" not in line for line in lines), lines
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"link: cannot reach {dead}/link")
    assert lines[1] == f"{lines[0]} (repeated {gw.agent.status.errors - 1} times)"
    preflight = [r.getMessage() for r in caplog.records if "preflight: fail" in r.getMessage()]
    assert preflight, caplog.text
    assert "failed: " in preflight[0], preflight
    assert "object at 0x" not in caplog.text


async def test_a_proxy_that_cannot_be_reached_is_named_without_its_credentials(
    start_agent: StartAgent,
) -> None:
    proxy_port = free_port()
    gw = await start_agent(
        "behind-proxy", linked=False, proxy=f"http://site:s3cret@127.0.0.1:{proxy_port}"
    )
    error = await wait_for(lambda: gw.agent.status.last_error, what="the link error")
    assert error.startswith(f"cannot reach the proxy http://127.0.0.1:{proxy_port}"), error
    assert "s3cret" not in error
