"""Reading the audit log by actor, action (exact or a family), target and time, a page at a
time, on SQLite and a real PostgreSQL; and the filters that cannot mean anything, refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tether.cloud.store import Store
from tether.cloud.store.accounts import AccountStore
from tether.cloud.store.store import AuditFilter, AuditFilterInvalid

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)

#: (actor, action, target): one entry a minute from NOW, in this order.
ENTRIES = [
    ("alice (admin)", "token.create", "tok-1"),
    ("bob (operator)", "command.send", "gw-1"),
    ("alice (admin)", "gateway.revoke", "gw-1"),
    ("alice (admin)", "api-token.create", "tok-2"),
    ("bob (operator)", "token.revoke", "tok-1"),
    ("carol (admin)", "gateway.revoke", "gw-2"),
    ("alice (admin)", "token.revoke", "tok-3"),
    ("bob (operator)", "a_b.c", None),
    ("bob (operator)", "axb.c", None),
    ("Alice (admin)", "TOKEN.create", "tok-4"),
]


async def _seed(store: Store) -> list[int]:
    for minute, (actor, action, target) in enumerate(ENTRIES):
        await store.audit(
            actor=actor,
            action=action,
            target=target,
            detail=None,
            source="198.51.100.4",
            now=NOW + minute * MINUTE,
        )
    return [e.audit_id for e in reversed(await store.list_audit(limit=100))]


def _picks(
    *, actor: str | None = None, action: str | None = None, target: str | None = None
) -> list[int]:
    """Positions in ENTRIES that the filter should take, newest first."""
    taken = [
        i
        for i, (a, act, t) in enumerate(ENTRIES)
        if (actor is None or a == actor)
        and (target is None or t == target)
        and (
            action is None
            or (act.startswith(action[:-1]) if action.endswith(".*") else act == action)
        )
    ]
    return taken[::-1]


async def test_each_filter_matches_exactly_and_they_combine(store: Store) -> None:
    ids = await _seed(store)

    async def positions(**filters: str) -> list[int]:
        found = await store.list_audit(**filters)
        return [ids.index(e.audit_id) for e in found]

    assert await positions(actor="alice (admin)") == [6, 3, 2, 0]  # not "Alice (admin)"
    assert await positions(actor="alice (admin)") == _picks(actor="alice (admin)")
    assert await positions(actor="alice") == []  # exact, not a part
    assert await positions(target="gw-1") == [2, 1]
    assert await positions(action="gateway.revoke") == [5, 2]
    assert await positions(action="gateway.revoke", target="gw-1") == [2]
    assert await positions(actor="bob (operator)", target="tok-1") == [4]
    assert await positions(action="token.create") == [0]  # case counts, on SQLite too


async def test_a_family_of_actions_is_a_prefix_compared_as_written(store: Store) -> None:
    ids = await _seed(store)

    async def positions(action: str, **more: str) -> list[int]:
        found = await store.list_audit(action=action, **more)
        return [ids.index(e.audit_id) for e in found]

    # every token.* action, not api-token.create, nor TOKEN.create (LIKE ignores case on SQLite)
    assert await positions("token.*") == [6, 4, 0]
    assert await positions("token.*") == _picks(action="token.*")
    assert await positions("TOKEN.*") == [9]
    assert await positions("api-token.*") == [3]
    assert await positions("a_b.*") == [7]  # "_" is a character here, not LIKE's wildcard
    assert await positions("token.*", actor="alice (admin)") == [6, 0]
    assert await positions("nothing.*") == []


async def test_since_is_inclusive_until_exclusive_in_any_offset(store: Store) -> None:
    ids = await _seed(store)
    plus5 = timezone(timedelta(hours=5))
    found = await store.list_audit(
        since=(NOW + 2 * MINUTE).astimezone(plus5), until=(NOW + 5 * MINUTE).astimezone(plus5)
    )
    assert [ids.index(e.audit_id) for e in found] == [4, 3, 2]
    assert all(e.at.utcoffset() == timedelta(0) for e in found)
    found = await store.list_audit(actor="alice (admin)", since=NOW + 3 * MINUTE)
    assert [ids.index(e.audit_id) for e in found] == [6, 3]
    assert await store.list_audit(until=NOW) == []
    assert [e.audit_id for e in await store.list_audit(until=NOW + MINUTE)] == [ids[0]]


async def test_pages_of_a_filtered_log_cover_it_once_each_way(store: Store) -> None:
    ids = await _seed(store)
    want = [ids[i] for i in _picks(actor="bob (operator)")]
    assert len(want) == 4
    seen: list[int] = []
    before: int | None = None
    for _ in range(10):  # bounded: two entries a page, four entries
        page = await store.list_audit(actor="bob (operator)", before_id=before, limit=2)
        if not page:
            break
        seen += [e.audit_id for e in page]
        before = page[-1].audit_id
    assert seen == want  # newest first, none twice, none missed

    accounts = AccountStore(store)
    forward: list[int] = []
    after = 0
    for _ in range(10):
        page = await accounts.audit_page(
            after_id=after, limit=3, where=AuditFilter(actor="bob (operator)")
        )
        if not page:
            break
        forward += [e.audit_id for e in page]
        after = page[-1].audit_id
    assert forward == want[::-1]  # the export reads oldest first

    console = await accounts.audit_before(
        before_id=ids[6], limit=10, where=AuditFilter(action="token.*")
    )
    assert [e.audit_id for e in console] == [ids[4], ids[0]]
    # no filter: what the console and the export read before filters existed
    newest = await accounts.audit_before(before_id=None, limit=3)
    assert [e.audit_id for e in newest] == [ids[9], ids[8], ids[7]]
    assert [e.audit_id for e in await accounts.audit_page(after_id=ids[7], limit=5)] == ids[8:]


@pytest.mark.parametrize(
    ("filters", "words"),
    [
        ({"since": datetime(2030, 1, 1)}, "since must carry a UTC offset"),
        ({"until": datetime(2030, 1, 1)}, "until must carry a UTC offset"),
        ({"since": NOW, "until": NOW - MINUTE}, "must be later than since"),
        ({"since": NOW, "until": NOW}, "must be later than since"),
        ({"action": "*"}, "action must be an action"),
        ({"action": "token*"}, "action must be an action"),
        ({"action": "token.*.x"}, "action must be an action"),
        ({"action": "token.%"}, "action must be an action"),
        ({"action": "to ken"}, "action must be an action"),
        ({"action": ""}, "action must be an action"),
        ({"action": "a." * 40 + "b"}, "action must be an action"),
        ({"actor": "x" * 256}, "actor must be at most 255 characters"),
        ({"target": "x" * 256}, "target must be at most 255 characters"),
    ],
)
async def test_filters_that_cannot_mean_anything_are_refused(
    store: Store, filters: dict[str, object], words: str
) -> None:
    with pytest.raises(AuditFilterInvalid, match=words):
        await store.list_audit(**filters)


def test_a_filter_read_from_a_query_string() -> None:
    parsed = AuditFilter.from_query(
        {
            "actor": " alice (admin) ",
            "action": "token.*",
            "target": "",
            "since": "2030-01-01T13:00:00+01:00",
            "until": "2030-01-02T00:00:00Z",
            "other": "ignored",
        }
    )
    assert parsed == AuditFilter(
        actor="alice (admin)",
        action="token.*",
        since=NOW,
        until=datetime(2030, 1, 2, tzinfo=UTC),
    )
    assert parsed.narrowed
    assert AuditFilter.from_query(parsed.query_items()) == parsed
    assert parsed.query_items()["since"] == "2030-01-01T12:00:00+00:00"
    assert not AuditFilter.from_query({"actor": "  ", "since": ""}).narrowed
    with pytest.raises(AuditFilterInvalid, match="since must carry a UTC offset"):
        AuditFilter.from_query({"since": "2030-01-01T12:00"})
    assert AuditFilter.from_query({"since": "2030-01-01T12:00"}, assume=UTC).since == NOW
    with pytest.raises(AuditFilterInvalid, match=r"until must be an ISO 8601 time .* 'yesterday'"):
        AuditFilter.from_query({"until": "yesterday"})
