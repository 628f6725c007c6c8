"""Link state in the store: openings and closings written in groups, in the order they
happened, and a closing never undoing a newer link; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tether.cloud.store import Store, models
from tether.cloud.store import links as links_module
from tether.cloud.store.links import LinkStore
from tether.protocol.commands import CommandEvent, CommandState

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def gateway_store(store: Store) -> Store:
    for n in range(40):
        await store.create_gateway(gateway_id=f"gw-{n}", name=f"gateway {n}", now=NOW)
    return store


async def _open(links: LinkStore, gateway_id: str, tier: str = "ws") -> datetime:
    return await links.opened(
        gateway_id, tier=tier, reason="", agent_version="1.2", peer="10.0.0.9"
    )


async def _delivered(store: Store, gateway_id: str) -> str:
    record = await store.create_command(
        gateway_id=gateway_id,
        kind="ping",
        args={},
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        created_by="alice",
        now=datetime.now(UTC),
    )
    await store.apply_command_event(record.command_id, CommandEvent.DELIVER, now=datetime.now(UTC))
    return record.command_id


async def test_openings_and_closings_of_many_gateways_land_together(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    ids = [f"gw-{n}" for n in range(40)]
    opened = await asyncio.gather(*(_open(links, g) for g in ids))
    for gateway_id in ids:
        record = await gateway_store.get_gateway(gateway_id)
        assert record is not None
        assert (record.linked, record.tier, record.peer) == (True, "ws", "10.0.0.9")
    commands = {g: await _delivered(gateway_store, g) for g in ids[:10]}

    await asyncio.gather(
        *(links.closed(g, opened_at=at) for g, at in zip(ids, opened, strict=True))
    )

    for gateway_id in ids:
        record = await gateway_store.get_gateway(gateway_id)
        assert record is not None
        assert (record.linked, record.tier, record.peer) == (False, None, None)
    for command_id in commands.values():
        command = await gateway_store.get_command(command_id)
        assert command is not None
        assert command.state is CommandState.QUEUED  # put back for the next link


async def test_a_closing_leaves_a_newer_link_alone(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    old = await _open(links, "gw-1")
    newer = await _open(links, "gw-1", tier="long-poll")  # e.g. on another process
    assert newer > old
    command_id = await _delivered(gateway_store, "gw-1")

    await links.closed("gw-1", opened_at=old)  # the old link's end is reported late

    record = await gateway_store.get_gateway("gw-1")
    assert record is not None
    assert (record.linked, record.tier) == (True, "long-poll")
    command = await gateway_store.get_command(command_id)
    assert command is not None
    assert command.state is CommandState.DELIVERED  # the newer link holds it

    await links.closed("gw-1", opened_at=newer)
    record = await gateway_store.get_gateway("gw-1")
    assert record is not None
    assert record.linked is False
    command = await gateway_store.get_command(command_id)
    assert command is not None
    assert command.state is CommandState.QUEUED


async def test_changes_queued_together_apply_in_order(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    first = await _open(links, "gw-2")
    # closed then reopened in one group: the reopening counts
    await asyncio.gather(links.closed("gw-2", opened_at=first), _open(links, "gw-2"))
    record = await gateway_store.get_gateway("gw-2")
    assert record is not None
    assert record.linked is True
    second = record.link_since
    assert second is not None
    assert second > first
    # opened then closed in one group: the closing counts
    opened = asyncio.ensure_future(_open(links, "gw-3"))
    await asyncio.sleep(0)  # queued first
    await links.closed("gw-3", opened_at=None)
    await opened
    record = await gateway_store.get_gateway("gw-3")
    assert record is not None
    assert record.linked is False


async def test_a_closing_with_an_unknown_start_still_marks_offline(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    await _open(links, "gw-4")
    await links.closed("gw-4", opened_at=None)
    record = await gateway_store.get_gateway("gw-4")
    assert record is not None
    assert record.linked is False


async def test_closings_queued_without_waiting_are_written_by_drain(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    ids = [f"gw-{n}" for n in range(20, 40)]
    opened = await asyncio.gather(*(_open(links, g) for g in ids))
    command_id = await _delivered(gateway_store, ids[0])
    for gateway_id, at in zip(ids, opened, strict=True):
        links.closed_soon(gateway_id, opened_at=at)
    await links.drain()
    for gateway_id in ids:
        record = await gateway_store.get_gateway(gateway_id)
        assert record is not None
        assert record.linked is False
    command = await gateway_store.get_command(command_id)
    assert command is not None
    assert command.state is CommandState.QUEUED


async def test_a_closing_requeues_only_that_gateways_delivered_commands(
    gateway_store: Store,
) -> None:
    links = LinkStore(gateway_store.engine)
    opened = await _open(links, "gw-1")
    await _open(links, "gw-2")
    delivered = [await _delivered(gateway_store, "gw-1") for _ in range(2)]
    running = await _delivered(gateway_store, "gw-1")
    await gateway_store.apply_command_event(running, CommandEvent.START, now=datetime.now(UTC))
    theirs = await _delivered(gateway_store, "gw-2")

    before = datetime.now(UTC)
    await links.closed("gw-1", opened_at=opened)

    for command_id in delivered:
        after = await gateway_store.get_command(command_id)
        assert after is not None
        assert after.state is CommandState.QUEUED
        assert after.updated_at >= before  # stamped with the closing
    pending = await gateway_store.pending_commands("gw-1", now=datetime.now(UTC))
    assert {c.command_id for c in pending} == set(delivered)
    still_running = await gateway_store.get_command(running)
    assert still_running is not None
    assert still_running.state is CommandState.RUNNING
    other = await gateway_store.get_command(theirs)
    assert other is not None
    assert other.state is CommandState.DELIVERED  # gw-2 is still linked


async def test_seen_moves_last_seen_of_linked_gateways_only_and_only_forward(
    gateway_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(links_module, "SEEN_CHUNK", 7)  # several statements for 30 gateways
    links = LinkStore(gateway_store.engine)
    linked = [f"gw-{n}" for n in range(30)]
    opened = await asyncio.gather(*(_open(links, g) for g in linked))
    await links.closed("gw-29", opened_at=opened[-1])
    closed_at = (await gateway_store.get_gateway("gw-29")).last_seen  # type: ignore[union-attr]
    later = max(opened) + timedelta(minutes=5)

    # gw-35 never linked; gw-29's link closed: neither is touched.
    moved = await links.seen([*linked, "gw-35"], at=later)

    assert moved == 29
    for gateway_id in linked[:29]:
        record = await gateway_store.get_gateway(gateway_id)
        assert record is not None
        assert (record.linked, record.last_seen) == (True, later)
        assert record.link_since is not None
        assert record.link_since < later  # the link's start stays
    closed = await gateway_store.get_gateway("gw-29")
    assert closed is not None
    assert (closed.linked, closed.last_seen) == (False, closed_at)
    never = await gateway_store.get_gateway("gw-35")
    assert never is not None
    assert never.last_seen is None
    # An older time (a slower process's round) never moves it back.
    assert await links.seen(linked[:5], at=later - timedelta(minutes=1)) == 0
    record = await gateway_store.get_gateway("gw-0")
    assert record is not None
    assert record.last_seen == later


async def test_the_sweep_unlinks_silent_https_tier_gateways_only(gateway_store: Store) -> None:
    links = LinkStore(gateway_store.engine)
    tiers = {"gw-0": "long-poll", "gw-1": "long-poll", "gw-2": "poll", "gw-3": "poll"}
    tiers |= {"gw-4": "ws"}
    for gateway_id, tier in tiers.items():
        await _open(links, gateway_id, tier=tier)
    now = datetime.now(UTC)
    async with gateway_store.engine.begin() as conn:
        for gateway_id, silent in {"gw-0": 200, "gw-1": 10, "gw-2": 2000, "gw-3": 100}.items():
            await conn.execute(
                models.gateways.update()
                .where(models.gateways.c.gateway_id == gateway_id)
                .values(last_seen=now - timedelta(seconds=silent))
            )
        await conn.execute(
            models.gateways.update()
            .where(models.gateways.c.gateway_id == "gw-4")
            .values(last_seen=now - timedelta(days=1))
        )

    assert await links.mark_stale(now=now, long_poll_grace=90, poll_grace=900) == 2

    linked = {g: (await gateway_store.get_gateway(g)).linked for g in tiers}  # type: ignore[union-attr]
    assert linked == {"gw-0": False, "gw-1": True, "gw-2": False, "gw-3": True, "gw-4": True}


async def test_the_sweep_reads_the_tier_index_not_every_gateway(gateway_store: Store) -> None:
    """Every process sweeps every few seconds: a scan would read the whole fleet each time."""
    if gateway_store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's query plan")
    statement = links_module.stale_statement(NOW, long_poll_grace=90, poll_grace=900)
    compiled = statement.compile(dialect=gateway_store.engine.dialect)
    async with gateway_store.engine.connect() as conn:
        plan = (
            await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled), tuple(compiled.params.values())
            )
        ).all()
    details = [row[-1] for row in plan]
    assert any("ix_gateways_tier_last_seen" in d for d in details), details
    assert not any(d.startswith("SCAN") for d in details), details
