"""``tether gateway status`` next to a real agent linked (or not) to a real cloud on loopback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from tests.support.cloudproc import (
    DEFAULT_TIMEOUT,
    Cloud,
    StartAgent,
    create_token,
    enroll_gateway,
    running_cloud,
    start_agent,
    tether_script,
    wait_for,
)
from typer.testing import CliRunner

import tether.gateway.agent
from tether.cli import app
from tether.gateway.connectors import (
    ConnectorContext,
    ConnectorManifest,
    ConnectorRegistry,
    IotClass,
    builtin_registry,
)
from tether.gateway.status import STATUS_FILE
from tether.protocol.telemetry import DeviceInfo, Discovery

#: What a site's field-bus login looks like in a connector's settings.
PASSWORD = "field-bus-pw-" + os.urandom(6).hex()


class SiteBusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str
    username: str
    password: str


class SiteBus:
    """A connector with credentials in its settings: connects (nothing to do) and idles."""

    def __init__(self, config: SiteBusConfig) -> None:
        self.config = config

    async def start(self, ctx: ConnectorContext) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def discover(self) -> Discovery:
        return Discovery(devices=(DeviceInfo(device_id="bus/1", name="Bus", kind="plc"),))


def _registry() -> ConnectorRegistry:
    registry = builtin_registry()
    registry.register(
        ConnectorManifest(
            name="site-bus",
            version="1.0.0",
            description="a field bus that needs a login",
            config_schema=SiteBusConfig,
            iot_class=IotClass.LOCAL_POLLING,
        ),
        SiteBus,
    )
    return registry


def _document(data_dir: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads((data_dir / STATUS_FILE).read_bytes())
    except FileNotFoundError:
        return None
    return document


def _status_in_process(data_dir: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["gateway", "status", "--data-dir", str(data_dir), *extra], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.output


def _status_subprocess(data_dir: Path) -> tuple[int, dict[str, Any]]:
    """``tether gateway status --json`` from another process, as on a gateway."""
    done = subprocess.run(
        [str(tether_script()), "gateway", "status", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


async def test_a_linked_agent_is_shown_running_and_linked_with_no_secret_in_its_file(
    tmp_path: Path,
    api: httpx.AsyncClient,
    start_agent: StartAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tether.gateway.agent, "builtin_registry", _registry)
    gw = await start_agent("status-linked")
    data_dir = gw.agent.settings.data_dir
    settings = {"host": "10.20.0.5", "username": "tether", "password": PASSWORD}
    response = await api.put(
        f"/api/v1/gateways/{gw.gateway_id}/config/connectors",
        json={"instances": {"plant": {"connector": "site-bus", "config": settings}}},
    )
    assert response.status_code == 200, response.text

    def shown() -> dict[str, Any] | None:
        document = _document(data_dir)
        if document is None or not document["link"]["linked"]:
            return None
        plant = document["connectors"].get("plant")
        return document if plant is not None and plant["state"] == "running" else None

    document = await wait_for(shown, what="the status file to show the link and the connector")
    path = data_dir / STATUS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert PASSWORD.encode() not in raw
    assert b"10.20.0.5" not in raw  # no configuration at all, credentials or not
    assert b"PRIVATE KEY" not in raw
    assert document["gateway_id"] == gw.gateway_id
    assert document["pid"] == os.getpid()
    assert document["stopped"] is None

    # Read from another process, as on a gateway: the agent (this process) holds its stores.
    code, shown_json = _status_subprocess(data_dir)
    assert code == 0, shown_json
    assert shown_json["running"] is True
    assert shown_json["pid"] == os.getpid()
    assert shown_json["running_checked_by"] == "locks"
    assert shown_json["stale"] is False
    assert shown_json["linked"] is True
    assert shown_json["identity"]["gateway_id"] == gw.gateway_id
    assert gw.gateway_id in shown_json["identity"]["certificate_subject"]
    assert shown_json["identity"]["certificate_days_left"] > 0
    status = shown_json["status"]
    assert status["link"]["tier"] == "ws"
    assert status["link"]["links_opened"] >= 1
    assert status["gateway_id"] == gw.gateway_id
    # The agent's links held all along: the spool and the ledger are still its own.
    assert gw.agent.linked.is_set()
    assert not gw.task.done()

    code, text = _status_in_process(data_dir)
    assert code == 0, text
    assert gw.gateway_id in text
    assert f"agent: running (pid {os.getpid()})" in text
    assert "plant" in text
    assert PASSWORD not in text


async def test_an_agent_whose_cloud_is_down_is_shown_running_not_linked_with_its_error(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "gw"
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = (await create_token(api, name="status-down"))["enrollment_code"]
        await enroll_gateway(code, data_dir)
        gw = start_agent(data_dir, health_interval=1.0)
        try:
            await gw.wait_linked()
        except BaseException:
            await gw.stop()
            raise
        lost_at = time.time()  # the cloud stops as this block ends
    try:
        await gw.wait_unlinked()

        def unlinked() -> dict[str, Any] | None:
            document = _document(data_dir)
            if document is None or document["updated_at"] < lost_at:
                return None
            link = document["link"]
            return document if not link["linked"] and link["last_error"] else None

        # Written by the agent while it has no link (each failed attempt changes the link).
        document = await wait_for(unlinked, what="the status file to show the lost link")
        assert document["link"]["since"] >= lost_at
        assert document["link"]["state"] in {"connecting", "waiting"}
        # The health figures go on being measured for the file at each interval, unsent.
        first = await wait_for(
            lambda: (d := _document(data_dir)) and d["health_at"] > lost_at and d["health_at"],
            what="a health report built after the link was lost",
        )
        document = await wait_for(
            lambda: (d := _document(data_dir)) and d["health_at"] > first and d,
            what="a second one, begun while unlinked",
        )
        assert document["system"]["disk"]["total"] > 0
        assert not gw.agent.linked.is_set()

        code, text = _status_in_process(data_dir, "--json")
        assert code == 1, text
        shown = json.loads(text)
        assert shown["running"] is True
        assert shown["stale"] is False
        assert shown["linked"] is False
        assert shown["status"]["link"]["last_error"]
        assert str(cloud.port) in shown["status"]["link"]["last_error"]

        code, text = _status_in_process(data_dir)
        assert code == 1
        assert "agent: running" in text
        assert shown["status"]["link"]["last_error"] in text
    finally:
        await gw.stop()


async def test_with_no_agent_running_the_last_status_is_shown_as_stale(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient
) -> None:
    data_dir = tmp_path / "gw"
    code = (await create_token(api, name="status-stopped"))["enrollment_code"]
    await enroll_gateway(code, data_dir)
    gw = start_agent(data_dir)
    try:
        await gw.wait_linked()
        await wait_for(
            lambda: (d := _document(data_dir)) is not None and d["link"]["linked"],
            what="the status file to show the link",
        )
    finally:
        await gw.stop()
    stopped_at = time.time()

    document = _document(data_dir)
    assert document is not None
    assert document["stopped"]["reason"].startswith("asked to stop")
    assert document["link"]["linked"] is False

    code, text = _status_in_process(data_dir, "--json")
    assert code == 1, text
    shown = json.loads(text)
    assert shown["running"] is False
    assert shown["pid"] is None
    assert shown["stale"] is True
    assert shown["linked"] is False
    assert shown["age_s"] <= time.time() - stopped_at + DEFAULT_TIMEOUT
    assert shown["identity"]["gateway_id"] == gw.gateway_id

    code, text = _status_in_process(data_dir)
    assert code == 1
    assert "agent: not running, last status from" in text
    assert "it stopped" in text
