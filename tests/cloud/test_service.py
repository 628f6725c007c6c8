"""GatewayService's command path: offered commands go from memory, marked delivered after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.cloud.service import GatewayService
from tether.cloud.store import CommandRecord, Store
from tether.protocol.commands import CommandState
from tether.protocol.messages import CommandRequest, CommandUpdate, CommandUpdateAck

GW = "gw-1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    await opened.create_gateway(gateway_id=GW, name="one", now=datetime.now(UTC))
    try:
        yield opened
    finally:
        await opened.close()


async def _queue(store: Store, *, ttl: timedelta = timedelta(hours=1)) -> CommandRecord:
    now = datetime.now(UTC)
    return await store.create_command(
        gateway_id=GW, kind="ping", args={"n": 1}, expires_at=now + ttl, created_by="t", now=now
    )


async def _state(store: Store, command_id: str) -> CommandState:
    record = await store.get_command(command_id)
    assert record is not None
    return record.state


async def test_an_offered_command_goes_from_memory_then_is_marked_delivered(store: Store) -> None:
    service = GatewayService(store)
    record = await _queue(store)
    service.offer(record)
    [request] = await service.outgoing(GW)
    assert request == CommandRequest(
        command_id=record.command_id,
        kind="ping",
        args={"n": 1},
        expires_at=record.expires_at.timestamp(),
    )
    delivered_at = await service.delivery_marked(record.command_id)
    assert delivered_at is not None
    after = await store.get_command(record.command_id)
    assert after is not None
    assert (after.state, after.delivered_at) == (CommandState.DELIVERED, delivered_at)
    assert await service.delivery_marked(record.command_id) is None  # nothing pending now
    assert await service.outgoing(GW) == []  # not sent twice


async def test_a_call_that_takes_no_offer_reads_the_store(store: Store) -> None:
    service = GatewayService(store)
    offered = await _queue(store)
    from_elsewhere = await _queue(store)  # e.g. queued through another node: not offered here
    service.offer(offered)
    first = await service.outgoing(GW)
    assert [m.command_id for m in first if isinstance(m, CommandRequest)] == [offered.command_id]
    # The wake-up meant for the other command reads the store; the offered one, being marked
    # (or marked), is not sent again.
    second = await service.outgoing(GW)
    assert [m.command_id for m in second if isinstance(m, CommandRequest)] == [
        from_elsewhere.command_id
    ]
    await service.delivery_marked(offered.command_id)  # if still being written
    for record in (offered, from_elsewhere):
        assert await _state(store, record.command_id) is CommandState.DELIVERED
    assert await service.outgoing(GW) == []


async def test_a_new_link_gets_delivered_unstarted_commands_again(store: Store) -> None:
    service = GatewayService(store)
    record = await _queue(store)
    service.offer(record)
    assert len(await service.outgoing(GW)) == 1
    await service.delivery_marked(record.command_id)
    again = await service.outgoing(GW, link_opened=True, redeliver=True)
    assert [m.command_id for m in again if isinstance(m, CommandRequest)] == [record.command_id]
    # Also while its mark is still being written (the first link died right after the send).
    other = await _queue(store)
    service.offer(other)
    assert len(await service.outgoing(GW)) == 1
    reopened = await service.outgoing(GW, link_opened=True, redeliver=True)
    sent = {m.command_id for m in reopened if isinstance(m, CommandRequest)}
    assert sent == {record.command_id, other.command_id}


async def test_an_offer_no_link_took_is_withdrawn_and_read_later(store: Store) -> None:
    service = GatewayService(store)
    record = await _queue(store)
    service.offer(record)
    assert service.withdraw(GW, record.command_id) is True
    assert service.withdraw(GW, record.command_id) is False
    [request] = await service.outgoing(GW)  # from the store this time
    assert isinstance(request, CommandRequest)
    assert request.command_id == record.command_id
    assert await _state(store, record.command_id) is CommandState.DELIVERED


async def test_an_expired_offer_is_not_sent(store: Store) -> None:
    service = GatewayService(store)
    record = await _queue(store, ttl=timedelta(milliseconds=1))
    service.offer(record)
    await asyncio.sleep(0.01)  # past its deadline (a deadline, not a race)
    assert await service.outgoing(GW) == []
    assert await _state(store, record.command_id) is CommandState.QUEUED


async def test_an_update_waits_for_the_delivery_mark(store: Store) -> None:
    service = GatewayService(store)
    record = await _queue(store)
    service.offer(record)
    assert len(await service.outgoing(GW)) == 1
    # The agent answers at once, before the grouped mark is written.
    update = CommandUpdate(command_id=record.command_id, state="running")
    assert await service.handle(GW, update) == [
        CommandUpdateAck(command_id=record.command_id, state="running")
    ]
    after = await store.get_command(record.command_id)
    assert after is not None
    assert after.state is CommandState.RUNNING
    assert after.delivered_at is not None
    assert after.started_at is not None
    assert after.created_at <= after.delivered_at <= after.started_at


async def test_marks_of_many_sends_share_a_transaction(store: Store) -> None:
    service = GatewayService(store)
    records = [await _queue(store) for _ in range(5)]
    for record in records:
        service.offer(record)
        assert len(await service.outgoing(GW)) == 1  # one send each, no await between them
    stamps = set(await asyncio.gather(*(service.delivery_marked(r.command_id) for r in records)))
    assert len(stamps) == 1  # one group, one stamp
    assert None not in stamps
    for record in records:
        assert await _state(store, record.command_id) is CommandState.DELIVERED
