"""The ``tether`` command as people run it: the demo, the operator CLI and the gateway CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
from tests.support.cloudproc import (
    Cloud,
    StartAgent,
    free_port,
    get_gateway,
    tether_script,
    wait_for,
    wait_gateway,
)

from tether import __version__

CLI_TIMEOUT = 60.0


async def _tether(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` in a thread, so the cloud in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(tether_script()), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_demo_runs_two_linked_gateways_and_stops_by_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    argv = [
        str(tether_script()),
        "demo",
        "--gateways",
        "2",
        "--for",
        "5",
        "--data-dir",
        str(data_dir),
        "--port",
        str(free_port()),
    ]
    try:
        result = subprocess.run(
            argv,
            env={**os.environ, "COLUMNS": "60"},  # narrow: what it prints must not wrap
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # the child is killed; show what it printed
        raise AssertionError(
            f"tether demo did not stop by itself:\n{exc.stdout!r}\n{exc.stderr!r}"
        ) from None
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 gateways linked" in result.stdout
    assert "demo stopped" in result.stdout
    lines = result.stdout.splitlines()
    # The commands to try and the paths are whole lines, to be copied as they are.
    ca = (data_dir / "cloud" / "pki" / "ca.pem").resolve()
    assert any(
        line.startswith(f"  curl --cacert {ca} https://") and line.endswith("/openapi.json")
        for line in lines
    ), result.stdout
    assert any(
        line.endswith(f"password in {data_dir.resolve()}/cloud/admin.password)") for line in lines
    ), result.stdout
    assert f"  source {(data_dir / 'env.sh').resolve()}" in lines
    env_file = (data_dir / "env.sh").read_text()
    assert "export TETHER_URL=https://127.0.0.1:" in env_file
    assert (data_dir / "gateway-1" / "identity" / "gateway.pem").exists()
    assert (data_dir / "gateway-2" / "identity" / "gateway.pem").exists()


async def test_operator_cli_against_a_running_cloud(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("building-1")
    env = cloud.cli_env()

    listed = await _tether(env, "gateways", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    gateways = json.loads(listed.stdout)
    assert [(g["id"], g["name"], g["linked"]) for g in gateways] == [
        (gw.gateway_id, "building-1", True)
    ]

    sent = await _tether(env, "command", "send", gw.gateway_id, "ping", "--wait", "--json")
    assert sent.returncode == 0, sent.stderr
    command = json.loads(sent.stdout)
    assert command["state"] == "succeeded"
    assert command["result"]["pong"] is True
    assert command["result"]["agent_version"] == __version__
    assert (await api.get(f"/api/v1/commands/{command['id']}")).json()["state"] == "succeeded"

    configured = await _tether(
        env, "command", "send", gw.gateway_id, "set-config", "--arg", "label=north", "--wait",
        "--json",
    )  # fmt: skip
    assert configured.returncode == 0, configured.stderr
    assert json.loads(configured.stdout)["result"] == {"config": {"label": "north"}}
    assert gw.agent.runtime_config["label"] == "north"

    refused = await _tether(env, "command", "send", gw.gateway_id, "reboot", "--wait", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["state"] == "failed"

    created = await _tether(env, "token", "create", "--name", "building-2", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["name"] == "building-2"
    assert token["enrollment_code"].startswith("tether-enroll-1.")
    tokens = (await api.get("/api/v1/enrollment-tokens")).json()
    assert token["token_id"] in {t["token_id"] for t in tokens}

    denied = await _tether(cloud.cli_env("tt_wrong"), "gateways", "list", "--json")
    assert denied.returncode == 1
    assert "401" in denied.stderr
    assert "API token unknown" in denied.stderr
    assert denied.stdout == ""


async def test_gateway_cli_enrolls_and_runs_an_agent(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient
) -> None:
    env = cloud.cli_env()
    token = json.loads((await _tether(env, "token", "create", "--name", "cli-gw", "--json")).stdout)
    data_dir = tmp_path / "gw"
    enrolled = await _tether(
        env, "gateway", "enroll", token["enrollment_code"], "--data-dir", str(data_dir)
    )
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    assert "enrolled as" in enrolled.stdout
    gateway_id = json.loads((data_dir / "identity" / "identity.json").read_text())["gateway_id"]
    assert gateway_id in enrolled.stdout

    log = tmp_path / "agent.log"
    agent = _spawn(["gateway", "run", "--data-dir", str(data_dir)], env, log)
    try:
        gateway = await wait_gateway(api, gateway_id, lambda g: g["linked"], what="linked")
        assert gateway["name"] == "cli-gw"
        # The command handed its process (same PID) over to the agent's own, which keeps
        # neither the command line's validation library nor the X.509 toolkit in memory.
        cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
        assert b"tether.gateway.service" in cmdline, cmdline
        mapped = Path(f"/proc/{agent.pid}/maps").read_text()
        assert "pydantic_core" not in mapped
        assert "/cryptography/" not in mapped
        sent = await _tether(env, "command", "send", gateway_id, "ping", "--wait", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["state"] == "succeeded"
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            await wait_for(lambda: agent.poll() is not None, what="the agent to exit")
        finally:
            if agent.poll() is None:  # only if SIGTERM did not stop it in time
                agent.kill()
                agent.wait()
    assert agent.returncode == 0, log.read_text()
    await wait_gateway(api, gateway_id, lambda g: not g["linked"], what="unlinked")
    assert (await get_gateway(api, gateway_id))["revoked"] is False
