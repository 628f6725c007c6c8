"""Commands in the store: the lifecycle table applied atomically, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite3_dialect

from tether.cloud.store import (
    CommandNotFound,
    CommandRecord,
    GatewayRevoked,
    GatewayUnknown,
    Store,
)
from tether.cloud.store.models import commands
from tether.cloud.store.store import _DELIVER_JSON, _RawStatement
from tether.protocol.commands import (
    TRANSITIONS,
    CommandEvent,
    CommandState,
    IllegalTransition,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

E, S = CommandEvent, CommandState

# How to bring a fresh (queued) command into each state.
PATHS: dict[CommandState, tuple[CommandEvent, ...]] = {
    S.QUEUED: (),
    S.DELIVERED: (E.DELIVER,),
    S.RUNNING: (E.DELIVER, E.START),
    S.SUCCEEDED: (E.DELIVER, E.START, E.SUCCEED),
    S.FAILED: (E.DELIVER, E.FAIL),
    S.EXPIRED: (E.EXPIRE,),
    S.CANCELLED: (E.CANCEL,),
}


@pytest.fixture
async def gateway_store(store: Store) -> Store:
    await store.create_gateway(gateway_id="gw-1", name="one", now=NOW)
    await store.create_gateway(gateway_id="gw-2", name="two", now=NOW)
    return store


async def _command(
    store: Store,
    gateway_id: str = "gw-1",
    *,
    at: datetime = NOW,
    ttl: timedelta = HOUR,
    kind: str = "reboot",
) -> CommandRecord:
    return await store.create_command(
        gateway_id=gateway_id,
        kind=kind,
        args={"delay_s": 5, "reason": "update"},
        expires_at=at + ttl,
        created_by="alice",
        now=at,
    )


async def _bring_to(store: Store, state: CommandState, *, at: datetime = NOW) -> CommandRecord:
    record = await _command(store, at=at)
    for event in PATHS[state]:
        record = await store.apply_command_event(record.command_id, event, now=at)
    assert record.state is state
    return record


async def test_create_and_get(gateway_store: Store) -> None:
    record = await _command(gateway_store)
    assert len(record.command_id) == 32
    int(record.command_id, 16)
    assert record.state is S.QUEUED
    assert record.args == {"delay_s": 5, "reason": "update"}
    assert (record.created_at, record.updated_at, record.expires_at) == (NOW, NOW, NOW + HOUR)
    assert (record.delivered_at, record.started_at, record.finished_at) == (None, None, None)
    assert (record.result, record.error, record.created_by) == (None, None, "alice")
    assert await gateway_store.get_command(record.command_id) == record
    assert await gateway_store.get_command("0" * 32) is None


async def test_commands_only_for_registered_unrevoked_gateways(gateway_store: Store) -> None:
    with pytest.raises(GatewayUnknown):
        await _command(gateway_store, "gw-nope")
    await gateway_store.revoke_gateway("gw-2", now=NOW)
    with pytest.raises(GatewayRevoked):
        await _command(gateway_store, "gw-2")
    assert await gateway_store.list_commands() == []


async def test_full_lifecycle_sets_timestamps_result_and_error(gateway_store: Store) -> None:
    ok = await _command(gateway_store)
    delivered = await gateway_store.apply_command_event(
        ok.command_id, E.DELIVER, now=NOW + MINUTE, gateway_id="gw-1"
    )
    assert (delivered.state, delivered.delivered_at) == (S.DELIVERED, NOW + MINUTE)
    running = await gateway_store.apply_command_event(
        ok.command_id, E.START, now=NOW + 2 * MINUTE, gateway_id="gw-1"
    )
    assert (running.state, running.started_at, running.finished_at) == (
        S.RUNNING,
        NOW + 2 * MINUTE,
        None,
    )
    done = await gateway_store.apply_command_event(
        ok.command_id,
        E.SUCCEED,
        now=NOW + 3 * MINUTE,
        gateway_id="gw-1",
        result={"uptime_s": 12, "log": ["a", "b"]},
    )
    assert done.state is S.SUCCEEDED
    assert done.finished_at == done.updated_at == NOW + 3 * MINUTE
    assert done.delivered_at == NOW + MINUTE
    assert done.started_at == NOW + 2 * MINUTE
    assert done.result == {"uptime_s": 12, "log": ["a", "b"]}
    assert await gateway_store.get_command(ok.command_id) == done

    bad = await _command(gateway_store)
    await gateway_store.apply_command_event(bad.command_id, E.DELIVER, now=NOW)
    failed = await gateway_store.apply_command_event(
        bad.command_id, E.FAIL, now=NOW + MINUTE, error="no such handler: reboot"
    )
    assert (failed.state, failed.error, failed.finished_at) == (
        S.FAILED,
        "no such handler: reboot",
        NOW + MINUTE,
    )


async def test_store_agrees_with_the_lifecycle_table(gateway_store: Store) -> None:
    for state in CommandState:
        for event in CommandEvent:
            record = await _bring_to(gateway_store, state)
            expected = TRANSITIONS.get((state, event))
            if expected is None:
                with pytest.raises(IllegalTransition) as caught:
                    await gateway_store.apply_command_event(record.command_id, event, now=NOW)
                assert (caught.value.state, caught.value.event) == (state, event)
                unchanged = await gateway_store.get_command(record.command_id)
                assert unchanged == record
            else:
                after = await gateway_store.apply_command_event(
                    record.command_id, event, now=NOW + MINUTE
                )
                assert after.state is expected, (state, event)
                assert after.updated_at == NOW + MINUTE
                assert (after.finished_at is not None) == (
                    expected in {S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}
                )


async def test_gateway_cannot_touch_or_detect_other_gateways_commands(
    gateway_store: Store,
) -> None:
    theirs = await _command(gateway_store, "gw-2")
    with pytest.raises(CommandNotFound) as foreign:
        await gateway_store.apply_command_event(
            theirs.command_id, E.DELIVER, now=NOW, gateway_id="gw-1"
        )
    with pytest.raises(CommandNotFound) as missing:
        await gateway_store.apply_command_event("f" * 32, E.DELIVER, now=NOW, gateway_id="gw-1")
    # Same error class and the same wording apart from the id: nothing to tell the two apart.
    assert str(foreign.value).replace(theirs.command_id, "X") == str(missing.value).replace(
        "f" * 32, "X"
    )
    assert await gateway_store.get_command(theirs.command_id) == theirs
    # Even an illegal event on a foreign command reports "not found", not the lifecycle error.
    with pytest.raises(CommandNotFound):
        await gateway_store.apply_command_event(
            theirs.command_id, E.SUCCEED, now=NOW, gateway_id="gw-1"
        )


async def test_concurrent_starts_from_two_nodes_have_one_winner(store_url: str) -> None:
    nodes = [await Store.open(store_url) for _ in range(2)]
    try:
        await nodes[0].create_gateway(gateway_id="gw-1", name="one", now=NOW)
        record = await _command(nodes[0])
        await nodes[1].apply_command_event(record.command_id, E.DELIVER, now=NOW)
        outcomes = await asyncio.gather(
            *(
                nodes[i % 2].apply_command_event(
                    record.command_id, E.START, now=NOW + i * MINUTE, gateway_id="gw-1"
                )
                for i in range(8)
            ),
            return_exceptions=True,
        )
        final = await nodes[0].get_command(record.command_id)
    finally:
        for node in nodes:
            await node.close()
    winners = [o for o in outcomes if isinstance(o, CommandRecord)]
    losers = [o for o in outcomes if not isinstance(o, CommandRecord)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, IllegalTransition) for o in losers), losers
    assert all(o.state is S.RUNNING for o in losers if isinstance(o, IllegalTransition))
    assert final == winners[0]


async def test_event_computed_from_a_stale_state_is_never_applied(
    gateway_store: Store, store_url: str
) -> None:
    """Another node moves the command while our update is in flight: ours must not land."""
    record = await _bring_to(gateway_store, S.DELIVERED)
    other_start = NOW + MINUTE
    ours_start = NOW + 2 * MINUTE
    if gateway_store.dialect == "postgresql":
        dsn = store_url.replace("postgresql+asyncpg://", "postgresql://")
        other = await asyncpg.connect(dsn)
        try:
            transaction = other.transaction()
            await transaction.start()
            await other.execute(
                "UPDATE commands SET state = 'running', started_at = $2 WHERE command_id = $1",
                record.command_id,
                other_start,
            )
            ours = asyncio.create_task(
                gateway_store.apply_command_event(record.command_id, E.START, now=ours_start)
            )
            # Our store read "delivered" and now waits on the other node's row lock.
            await _wait_for_lock_waiter(other, ours)
            await transaction.commit()
            with pytest.raises(IllegalTransition) as caught:
                await ours
        finally:
            await other.close()
    else:
        database = store_url.split("///", 1)[1]
        other_sqlite = sqlite3.connect(database, isolation_level=None)
        try:
            other_sqlite.execute("BEGIN IMMEDIATE")
            other_sqlite.execute(
                "UPDATE commands SET state = 'running', started_at = ? WHERE command_id = ?",
                (other_start.replace(tzinfo=None).isoformat(sep=" "), record.command_id),
            )
            # SQLite serialises writers: ours queues on the write lock, then reads "running".
            ours = asyncio.create_task(
                gateway_store.apply_command_event(record.command_id, E.START, now=ours_start)
            )
            await asyncio.sleep(0)
            other_sqlite.execute("COMMIT")
            with pytest.raises(IllegalTransition) as caught:
                await ours
        finally:
            other_sqlite.close()
    assert (caught.value.state, caught.value.event) == (S.RUNNING, E.START)
    final = await gateway_store.get_command(record.command_id)
    assert final is not None
    assert (final.state, final.started_at) == (S.RUNNING, other_start)


async def _wait_for_lock_waiter(conn: asyncpg.Connection, task: asyncio.Task[object]) -> None:
    for _ in range(1000):
        if task.done():
            return  # it failed early; awaiting it shows why
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store's update never waited on the row lock")


async def test_listing_newest_first_with_filters(gateway_store: Store) -> None:
    first = await _command(gateway_store, "gw-1", at=NOW)
    second = await _command(gateway_store, "gw-2", at=NOW + MINUTE)
    third = await _command(gateway_store, "gw-1", at=NOW + 2 * MINUTE)
    await gateway_store.apply_command_event(third.command_id, E.DELIVER, now=NOW + 3 * MINUTE)

    def ids(records: list[CommandRecord]) -> list[str]:
        return [r.command_id for r in records]

    everything = await gateway_store.list_commands()
    assert ids(everything) == [third.command_id, second.command_id, first.command_id]
    assert ids(await gateway_store.list_commands(gateway_id="gw-1")) == [
        third.command_id,
        first.command_id,
    ]
    assert ids(await gateway_store.list_commands(state=S.QUEUED)) == [
        second.command_id,
        first.command_id,
    ]
    assert ids(await gateway_store.list_commands(gateway_id="gw-1", state=S.DELIVERED)) == [
        third.command_id
    ]
    assert ids(await gateway_store.list_commands(limit=1)) == [third.command_id]


async def test_pending_is_queued_unexpired_oldest_first(gateway_store: Store) -> None:
    older = await _command(gateway_store, at=NOW)
    newer = await _command(gateway_store, at=NOW + MINUTE)
    short = await _command(gateway_store, at=NOW, ttl=MINUTE)
    await _command(gateway_store, "gw-2", at=NOW)
    delivered = await _command(gateway_store, at=NOW)
    await gateway_store.apply_command_event(delivered.command_id, E.DELIVER, now=NOW)

    pending = await gateway_store.pending_commands("gw-1", now=NOW + 30 * MINUTE)
    assert [c.command_id for c in pending] == [older.command_id, newer.command_id]
    at_start = await gateway_store.pending_commands("gw-1", now=NOW + timedelta(seconds=59))
    assert short.command_id in {c.command_id for c in at_start}


async def test_expire_due_commands(gateway_store: Store) -> None:
    due = {state: await _bring_to(gateway_store, state) for state in CommandState}
    fresh = await _command(gateway_store, at=NOW, ttl=10 * HOUR)
    await gateway_store.apply_command_event(fresh.command_id, E.DELIVER, now=NOW)

    expired = await gateway_store.expire_due_commands(now=NOW + HOUR)
    unfinished = {S.QUEUED, S.DELIVERED, S.RUNNING}
    assert {c.command_id for c in expired} == {due[s].command_id for s in unfinished}
    for record in expired:
        assert record.state is S.EXPIRED
        assert record.finished_at == record.updated_at == NOW + HOUR
    for state in set(CommandState) - unfinished:
        assert await gateway_store.get_command(due[state].command_id) == due[state]
    still = await gateway_store.get_command(fresh.command_id)
    assert still is not None
    assert still.state is S.DELIVERED
    assert await gateway_store.expire_due_commands(now=NOW + HOUR) == []


async def test_commands_of_a_revoked_gateway_are_kept(gateway_store: Store) -> None:
    record = await _command(gateway_store)
    await gateway_store.revoke_gateway("gw-1", now=NOW)
    async with gateway_store.engine.connect() as conn:
        count = await conn.scalar(sa.text("SELECT count(*) FROM commands"))
    assert count == 1
    assert await gateway_store.get_command(record.command_id) == record


async def test_the_audit_entry_of_a_command_keeps_its_arguments_without_secrets(
    gateway_store: Store,
) -> None:
    args = {
        "log_level": "debug",
        "Password": "hunter2",
        "proxy": {"url": "http://proxy:3128", "api_key": "k-123", "Secret_Token": "t"},
        "servers": ["a", "b"],
    }
    record = await gateway_store.create_command(
        gateway_id="gw-1",
        kind="set-config",
        args=args,
        expires_at=NOW + HOUR,
        created_by="alice (operator)",
        now=NOW,
    )
    [entry] = await gateway_store.list_audit()
    assert entry.detail is not None
    assert entry.detail["args"] == {
        "log_level": "debug",
        "Password": "[redacted]",
        "proxy": {
            "url": "http://proxy:3128",
            "api_key": "[redacted]",
            "Secret_Token": "[redacted]",
        },
        "servers": ["a", "b"],
    }
    assert record.args == args  # the command itself carries them whole to its gateway


async def test_a_queued_command_and_its_audit_entry_commit_together(gateway_store: Store) -> None:
    record = await gateway_store.create_command(
        gateway_id="gw-1",
        kind="ping",
        args={},
        expires_at=NOW + HOUR,
        created_by="alice (operator)",
        now=NOW,
        source="198.51.100.7",
    )
    [entry] = await gateway_store.list_audit()
    assert (entry.action, entry.target, entry.actor) == (
        "command.send",
        record.command_id,
        "alice (operator)",
    )
    assert (entry.at, entry.source) == (NOW, "198.51.100.7")
    assert entry.detail == {"gateway": "gw-1", "kind": "ping", "args": {}}
    # A refused command leaves neither a command nor an audit entry behind.
    with pytest.raises(GatewayUnknown):
        await _command(gateway_store, "gw-nope")
    assert [c.command_id for c in await gateway_store.list_commands()] == [record.command_id]
    assert len(await gateway_store.list_audit()) == 1


async def test_deliver_commands_moves_only_what_the_table_allows(gateway_store: Store) -> None:
    queued = await _bring_to(gateway_store, S.QUEUED)
    delivered = await _bring_to(gateway_store, S.DELIVERED)
    running = await _bring_to(gateway_store, S.RUNNING)
    cancelled = await _bring_to(gateway_store, S.CANCELLED)
    ids = [queued.command_id, delivered.command_id, running.command_id, cancelled.command_id]
    later = NOW + MINUTE
    moved = await gateway_store.deliver_commands([*ids, "0" * 32, queued.command_id], now=later)
    assert moved == {queued.command_id, delivered.command_id}
    states = {c.command_id: (c.state, c.delivered_at) for c in await gateway_store.list_commands()}
    assert states[queued.command_id] == (S.DELIVERED, later)
    assert states[delivered.command_id] == (S.DELIVERED, later)  # redelivered: stamped again
    assert states[running.command_id] == (S.RUNNING, NOW)
    assert states[cancelled.command_id] == (S.CANCELLED, None)
    assert await gateway_store.deliver_commands([], now=later) == set()


# --- the SQLite writer's own statements ---------------------------------------------------------


async def test_on_a_sqlite_file_a_command_is_stored_as_sqlalchemy_stores_it(
    tmp_path: Path,
) -> None:
    """The writer thread queues commands on the sqlite3 connection itself: the row and its
    audit entry must be the very text SQLAlchemy's own statements store for the same values."""
    path = tmp_path / "cloud.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.create_gateway(gateway_id="gw-1", name="one", now=NOW)
        at = NOW + timedelta(microseconds=123456)
        record = await store.create_command(
            gateway_id="gw-1",
            kind="set-config",
            args={"section": "ntp", "servers": ["a", "b"], "on": True, "n": None, "é": 1.5},
            expires_at=at + HOUR,
            created_by="alice",
            now=at,
            source="198.51.100.7",
        )
        assert await store.get_command(record.command_id) == record
        twin = {
            **{c.name: getattr(record, c.name) for c in commands.c if c.name != "state"},
            "command_id": "f" * 32,
            "state": record.state.value,
        }
        async with store.engine.begin() as conn:
            await conn.execute(commands.insert(), twin)
        await store.audit(
            actor="alice",
            action="command.send",
            target="f" * 32,
            detail={
                "gateway": "gw-1",
                "kind": "set-config",
                "args": {"section": "ntp", "servers": ["a", "b"], "on": True, "n": None, "é": 1.5},
            },
            source="198.51.100.7",
            now=at,
        )
        # Marked delivered by the writer's own statement, at the time both were created.
        assert await store.deliver_commands([record.command_id, "f" * 32], now=at) == {
            record.command_id,
            "f" * 32,
        }
        delivered = await store.get_command(record.command_id)
        assert delivered is not None
        assert (delivered.state, delivered.delivered_at, delivered.updated_at) == (
            S.DELIVERED,
            at,
            at,
        )
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        mine, theirs = db.execute(
            "SELECT * FROM commands ORDER BY command_id = ?", ("f" * 32,)
        ).fetchall()
        assert mine[1:] == theirs[1:]
        assert mine[0] == record.command_id
        created, delivered_at = db.execute(
            "SELECT created_at, delivered_at FROM commands WHERE command_id = ?",
            (record.command_id,),
        ).fetchone()
        assert delivered_at == created  # the same text SQLAlchemy stored for the same time
        entries = db.execute("SELECT * FROM audit_log ORDER BY audit_id").fetchall()
        assert [e[4] for e in entries] == [record.command_id, "f" * 32]
        assert entries[0][1:4] + entries[0][5:] == entries[1][1:4] + entries[1][5:]
    finally:
        db.close()


async def test_on_a_sqlite_file_a_failed_queueing_leaves_nothing_and_says_why(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cloud.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.create_gateway(gateway_id="gw-1", name="one", now=NOW)
        with pytest.raises(ValueError, match="naive datetime"):
            await store.create_command(
                gateway_id="gw-1",
                kind="ping",
                args={},
                expires_at=datetime(2030, 1, 1, 13, 0),
                created_by="alice",
                now=NOW,
            )
        # The audit entry is refused after the command row went in: both are rolled back.
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'the audit log is closed'); END"
            )
        with pytest.raises(sa.exc.DBAPIError, match="the audit log is closed"):
            await _command(store)
        assert await store.list_commands() == []
        # The writer's connection is usable again: no transaction was left open on it.
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse_audit")
        record = await _command(store)
        assert [c.command_id for c in await store.list_commands()] == [record.command_id]
        assert len(await store.list_audit()) == 1
    finally:
        await store.close()


async def test_on_a_sqlite_file_marking_delivered_looks_commands_up_by_key(
    tmp_path: Path,
) -> None:
    """One statement marks any number of commands (their ids as a JSON array): each looked up
    by its primary key, not by a pass over every command ever queued."""
    path = tmp_path / "cloud.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.close()
    statement = _RawStatement(_DELIVER_JSON, sqlite3_dialect())
    db = sqlite3.connect(path)
    try:
        plan = " / ".join(
            row[3]
            for row in db.execute(
                "EXPLAIN QUERY PLAN " + statement.sql,
                ("delivered", "2030-01-01 12:00:00.000000", "x", '["a", "b"]', "queued"),
            )
        )
    finally:
        db.close()
    assert "SEARCH commands USING INDEX" in plan, plan
    assert "SCAN commands" not in plan, plan
