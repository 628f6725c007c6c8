"""Support grants in the store: given, listed, found while they count, revoked, refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tether.cloud.store import GatewayRevoked, GatewayUnknown, Store
from tether.cloud.store.grants import (
    REASON_MAX,
    GrantExpired,
    GrantInvalid,
    GrantRevoked,
    GrantUnknown,
)
from tether.cloud.store.records import SupportGrantRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


async def _gateway(store: Store, gateway_id: str = "gw-1") -> str:
    await store.create_gateway(gateway_id=gateway_id, name=gateway_id, now=NOW - 24 * HOUR)
    return gateway_id


async def _grant(
    store: Store,
    gateway_id: str = "gw-1",
    username: str = "sam",
    *,
    at: datetime = NOW,
    hours: float = 4,
    reason: str = "ticket 4711: the boiler room's readings stopped",
) -> SupportGrantRecord:
    return await store.create_support_grant(
        gateway_id=gateway_id,
        username=username,
        scope="diagnose",
        reason=reason,
        created_by="olga (operator)",
        now=at,
        expires_at=at + timedelta(hours=hours),
    )


async def test_a_grant_counts_from_its_start_until_it_expires(store: Store) -> None:
    await _gateway(store)
    grant = await _grant(store, reason="  ticket 4711  ")
    assert grant.reason == "ticket 4711"  # kept without the surrounding spaces
    assert grant.expires_at == NOW + 4 * HOUR
    assert await store.get_support_grant(grant.grant_id) == grant

    async def active(at: datetime) -> SupportGrantRecord | None:
        return await store.active_support_grant(
            gateway_id="gw-1", username="sam", scope="diagnose", now=at
        )

    assert await active(NOW) == grant
    assert await active(NOW + 4 * HOUR - timedelta(seconds=1)) == grant
    assert await active(NOW + 4 * HOUR) is None  # it ends by itself, nobody acts
    assert await active(NOW - timedelta(seconds=1)) is None
    assert grant.status(NOW) == "active"
    assert grant.status(NOW + 5 * HOUR) == "expired"
    for other in (
        {"gateway_id": "gw-2", "username": "sam"},
        {"gateway_id": "gw-1", "username": "sue"},
    ):
        found = await store.active_support_grant(**other, scope="diagnose", now=NOW)
        assert found is None, other


async def test_listing_filters_by_gateway_user_and_what_counts_now(store: Store) -> None:
    await _gateway(store, "gw-1")
    await _gateway(store, "gw-2")
    old = await _grant(store, "gw-1", "sam", at=NOW - 10 * HOUR, hours=2)  # expired
    one = await _grant(store, "gw-1", "sam", at=NOW - HOUR)
    two = await _grant(store, "gw-2", "sam", at=NOW - timedelta(minutes=30))
    sue = await _grant(store, "gw-1", "sue", at=NOW - timedelta(minutes=10))

    def ids(grants: list[SupportGrantRecord]) -> list[str]:
        return [g.grant_id for g in grants]

    newest_first = [sue, two, one, old]
    assert ids(await store.list_support_grants()) == ids(newest_first)
    assert ids(await store.list_support_grants(gateway_id="gw-1")) == ids([sue, one, old])
    assert ids(await store.list_support_grants(username="sam")) == ids([two, one, old])
    assert ids(await store.list_support_grants(active_at=NOW)) == ids([sue, two, one])
    assert ids(
        await store.list_support_grants(gateway_id="gw-1", username="sam", active_at=NOW)
    ) == ids([one])
    assert ids(await store.list_support_grants(limit=2)) == ids([sue, two])
    assert await store.list_support_grants(scope="another") == []


async def test_of_several_grants_the_one_lasting_longest_is_found(store: Store) -> None:
    await _gateway(store)
    await _grant(store, hours=1)
    longer = await _grant(store, hours=8)
    await _grant(store, hours=2)
    found = await store.active_support_grant(
        gateway_id="gw-1", username="sam", scope="diagnose", now=NOW
    )
    assert found == longer


async def test_a_revoked_grant_no_longer_counts_and_keeps_who_revoked_it(store: Store) -> None:
    await _gateway(store)
    grant = await _grant(store)
    revoked = await store.revoke_support_grant(
        grant.grant_id, revoked_by="olga (operator)", now=NOW + HOUR
    )
    assert revoked.revoked_at == NOW + HOUR
    assert revoked.revoked_by == "olga (operator)"
    assert revoked.status(NOW + HOUR) == "revoked"
    found = await store.active_support_grant(
        gateway_id="gw-1", username="sam", scope="diagnose", now=NOW + HOUR
    )
    assert found is None
    with pytest.raises(GrantRevoked, match="already revoked") as again:
        await store.revoke_support_grant(
            grant.grant_id, revoked_by="ann (admin)", now=NOW + 2 * HOUR
        )
    assert again.value.grant.revoked_by == "olga (operator)"  # the first revocation is kept
    assert again.value.grant.revoked_at == NOW + HOUR


async def test_an_expired_or_unknown_grant_is_not_revoked(store: Store) -> None:
    await _gateway(store)
    grant = await _grant(store, at=NOW - 10 * HOUR, hours=1)
    with pytest.raises(GrantExpired, match="already expired at 2030-01-01T03:00:00Z"):
        await store.revoke_support_grant(grant.grant_id, revoked_by="olga (operator)", now=NOW)
    stored = await store.get_support_grant(grant.grant_id)
    assert stored is not None
    assert stored.revoked_at is None
    with pytest.raises(GrantUnknown):
        await store.revoke_support_grant("no-such-grant", revoked_by="olga (operator)", now=NOW)
    assert await store.get_support_grant("no-such-grant") is None


async def test_grants_the_rules_refuse_are_not_stored(store: Store) -> None:
    await _gateway(store)
    with pytest.raises(GatewayUnknown):
        await _grant(store, "gw-none")
    await _gateway(store, "gw-gone")
    await store.revoke_gateway("gw-gone", now=NOW)
    with pytest.raises(GatewayRevoked):
        await _grant(store, "gw-gone")
    for reason, words in (
        ("", "may not be empty"),
        ("   ", "may not be empty"),
        ("x" * (REASON_MAX + 1), f"at most {REASON_MAX} characters"),
        ("line one\nline two", "control characters"),
        ("bell\x07", "control characters"),
    ):
        with pytest.raises(GrantInvalid, match=words):
            await _grant(store, reason=reason)
    with pytest.raises(GrantInvalid, match="scope 'root' is not one a grant may name"):
        await store.create_support_grant(
            gateway_id="gw-1",
            username="sam",
            scope="root",
            reason="why not",
            created_by="olga (operator)",
            now=NOW,
            expires_at=NOW + HOUR,
        )
    with pytest.raises(GrantInvalid, match="end after it begins"):
        await _grant(store, hours=0)
    with pytest.raises(GrantInvalid, match="username"):
        await _grant(store, username="u" * 65)
    assert await store.list_support_grants() == []
    longest = await _grant(store, reason="x" * REASON_MAX)
    assert len(longest.reason) == REASON_MAX


async def test_a_command_sent_under_a_grant_names_it_in_its_audit_entry(store: Store) -> None:
    await _gateway(store)
    grant = await _grant(store)
    for grant_id in (grant.grant_id, None):
        await store.create_command(
            gateway_id="gw-1",
            kind="ping",
            args={},
            expires_at=NOW + HOUR,
            created_by="sam (support)",
            now=NOW,
            grant_id=grant_id,
        )
    entries = await store.list_audit(action="command.send")
    details = [e.detail or {} for e in entries]
    assert [d.get("grant") for d in details] == [None, grant.grant_id]  # newest first
    assert all(d["gateway"] == "gw-1" and d["kind"] == "ping" for d in details)
