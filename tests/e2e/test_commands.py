"""Enrollment, link and command round trips between a real cloud and a real agent over TLS."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
from tests.support.cloudproc import (
    StartAgent,
    create_token,
    enroll_gateway,
    run_command,
    running_agent,
    running_cloud,
    send_command,
    wait_command,
    wait_for,
    wait_gateway,
)

from tether import __version__
from tether.gateway.ledger import LedgerEntry


def _times(command: dict[str, object]) -> list[datetime]:
    stamps = [command["created_at"], command["delivered_at"], command["started_at"]]
    stamps.append(command["finished_at"])
    assert all(isinstance(s, str) for s in stamps), command
    return [datetime.fromisoformat(str(s)) for s in stamps]


async def test_enrolled_agent_links_and_shows_in_the_fleet(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    assert gw.agent.status.tier == "ws"
    gateway = await wait_gateway(api, gw.gateway_id, lambda g: g["linked"], what="linked")
    assert gateway["name"] == "building-1"
    assert gateway["tier"] == "ws"
    assert gateway["agent_version"] == __version__
    assert gateway["revoked"] is False
    assert gateway["peer"] == "127.0.0.1"
    assert gateway["cert_not_after"] is not None
    listing = (await api.get("/api/v1/gateways")).json()
    assert [g["id"] for g in listing] == [gw.gateway_id]


async def test_ping_round_trip_records_every_state(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    done = await run_command(api, gw.gateway_id, "ping")
    assert done["state"] == "succeeded", done
    assert done["error"] is None
    assert done["result"]["pong"] is True
    assert done["result"]["agent_version"] == __version__
    created, delivered, started, finished = _times(done)
    assert created <= delivered <= started <= finished

    # The agent stops re-sending the outcome once the cloud acknowledged it.
    def acknowledged() -> LedgerEntry | None:
        entry = gw.agent.ledger.get(done["id"])
        return entry if entry is not None and entry.acked_state == entry.state else None

    entry = await wait_for(acknowledged, what="the acknowledgement in the agent's ledger")
    assert entry.state == "succeeded"
    assert gw.agent.ledger.unacknowledged() == []


async def test_metrics_round_trip(api: httpx.AsyncClient, start_agent: StartAgent) -> None:
    gw = await start_agent("building-1")
    done = await run_command(api, gw.gateway_id, "metrics")
    assert done["state"] == "succeeded", done
    result = done["result"]
    assert 0 <= result["cpu_percent"] <= 100 * result["cpu_count"]
    assert result["memory"]["total"] > 0
    assert 0 < result["memory"]["available"] <= result["memory"]["total"]
    assert result["disk"]["total"] > 0
    assert 0 <= result["disk"]["free"] <= result["disk"]["total"]
    assert result["disk"]["path"] == str(gw.agent.settings.data_dir)
    assert result["agent"]["version"] == __version__
    assert result["agent"]["rss"] > 0
    assert all(t is not None for t in _times(done))


async def test_a_failing_command_is_reported_failed_with_its_reason(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    refused = await run_command(api, gw.gateway_id, "reboot")
    assert refused["state"] == "failed"
    assert "no reboot hook is configured" in refused["error"]
    # A kind outside the table is refused by the cloud before it is queued.
    before = (await api.get("/api/v1/commands")).json()
    unknown = await api.post(
        f"/api/v1/gateways/{gw.gateway_id}/commands", json={"kind": "no-such-kind"}
    )
    assert unknown.status_code == 400
    assert "unknown command kind 'no-such-kind'" in unknown.json()["error"]
    assert "ping" in unknown.json()["error"]  # the known kinds are named
    assert (await api.get("/api/v1/commands")).json() == before


async def test_a_kind_the_cloud_allows_but_the_agent_lacks_fails_with_its_reason(
    tmp_path: Path,
) -> None:
    cloud = running_cloud(tmp_path / "cloud", extra_command_kinds=("custom",))
    async with cloud as running, running.api() as api:
        code = (await create_token(api, name="building-1"))["enrollment_code"]
        gateway_id = (await enroll_gateway(code, tmp_path / "gw")).gateway_id
        async with running_agent(tmp_path / "gw"):
            done = await run_command(api, gateway_id, "custom")
    assert done["state"] == "failed"
    assert "unknown command kind 'custom'" in done["error"]


async def test_commands_reach_only_their_own_gateway(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    first = await start_agent("building-1")
    second = await start_agent("building-2")
    done = await run_command(api, second.gateway_id, "set-config", {"label": "north wing"})
    assert done["state"] == "succeeded", done
    assert done["result"] == {"config": {"label": "north wing"}}
    assert second.agent.runtime_config == {"label": "north wing"}
    assert first.agent.runtime_config == {}
    assert first.agent.ledger.get(done["id"]) is None


async def test_set_config_takes_every_log_level_the_agent_knows(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("levels")
    done = await run_command(api, gw.gateway_id, "set-config", {"log_level": "critical"})
    assert done["state"] == "succeeded", done
    refused = await run_command(api, gw.gateway_id, "set-config", {"log_level": "loud"})
    assert refused["state"] == "failed", refused
    assert "debug, info, warning, error, critical" in refused["error"]


async def test_command_queued_while_offline_runs_when_the_gateway_links(
    tmp_path: Path, api: httpx.AsyncClient
) -> None:
    code = (await create_token(api, name="late-riser"))["enrollment_code"]
    identity = await enroll_gateway(code, tmp_path / "gw")
    waiting = await send_command(api, identity.gateway_id, "ping")
    assert waiting["state"] == "queued"
    # Pushed when the link opens, not when the agent first says something (its heartbeat,
    # 30 s by default, longer than this wait).
    async with running_agent(tmp_path / "gw") as gw:
        done = await wait_command(api, waiting["id"])
        assert done["state"] == "succeeded"
        assert gw.agent.ledger.get(waiting["id"]) is not None


async def test_a_pushed_command_is_answered_delivered_with_its_timing(
    api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    response = await api.post(
        f"/api/v1/gateways/{gw.gateway_id}/commands", json={"kind": "ping", "args": {}}
    )
    assert response.status_code == 201, response.text
    sent = response.json()
    # The link is held by this cloud process: pushed and recorded delivered before the answer.
    assert sent["state"] in ("delivered", "running", "succeeded"), sent
    assert sent["delivered_at"] is not None
    steps = [part.split(";")[0] for part in response.headers["Server-Timing"].split(", ")]
    assert steps == ["auth", "queue", "push", "mark", "total"]
    done = await wait_command(api, sent["id"])
    assert done["state"] == "succeeded", done
    assert done["delivered_at"] == sent["delivered_at"]
    audit = (await api.get("/api/v1/audit")).json()
    [entry] = [a for a in audit if a["action"] == "command.send" and a["target"] == sent["id"]]
    assert entry["detail"] == {"gateway": gw.gateway_id, "kind": "ping", "args": {}}
    assert entry["source"] == "127.0.0.1"
