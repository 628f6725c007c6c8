"""The Store API against SQLite and a real PostgreSQL: tokens, gateways, certificates, audit."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.cloud.store import (
    ROLES,
    ApiTokenUnknown,
    CertificateExists,
    CertificateUnknown,
    GatewayExists,
    GatewayRevoked,
    GatewayUnknown,
    Store,
    StoreError,
    TokenAlreadyUsed,
    TokenExpired,
    TokenRevoked,
    TokenUnknown,
    UnknownRole,
)
from tether.cloud.store.models import api_tokens, enrollment_tokens

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# --- enrollment tokens ---------------------------------------------------------------------


async def test_enrollment_token_is_single_use(store: Store) -> None:
    record, secret = await store.create_enrollment_token(
        gateway_name="boiler-room", ttl=HOUR, created_by="alice", now=NOW
    )
    assert record.expires_at == NOW + HOUR
    assert record.used_at is None
    assert record.usable(NOW)
    used = await store.consume_enrollment_token(secret, now=NOW + timedelta(minutes=5))
    assert used.token_id == record.token_id
    assert used.gateway_name == "boiler-room"
    assert used.used_at == NOW + timedelta(minutes=5)
    with pytest.raises(TokenAlreadyUsed, match="already used"):
        await store.consume_enrollment_token(secret, now=NOW + timedelta(minutes=6))


async def test_only_the_hash_of_an_enrollment_secret_is_stored(store: Store) -> None:
    _, secret = await store.create_enrollment_token(
        gateway_name=None, ttl=HOUR, created_by="alice", now=NOW
    )
    assert len(secret) >= 43
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(enrollment_tokens))).all()
    assert len(rows) == 1
    assert secret not in {str(v) for v in rows[0]}
    assert rows[0].token_hash == hashlib.sha256(secret.encode()).hexdigest()


async def test_unknown_enrollment_token(store: Store) -> None:
    with pytest.raises(TokenUnknown, match="not known"):
        await store.consume_enrollment_token("no-such-secret", now=NOW)


async def test_enrollment_token_expires(store: Store) -> None:
    record, secret = await store.create_enrollment_token(
        gateway_name=None, ttl=HOUR, created_by="alice", now=NOW
    )
    assert not record.usable(NOW + HOUR)
    with pytest.raises(TokenExpired, match="expired") as caught:
        await store.consume_enrollment_token(secret, now=NOW + HOUR)
    assert caught.value.token_id == record.token_id
    # The failed attempt did not spend it: it is still unused, merely expired.
    [listed] = await store.list_enrollment_tokens()
    assert listed.used_at is None


async def test_revoked_enrollment_token_cannot_be_used(store: Store) -> None:
    record, secret = await store.create_enrollment_token(
        gateway_name=None, ttl=HOUR, created_by="alice", now=NOW
    )
    revoked = await store.revoke_enrollment_token(record.token_id, now=NOW)
    assert revoked.revoked_at == NOW
    again = await store.revoke_enrollment_token(record.token_id, now=NOW + HOUR)
    assert again.revoked_at == NOW
    with pytest.raises(TokenRevoked, match="revoked"):
        await store.consume_enrollment_token(secret, now=NOW)
    with pytest.raises(TokenUnknown):
        await store.revoke_enrollment_token("0" * 32)


async def test_concurrent_consumes_of_one_token_have_one_winner(store_url: str) -> None:
    nodes = [await Store.open(store_url) for _ in range(2)]
    try:
        _, secret = await nodes[0].create_enrollment_token(
            gateway_name=None, ttl=HOUR, created_by="alice", now=NOW
        )
        outcomes = await asyncio.gather(
            *(nodes[i % 2].consume_enrollment_token(secret, now=NOW) for i in range(6)),
            return_exceptions=True,
        )
    finally:
        for node in nodes:
            await node.close()
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 5
    assert all(isinstance(o, TokenAlreadyUsed) for o in losers), losers


async def test_enrollment_tokens_are_listed_newest_first(store: Store) -> None:
    first, _ = await store.create_enrollment_token(
        gateway_name="a", ttl=HOUR, created_by="alice", now=NOW
    )
    second, _ = await store.create_enrollment_token(
        gateway_name="b", ttl=HOUR, created_by="bob", now=NOW + timedelta(seconds=1)
    )
    assert [t.token_id for t in await store.list_enrollment_tokens()] == [
        second.token_id,
        first.token_id,
    ]


async def test_enrollment_token_needs_a_positive_lifetime(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        await store.create_enrollment_token(
            gateway_name=None, ttl=timedelta(0), created_by="alice", now=NOW
        )


# --- gateways ------------------------------------------------------------------------------


async def test_gateway_registry(store: Store) -> None:
    created = await store.create_gateway(gateway_id="gw-b", name="roof", now=NOW)
    await store.create_gateway(gateway_id="gw-a", name="basement", now=NOW)
    assert created.created_at == NOW
    assert not created.linked
    assert created.revoked_at is None
    assert await store.get_gateway("gw-b") == created
    assert await store.get_gateway("gw-zzz") is None
    assert [g.gateway_id for g in await store.list_gateways()] == ["gw-a", "gw-b"]
    with pytest.raises(GatewayExists):
        await store.create_gateway(gateway_id="gw-a", name="again", now=NOW)


async def test_revoked_among_names_the_revoked_of_many_gateways(store: Store) -> None:
    ids = [f"gw-{i:04d}" for i in range(2500)]  # more than one query takes
    for gateway_id in ids:
        await store.create_gateway(gateway_id=gateway_id, name="n", now=NOW)
    for gateway_id in (ids[3], ids[2100]):
        await store.revoke_gateway(gateway_id, now=NOW)
    assert await store.revoked_among([*ids, "unknown"]) == {ids[3], ids[2100]}
    assert await store.revoked_among([]) == set()


async def test_revoking_a_gateway_invalidates_its_certificates(store: Store) -> None:
    await store.create_gateway(gateway_id="gw-1", name="n", now=NOW)
    await store.create_gateway(gateway_id="gw-2", name="other", now=NOW)
    for gateway_id, serial in (("gw-1", "0a"), ("gw-1", "0b"), ("gw-2", "0c")):
        await store.record_certificate(
            gateway_id=gateway_id,
            serial_hex=serial,
            fingerprint="f" * 64,
            not_before=NOW,
            not_after=NOW + 30 * DAY,
            now=NOW,
        )
    at = NOW + HOUR
    assert await store.certificate_is_valid("0a", now=at)
    revoked = await store.revoke_gateway("gw-1", now=at)
    assert revoked.revoked_at == at
    assert revoked.revoked
    assert not await store.certificate_is_valid("0a", now=at)
    assert not await store.certificate_is_valid("0b", now=at)
    assert await store.certificate_is_valid("0c", now=at)
    certificate = await store.get_certificate("0b")
    assert certificate is not None
    assert certificate.revoked_at == at
    # Idempotent: the first revocation time stands.
    assert (await store.revoke_gateway("gw-1", now=at + HOUR)).revoked_at == at
    with pytest.raises(GatewayUnknown):
        await store.revoke_gateway("nope", now=at)
    with pytest.raises(GatewayRevoked):
        await store.record_certificate(
            gateway_id="gw-1",
            serial_hex="0d",
            fingerprint="f" * 64,
            not_before=at,
            not_after=at + DAY,
            now=at,
        )


# --- certificates --------------------------------------------------------------------------


async def test_certificate_validity_window_and_current_certificate(store: Store) -> None:
    await store.create_gateway(gateway_id="gw-1", name="n", now=NOW)
    record = await store.record_certificate(
        gateway_id="gw-1",
        serial_hex="7F3A",
        fingerprint="ab" * 32,
        not_before=NOW,
        not_after=NOW + DAY,
        now=NOW,
    )
    assert record.serial_hex == "7f3a"
    assert record.gateway_id == "gw-1"
    assert record.revoked_at is None
    gateway = await store.get_gateway("gw-1")
    assert gateway is not None
    assert (gateway.cert_serial, gateway.cert_not_after) == ("7f3a", NOW + DAY)
    assert await store.get_certificate("7F3A") == record
    assert await store.get_certificate("dead") is None
    assert not await store.certificate_is_valid("7f3a", now=NOW - timedelta(seconds=1))
    assert await store.certificate_is_valid("7f3a", now=NOW)
    assert await store.certificate_is_valid("7f3a", now=NOW + DAY)
    assert not await store.certificate_is_valid("7f3a", now=NOW + DAY + timedelta(seconds=1))
    assert not await store.certificate_is_valid("dead", now=NOW)

    renewed = await store.record_certificate(
        gateway_id="gw-1",
        serial_hex="7f3b",
        fingerprint="cd" * 32,
        not_before=NOW + HOUR,
        not_after=NOW + 2 * DAY,
        now=NOW + HOUR,
    )
    gateway = await store.get_gateway("gw-1")
    assert gateway is not None
    assert gateway.cert_serial == renewed.serial_hex
    # The previous certificate stays valid until it ends or is revoked (renewal overlap).
    assert await store.certificate_is_valid("7f3a", now=NOW + HOUR)
    await store.revoke_certificate("7f3a", now=NOW + 2 * HOUR)
    assert not await store.certificate_is_valid("7f3a", now=NOW + 2 * HOUR)
    assert await store.certificate_is_valid("7f3b", now=NOW + 2 * HOUR)
    with pytest.raises(CertificateUnknown):
        await store.revoke_certificate("dead", now=NOW)


async def test_certificate_serial_is_unique_and_gateway_must_exist(store: Store) -> None:
    await store.create_gateway(gateway_id="gw-1", name="n", now=NOW)

    async def record(gateway_id: str, serial_hex: str) -> None:
        await store.record_certificate(
            gateway_id=gateway_id,
            serial_hex=serial_hex,
            fingerprint="f" * 64,
            not_before=NOW,
            not_after=NOW + DAY,
            now=NOW,
        )

    await record("gw-1", "01")
    with pytest.raises(CertificateExists):
        await record("gw-1", "01")
    with pytest.raises(GatewayUnknown):
        await record("nope", "02")
    # The refused duplicate left the gateway's current certificate as it was.
    gateway = await store.get_gateway("gw-1")
    assert gateway is not None
    assert gateway.cert_serial == "01"


# --- operator API tokens -------------------------------------------------------------------


async def test_api_token_authentication(store: Store) -> None:
    record, secret = await store.create_api_token(
        name="ci", role="operator", created_by="alice", now=NOW
    )
    assert secret.startswith("tt_")
    assert record.expires_at is None
    assert record.last_used_at is None
    authenticated = await store.authenticate_api_token(secret, now=NOW + HOUR)
    assert authenticated is not None
    assert (authenticated.token_id, authenticated.role) == (record.token_id, "operator")
    assert authenticated.last_used_at == NOW + HOUR
    # What the check returns (on a SQLite file, from the writer's own statement) is the record
    # as the store reads it back.
    assert await store.list_api_tokens() == [authenticated]
    assert await store.authenticate_api_token("tt_wrong", now=NOW) is None
    assert await store.authenticate_api_token(secret[:-1], now=NOW) is None
    async with store.engine.connect() as conn:
        stored = (await conn.execute(sa.select(api_tokens))).one()
    assert secret not in {str(v) for v in stored}


async def test_api_token_expiry_and_revocation(store: Store) -> None:
    short, short_secret = await store.create_api_token(
        name="temp", role="viewer", created_by="alice", now=NOW, ttl=HOUR
    )
    assert short.expires_at == NOW + HOUR
    assert await store.authenticate_api_token(short_secret, now=NOW + timedelta(minutes=59))
    assert await store.authenticate_api_token(short_secret, now=NOW + HOUR) is None

    kept, kept_secret = await store.create_api_token(
        name="kept", role="admin", created_by="alice", now=NOW
    )
    revoked = await store.revoke_api_token(kept.token_id, now=NOW + HOUR)
    assert revoked.revoked_at == NOW + HOUR
    assert await store.authenticate_api_token(kept_secret, now=NOW + HOUR) is None
    listed = {t.token_id: t for t in await store.list_api_tokens()}
    assert set(listed) == {short.token_id, kept.token_id}
    assert listed[kept.token_id].revoked_at == NOW + HOUR
    with pytest.raises(ApiTokenUnknown):
        await store.revoke_api_token("0" * 32)


async def test_api_token_roles(store: Store) -> None:
    for role in ROLES:
        record, _ = await store.create_api_token(name=role, role=role, created_by="alice", now=NOW)
        assert record.role == role
    with pytest.raises(UnknownRole, match="superuser"):
        await store.create_api_token(name="x", role="superuser", created_by="alice", now=NOW)
    assert set(ROLES) == {"admin", "operator", "viewer", "support"}


# --- audit ---------------------------------------------------------------------------------


async def test_audit_is_appended_and_listed_newest_first(store: Store) -> None:
    for minute, action in enumerate(("token.create", "gateway.revoke", "command.create")):
        await store.audit(
            actor="alice",
            action=action,
            target="gw-1" if minute else None,
            detail={"minute": minute, "nested": {"ok": True}} if minute != 1 else None,
            source="198.51.100.4",
            now=NOW + timedelta(minutes=minute),
        )
    entries = await store.list_audit()
    assert [e.action for e in entries] == ["command.create", "gateway.revoke", "token.create"]
    assert entries[0].detail == {"minute": 2, "nested": {"ok": True}}
    assert entries[1].detail is None
    assert entries[2].target is None
    assert entries[0].at == NOW + timedelta(minutes=2)
    assert entries[0].audit_id > entries[1].audit_id > entries[2].audit_id
    assert [e.action for e in await store.list_audit(limit=1)] == ["command.create"]
    since = await store.list_audit(since=NOW + timedelta(minutes=1))
    assert [e.action for e in since] == ["command.create", "gateway.revoke"]


def test_audit_log_offers_no_way_to_change_history() -> None:
    names = [n for n in dir(Store) if "audit" in n]
    assert sorted(names) == ["audit", "list_audit"]


def test_store_errors_share_a_base() -> None:
    for error in (TokenUnknown, TokenExpired, TokenAlreadyUsed, GatewayUnknown, UnknownRole):
        assert issubclass(error, StoreError)
    assert issubclass(TokenRevoked, TokenAlreadyUsed)


# --- opening -------------------------------------------------------------------------------


async def test_in_memory_sqlite_serves_concurrent_callers() -> None:
    store = await Store.open("sqlite+aiosqlite:///:memory:")
    try:
        outcomes = await asyncio.gather(
            *(store.create_gateway(gateway_id=f"gw-{i}", name="n", now=NOW) for i in range(5)),
            *(store.list_gateways() for _ in range(5)),
        )
        assert len(outcomes) == 10
        assert sorted(g.gateway_id for g in await store.list_gateways()) == [
            f"gw-{i}" for i in range(5)
        ]
    finally:
        await store.close()


async def test_sqlite_file_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "tether" / "cloud.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert store.dialect == "sqlite"
        async with store.engine.connect() as conn:
            mode = await conn.scalar(sa.text("PRAGMA journal_mode"))
            foreign_keys = await conn.scalar(sa.text("PRAGMA foreign_keys"))
        assert (mode, foreign_keys) == ("wal", 1)
    finally:
        await store.close()
    assert path.is_file()


async def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        await Store.open("mysql+aiomysql://user@127.0.0.1/tether")


async def test_a_postgres_store_holds_no_more_connections_than_it_is_given(
    store_url: str,
) -> None:
    """Twenty callers at once on a store given 4 connections: at most 3 are open to the server
    at any moment (the fourth is kept for LISTEN), each caller is served in turn."""
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's connections")
    with pytest.raises(ValueError, match="at least 2 connections"):
        await Store.open(store_url, connections=1)
    store = await Store.open(store_url, connections=4)
    count = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend'"
    )

    async def caller() -> int:
        async with store.engine.connect() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(0.05)"))
            return int((await conn.execute(count)).scalar_one())

    try:
        seen = await asyncio.gather(*(caller() for _ in range(20)))
    finally:
        await store.close()
    assert len(seen) == 20
    assert max(seen) <= 3, seen
    assert max(seen) >= 2, seen  # callers did overlap: the limit, not luck, kept the count


# --- the SQLite file -------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_a_new_sqlite_store_and_its_journal_files_are_readable_by_their_owner_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "tether.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.create_gateway(gateway_id="gw-1", name="one", now=NOW)  # the WAL is written
        wal, shm = path.with_name("tether.db-wal"), path.with_name("tether.db-shm")
        assert wal.exists()
        assert shm.exists()
        assert {_mode(path), _mode(wal), _mode(shm)} == {0o600}
        assert _mode(path.parent) == 0o700
    finally:
        await store.close()


async def test_an_existing_sqlite_store_readable_by_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.close()
    path.chmod(0o644)
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert _mode(path) == 0o600
        assert await store.list_gateways() == []  # the same database, still readable
    finally:
        await store.close()
