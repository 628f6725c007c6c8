"""Backup of a running cloud (``tether cloud backup``) while telemetry and commands are being
written, and ``tether cloud restore`` into a new directory: a cloud started there on the same
port serves the same CA, a gateway enrolled before the backup links again without enrolling,
and a command queued before the backup is still there and runs.

Both clouds are ``tether cloud serve`` processes, and so is the backup (the test's event loop
keeps writing meanwhile); the restore runs the same command in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from tests.support.cloudproc import (
    DEFAULT_TIMEOUT,
    CloudProcess,
    RawLink,
    create_token,
    enroll_gateway,
    running_agent,
    send_command,
    tether_script,
    wait_command,
    wait_for,
)
from typer.testing import CliRunner

from tether.cli import app as cli
from tether.cloud.store import Store
from tether.cloud.store.telemetry import TelemetryStore
from tether.gateway.identity import GatewayIdentity
from tether.protocol.commands import CommandState
from tether.protocol.messages import TelemetryAck, TelemetryBatch
from tether.protocol.telemetry import Observation

T0 = 1_718_000_000.0
POINT = "b1/ahu-1/sat"
BATCH = 20
#: Bounds of the writers (each stops sooner, when the backup is done).
MAX_BATCHES = 2000
MAX_COMMANDS = 300


async def tether(*args: str) -> tuple[int, str]:
    """Run the ``tether`` command; its exit code and its stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DATABASE_URL"}
    env["COLUMNS"] = "200"
    process = await asyncio.create_subprocess_exec(
        str(tether_script()),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 3 * DEFAULT_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def send_telemetry(raw: RawLink, stop: asyncio.Event, acked: list[int]) -> None:
    """Send whole batches one after the other, each once the last was acknowledged."""
    seq = 1
    for _ in range(MAX_BATCHES):
        if stop.is_set():
            return
        last = seq + BATCH - 1
        points = [Observation(POINT, T0 + s, float(s)) for s in range(seq, last + 1)]
        await raw.send(TelemetryBatch("sim", seq, last, points))
        ack = await raw.next_message(lambda m: isinstance(m, TelemetryAck))
        assert ack == TelemetryAck("sim", last, accepted=BATCH)
        acked.append(last)
        seq = last + 1


async def queue_commands(
    api: httpx.AsyncClient, gateway_id: str, stop: asyncio.Event, ids: list[str]
) -> None:
    for _ in range(MAX_COMMANDS):
        if stop.is_set():
            return
        ids.append((await send_command(api, gateway_id, "ping"))["id"])


@contextlib.asynccontextmanager
async def started(process: CloudProcess) -> AsyncIterator[CloudProcess]:
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_cloud_restored_from_an_online_backup_links_its_gateways_again(
    tmp_path: Path,
) -> None:
    original = CloudProcess(tmp_path / "cloud")
    archive = tmp_path / "backups" / "cloud.tar.gz"
    archive.parent.mkdir()
    acked: list[int] = []
    command_ids: list[str] = []
    async with started(original):
        cloud = original.cloud
        async with cloud.api() as api:
            idle_code = (await create_token(api, name="idle"))["enrollment_code"]
            idle: GatewayIdentity = await enroll_gateway(idle_code, tmp_path / "gw-idle")
            queued = await send_command(api, idle.gateway_id, "ping")  # its agent is not running
            busy_code = (await create_token(api, name="busy"))["enrollment_code"]
            busy = await enroll_gateway(busy_code, tmp_path / "gw-busy")
            stop = asyncio.Event()
            async with RawLink(cloud.url, busy.ssl_context()) as raw:
                writers = [
                    asyncio.create_task(send_telemetry(raw, stop, acked)),
                    asyncio.create_task(queue_commands(api, idle.gateway_id, stop, command_ids)),
                ]
                try:
                    await wait_for(lambda: acked and command_ids, what="the first writes")
                    acked_before, commands_before = acked[-1], list(command_ids)
                    code, output = await tether(
                        "cloud", "backup", "--data-dir", str(cloud.data_dir), "-o", str(archive)
                    )
                    acked_after = acked[-1]
                finally:
                    stop.set()
                    await asyncio.gather(*writers)

    assert code == 0, output
    assert f"wrote {archive}" in output
    assert "private key" in output
    ca_key = (cloud.data_dir / "pki" / "ca.key").read_text()
    assert ca_key not in output
    for line in ca_key.splitlines():
        if len(line) > 16:
            assert line not in output
    assert mode(archive) == 0o600

    restored = tmp_path / "restored"
    result = CliRunner().invoke(
        cli, ["cloud", "restore", str(archive), "--data-dir", str(restored)], env={"COLUMNS": "200"}
    )
    output = result.output
    assert result.exit_code == 0, output
    assert "every SHA-256 matches" in output
    assert ca_key not in output
    assert mode(restored) == 0o700
    assert mode(restored / "pki") == 0o700
    for private in ("tether.db", "pki/ca.key", "pki/server.key", "admin.token"):
        assert mode(restored / private) == 0o600, private
    assert (restored / "pki/ca.pem").read_bytes() == (cloud.data_dir / "pki/ca.pem").read_bytes()

    # The snapshot is one moment: whole batches, each stream's mark matching its rows, and
    # everything acknowledged or queued before the backup began.
    store = await Store.open(f"sqlite+aiosqlite:///{restored / 'tether.db'}")
    try:
        telemetry = TelemetryStore(store.engine)
        [stream] = await telemetry.streams(busy.gateway_id)
        rows = await telemetry.query(
            busy.gateway_id, point_id=None, since=None, until=None, limit=1_000_000
        )
        queued_then = await store.get_command(queued["id"])
        kept = [await store.get_command(i) for i in commands_before]
    finally:
        await store.close()
    assert acked_before <= stream.hwm <= acked_after
    assert stream.hwm % BATCH == 0
    assert [round(r.ts - T0) for r in rows] == list(range(1, stream.hwm + 1))
    assert queued_then is not None
    assert queued_then.state is CommandState.QUEUED
    assert all(command is not None for command in kept)

    # The restored cloud, on the port the gateways pinned.
    identity_before = (tmp_path / "gw-idle").rglob("*.pem")
    certificates = {p: p.read_bytes() for p in identity_before}
    again = CloudProcess(restored, port=original.port)
    async with (
        started(again),
        again.cloud.api() as api,  # the restored admin token
        running_agent(tmp_path / "gw-idle") as agent,  # enrolled before: no code given
    ):
        await agent.wait_linked()
        done = await wait_command(api, queued["id"])
        assert done["state"] == "succeeded", done
        async with RawLink(again.cloud.url, busy.ssl_context()) as raw:
            nxt = stream.hwm + 1
            points = [Observation(POINT, T0 + s, float(s)) for s in range(nxt, nxt + BATCH)]
            await raw.send(TelemetryBatch("sim", nxt, nxt + BATCH - 1, points))
            ack = await raw.next_message(lambda m: isinstance(m, TelemetryAck))
            assert ack == TelemetryAck("sim", nxt + BATCH - 1, accepted=BATCH)
    assert certificates  # the agent's identity is what it was: nothing was enrolled again
    assert {p: p.read_bytes() for p in certificates} == certificates
