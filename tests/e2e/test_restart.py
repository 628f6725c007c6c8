"""Restarts on either side: the cloud killed under a linked agent, the agent restarted while a
command ran or its outcome was not yet acknowledged. Every command runs at most once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.cloudproc import (
    Cloud,
    CloudProcess,
    create_token,
    enroll_gateway,
    get_gateway,
    running_agent,
    running_cloud,
    send_command,
    start_agent,
    wait_command,
    wait_for,
)

from tether.cloud.store import Store
from tether.gateway import handlers
from tether.gateway.handlers import CommandContext
from tether.gateway.ledger import INTERRUPTED, CommandLedger
from tether.gateway.settings import load_agent_settings
from tether.protocol.commands import CommandEvent


@dataclass
class Recorder:
    """Test command handlers that count every execution, by command id."""

    runs: Counter[str] = field(default_factory=Counter)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def count(self, ctx: CommandContext) -> dict[str, Any]:
        self.runs[ctx.command_id] += 1
        return {"runs": self.runs[ctx.command_id]}

    async def hold(self, ctx: CommandContext) -> dict[str, Any]:
        """Runs until the test releases it."""
        self.runs[ctx.command_id] += 1
        self.started.setdefault(ctx.command_id, asyncio.Event()).set()
        await self.release.wait()
        return {"held": True}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setitem(handlers.HANDLERS, "count", rec.count)  # type: ignore[arg-type]
    monkeypatch.setitem(handlers.HANDLERS, "hold", rec.hold)  # type: ignore[arg-type]
    return rec


#: The kinds the ``recorder`` adds to the agent: the cloud is told it may send them.
EXTRA_KINDS = ("count", "hold")


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", extra_command_kinds=EXTRA_KINDS) as running:
        yield running


@pytest.fixture
async def cloud_process(tmp_path: Path) -> AsyncIterator[CloudProcess]:
    settings = f"extra_command_kinds = {list(EXTRA_KINDS)}\n"
    process = CloudProcess(tmp_path / "cloud", config=settings)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def _enroll(cloud: Cloud, data_dir: Path, name: str) -> str:
    async with cloud.api() as api:
        code = (await create_token(api, name=name))["enrollment_code"]
    return (await enroll_gateway(code, data_dir)).gateway_id


async def _queue_in_store(
    cloud: Cloud, gateway_id: str, kind: str, *, delivered: bool = False
) -> str:
    """Queue a command straight into the store of a cloud that is not running (and mark it
    delivered, as a cloud that died right after doing so would have left it)."""
    store = await Store.open(cloud.database)
    try:
        now = datetime.now(UTC)
        record = await store.create_command(
            gateway_id=gateway_id,
            kind=kind,
            args={},
            expires_at=now + timedelta(hours=1),
            created_by="test",
            now=now,
        )
        if delivered:
            await store.apply_command_event(
                record.command_id, CommandEvent.DELIVER, now=now, gateway_id=gateway_id
            )
    finally:
        await store.close()
    return record.command_id


async def test_agent_relinks_after_the_cloud_restarts_and_runs_what_was_queued_once(
    tmp_path: Path, cloud_process: CloudProcess, recorder: Recorder
) -> None:
    cloud = cloud_process.cloud
    gateway_id = await _enroll(cloud, tmp_path / "gw", "building-1")
    async with running_agent(tmp_path / "gw") as gw:
        await gw.wait_linked()
        async with cloud.api() as api:
            before = await send_command(api, gateway_id, "count")
            assert (await wait_command(api, before["id"]))["state"] == "succeeded"

        await cloud_process.kill(signal.SIGKILL)
        await gw.wait_unlinked()
        queued = await _queue_in_store(cloud, gateway_id, "count")
        await cloud_process.start()

        # Nobody tells the agent: it relinks by itself and is handed what waited for it.
        await gw.wait_linked()
        async with cloud.api() as api:
            done = await wait_command(api, queued)
            assert done["state"] == "succeeded", done
            assert done["result"] == {"runs": 1}
            gateway = await get_gateway(api, gateway_id)
            assert gateway["linked"] is True
            # One more round trip on the new link: nothing runs twice.
            after = await send_command(api, gateway_id, "count")
            assert (await wait_command(api, after["id"]))["state"] == "succeeded"
        assert gw.agent.status.links_opened == 2
        entry = gw.agent.ledger.get(queued)
        assert entry is not None
        assert entry.state == "succeeded"
    assert recorder.runs == {before["id"]: 1, queued: 1, after["id"]: 1}


async def test_command_marked_delivered_by_a_cloud_that_died_is_delivered_again(
    tmp_path: Path, cloud_process: CloudProcess, recorder: Recorder
) -> None:
    cloud = cloud_process.cloud
    gateway_id = await _enroll(cloud, tmp_path / "gw", "building-1")
    async with running_agent(tmp_path / "gw") as gw:
        await gw.wait_linked()
        await cloud_process.kill(signal.SIGKILL)
        await gw.wait_unlinked()
        # The frame never left the dead cloud: the agent has not seen the command.
        lost = await _queue_in_store(cloud, gateway_id, "count", delivered=True)
        await cloud_process.start()
        await gw.wait_linked()
        async with cloud.api() as api:
            done = await wait_command(api, lost)
        assert done["state"] == "succeeded", done
    assert recorder.runs == {lost: 1}


async def test_outcome_unacknowledged_across_an_agent_restart_is_resent_not_rerun(
    tmp_path: Path, cloud_process: CloudProcess, recorder: Recorder
) -> None:
    cloud = cloud_process.cloud
    gateway_id = await _enroll(cloud, tmp_path / "gw", "building-1")
    first = start_agent(tmp_path / "gw")
    try:
        await first.wait_linked()
        async with cloud.api() as api:
            command = await send_command(api, gateway_id, "hold")
            await wait_command(api, command["id"], {"running"})
        # The cloud dies while the command runs; the outcome has nowhere to go.
        await cloud_process.kill(signal.SIGKILL)
        await first.wait_unlinked()
        recorder.release.set()

        def finished_unacked() -> bool:
            entry = first.agent.ledger.get(command["id"])
            return entry is not None and entry.state == "succeeded" and entry.unacked

        await wait_for(finished_unacked, what="the outcome in the ledger, unacknowledged")
    finally:
        await first.stop()
    assert first.errors == []

    # A new agent process on the same data directory, and the cloud back.
    await cloud_process.start()
    async with running_agent(tmp_path / "gw") as second:
        await second.wait_linked()
        async with cloud.api() as api:
            done = await wait_command(api, command["id"])
        assert done["state"] == "succeeded"
        assert done["result"] == {"held": True}

        def acknowledged() -> bool:
            entry = second.agent.ledger.get(command["id"])
            return entry is not None and not entry.unacked

        await wait_for(acknowledged, what="the cloud's acknowledgement")
    assert recorder.runs == {command["id"]: 1}


async def test_command_cut_short_by_an_agent_restart_is_reported_interrupted(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, recorder: Recorder
) -> None:
    gateway_id = await _enroll(cloud, tmp_path / "gw", "building-1")
    first = start_agent(tmp_path / "gw")
    try:
        await first.wait_linked()
        command = await send_command(api, gateway_id, "hold")
        await wait_command(api, command["id"], {"running"})
    finally:
        await first.stop()  # the handler is still running: it is cut short
    assert recorder.runs == {command["id"]: 1}

    recorder.release.set()  # were it run again, it would now succeed at once
    async with running_agent(tmp_path / "gw") as second:
        done = await wait_command(api, command["id"])
        assert second.agent.linked.is_set()
    assert done["state"] == "failed"
    assert done["error"] == INTERRUPTED
    assert recorder.runs == {command["id"]: 1}


async def test_redelivered_command_the_ledger_saw_start_is_not_run(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, recorder: Recorder
) -> None:
    gateway_id = await _enroll(cloud, tmp_path / "gw", "building-1")
    command = await send_command(api, gateway_id, "count")
    # As if a previous agent process had begun this very command and died.
    ledger = CommandLedger(load_agent_settings(tmp_path / "gw").state_db)
    assert ledger.begin(command["id"], "count")
    ledger.close()

    recorder.release.set()
    async with running_agent(tmp_path / "gw") as gw:
        done = await wait_command(api, command["id"])
        assert gw.agent.linked.is_set()
        entry = gw.agent.ledger.get(command["id"])
    assert done["state"] == "failed"
    assert done["error"] == INTERRUPTED
    assert entry is not None
    assert entry.state == "failed"
    assert recorder.runs == {}
