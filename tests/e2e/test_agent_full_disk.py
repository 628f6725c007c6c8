"""A gateway whose disk fills while its cloud is away: the spool drops its oldest to keep the
disk's headroom, the agent restarts on the full disk, and the newest observations arrive once.

The data directory is a small tmpfs (a file system that really fills; needs root). The first run
is an agent in the test's event loop, fed directly; the restart is ``tether gateway run``, the
command a service manager runs, so a traceback or a failed start would show in its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cloudproc import (
    DEFAULT_TIMEOUT,
    create_token,
    enroll_gateway,
    free_port,
    running_cloud,
    start_agent,
    tether_script,
    wait_for,
)
from tests.support.tmpfs import mounted_tmpfs

from tether.protocol.telemetry import Observation

STREAM = "building"
BASE_TS = 1_700_000_000.0
PER_APPEND = 5000


def _observations(start: int, n: int) -> list[Observation]:
    return [Observation("p-1", BASE_TS + i, float(i)) for i in range(start, start + n)]


def _stored(database: str, gateway_id: str) -> list[float]:
    """The times of every observation the cloud's SQLite store holds for the gateway."""
    path = database.split(":///", 1)[1]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT ts FROM observations WHERE gateway_id = ? ORDER BY ts", (gateway_id,)
        ).fetchall()
    finally:
        db.close()
    return [float(ts) for (ts,) in rows]


async def test_a_full_disk_drops_the_oldest_restarts_and_drains_the_newest_exactly_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    with mounted_tmpfs("4m") as disk:
        gw_dir = disk / "gw"
        async with running_cloud(tmp_path / "cloud", port=port) as cloud, cloud.api() as api:
            code = (await create_token(api, name="full-disk"))["enrollment_code"]
            gateway_id = (await enroll_gateway(code, gw_dir)).gateway_id
        # The cloud is gone from here until the agent has dropped and restarted.
        (gw_dir / "agent.toml").write_text("trust_env = false\nreconnect_cap = 1\n")

        first = start_agent(gw_dir)
        spool = await wait_for(lambda: first.agent.spool, what="the spool to open")
        assert spool is not None
        appended = 0
        for _ in range(100):  # bounded: the 4 MiB disk holds some 20 of these appends
            await first.agent.append(STREAM, _observations(appended, PER_APPEND))
            appended += PER_APPEND
            if await spool.drop_report():
                break
        for _ in range(3):  # and on, well past the first drop
            await first.agent.append(STREAM, _observations(appended, PER_APPEND))
            appended += PER_APPEND
        drops = await spool.drop_report()
        assert STREAM in drops, "the disk's headroom never dropped anything"
        dropped = drops[STREAM].total
        assert 0 < dropped < appended
        assert first.agent.refused == {}  # the headroom dropped: no append was refused
        assert first.agent.status.links_opened == 0
        await first.stop()
        assert first.task.done()
        assert first.task.exception() is None
        assert first.errors == []

        # Started again on the full disk by its service manager, the cloud still away.
        log_path = tmp_path / "agent.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                str(tether_script()),
                "gateway",
                "run",
                "--data-dir",
                str(gw_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
            )
        try:

            def log_text() -> str:
                return log_path.read_text(errors="replace")

            def running() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"the agent exited {process.returncode}:\n{log_text()}")
                return "link: cannot reach" in log_text()

            await wait_for(running, what="the restarted agent to try its link")

            async with running_cloud(tmp_path / "cloud", port=port) as cloud, cloud.api() as api:
                held = appended - dropped

                async def drained() -> dict[str, Any] | None:
                    streams = (await api.get(f"/api/v1/gateways/{gateway_id}/streams")).json()
                    record = next((s for s in streams if s["stream"] == STREAM), None)
                    if record is None or record["dropped_on_gateway"] != dropped:
                        return None
                    return record if len(_stored(cloud.database, gateway_id)) >= held else None

                await wait_for(drained, what="the newest observations and the drop count")
                assert process.returncode is None, log_text()
                stored = _stored(cloud.database, gateway_id)
                # Exactly the newest ones, each once: the oldest `dropped` went to the disk.
                assert stored == [BASE_TS + i for i in range(dropped, appended)]
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), DEFAULT_TIMEOUT)
            assert process.returncode == 0, log_text()
            assert "Traceback" not in log_text()
        finally:
            if process.returncode is None:
                process.kill()  # the agent this test started, by its PID
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), DEFAULT_TIMEOUT)
