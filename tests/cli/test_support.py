"""``tether support grant | list | revoke`` as people run them: against a real cloud over TLS,
and against a stub for what goes over the wire and for answers the cloud never gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.cli.stub import Stub, invoke, no_traceback, tether_on
from tests.support.cloudproc import running_cloud
from tests.support.console import create_user, user_token

from tether.cloud.store import Store

_GRANT = {
    "id": "0f3c",
    "gateway_id": "gw-a",
    "user": "sam",
    "scope": "diagnose",
    "reason": "ticket 4711",
    "created_at": "2030-01-01T12:00:00Z",
    "created_by": "olga (operator)",
    "expires_at": "2030-01-01T16:00:00Z",
    "revoked_at": None,
    "revoked_by": None,
    "status": "active",
}


def _rows(shown: str) -> list[list[str]]:
    """The cells of each row of the table in *shown* (as a pipe gets it, one line a row)."""
    lines = [line for line in shown.splitlines() if line.startswith("│")]
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]


async def test_an_operator_grants_lists_and_revokes_and_support_follows(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support")
        await create_user(admin, "olga", "operator")
        sam = await user_token(admin, "sam")
        olga = await user_token(admin, "olga")
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(gateway_id="gw-a", name="a", now=datetime.now(UTC))
        finally:
            await store.close()

        before = await tether_on(cloud, "command", "send", "gw-a", "ping", token=sam)
        assert before.returncode == 1
        assert before.stderr == (
            "error: role 'support' needs a support grant for gateway gw-a (an operator gives "
            "one: tether support grant gw-a --user sam --hours 4 --reason TEXT) (HTTP 403)\n"
        )

        args = ("support", "grant", "gw-a", "--user", "sam", "--hours", "4")
        given = await tether_on(cloud, *args, "--reason", "ticket 4711: no readings", token=olga)
        assert given.returncode == 0, given.stderr
        assert given.stdout.startswith("support grant ")
        assert " sam may diagnose gw-a until " in given.stdout
        assert given.stdout.endswith(" UTC\n")

        listed = await tether_on(cloud, "support", "list", "--json", token=olga)
        [grant] = json.loads(listed.stdout)
        assert (grant["user"], grant["gateway_id"], grant["status"]) == ("sam", "gw-a", "active")
        assert grant["reason"] == "ticket 4711: no readings"
        assert grant["created_by"] == "olga (operator)"
        table = await tether_on(cloud, "support", "list", token=sam)  # their own grants
        assert table.returncode == 0, table.stderr
        [row] = _rows(table.stdout)
        assert row[:5] == [grant["id"], "gw-a", "sam", "diagnose", "active"]
        assert row[-1] == "ticket 4711: no readings"

        pinged = await tether_on(cloud, "command", "send", "gw-a", "ping", "--json", token=sam)
        assert pinged.returncode == 0, pinged.stderr
        assert json.loads(pinged.stdout)["created_by"] == "sam (support)"

        revoked = await tether_on(cloud, "support", "revoke", grant["id"], token=olga)
        assert revoked.returncode == 0, revoked.stderr
        assert (
            revoked.stdout == f"support grant {grant['id']} revoked: sam no longer reaches gw-a\n"
        )
        after = await tether_on(cloud, "command", "send", "gw-a", "ping", token=sam)
        assert after.returncode == 1
        assert "sam's last one was revoked at" in after.stderr

        active = await tether_on(cloud, "support", "list", "--json")
        assert json.loads(active.stdout) == []
        every = await tether_on(cloud, "support", "list", "--all", "--gateway", "gw-a", "--json")
        assert [g["status"] for g in json.loads(every.stdout)] == ["revoked"]

        again = await tether_on(cloud, "support", "revoke", grant["id"], "--json", token=olga)
        assert again.returncode == 1
        error = json.loads(again.stderr)
        assert error["status"] == 409
        assert "already revoked" in error["error"]

        refused = await tether_on(cloud, *args, "--reason", "mine", token=sam)
        assert refused.returncode == 1
        assert "role 'support' may not give or revoke support grants (HTTP 403)" in refused.stderr
        nobody = await tether_on(cloud, *args[:4], "vic", "--hours", "1", "--reason", "x")
        assert nobody.returncode == 1
        assert "no user named 'vic' (HTTP 404)" in nobody.stderr
        assert no_traceback(nobody)

        # A grant whose hours ran out is listed with --all as expired.
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            await store.create_support_grant(
                gateway_id="gw-a",
                username="sam",
                scope="diagnose",
                reason="last week",
                created_by="olga (operator)",
                now=now - timedelta(days=7),
                expires_at=now - timedelta(days=6),
            )
        finally:
            await store.close()
        every = await tether_on(cloud, "support", "list", "--all", "--user", "sam", "--json")
        assert [g["status"] for g in json.loads(every.stdout)] == ["revoked", "expired"]


def test_what_goes_over_the_wire(stub: Stub) -> None:
    stub.answer(200, json.dumps([_GRANT]).encode())
    assert invoke("support", "list", env=stub.env()).returncode == 0
    assert invoke("support", "list", "--all", env=stub.env()).returncode == 0
    listed = invoke("support", "list", "--gateway", "gw a", "--user", "sam", env=stub.env())
    assert listed.returncode == 0
    queries = [parse_qs(urlparse(line.split(" ", 1)[1]).query) for line in stub.seen]
    assert [urlparse(line.split(" ", 1)[1]).path for line in stub.seen] == [
        "/api/v1/support-grants"
    ] * 3
    assert queries == [
        {"active": ["true"], "limit": ["200"]},
        {"limit": ["200"]},
        {"gateway": ["gw a"], "user": ["sam"], "active": ["true"], "limit": ["200"]},
    ]
    stub.seen.clear()

    stub.answer(201, json.dumps(_GRANT).encode())
    args = ("--user", "sam", "--hours", "4", "--reason", "x")
    assert invoke("support", "grant", "gw/../a", *args, env=stub.env()).returncode == 0
    stub.answer(200, json.dumps({**_GRANT, "status": "revoked"}).encode())
    assert invoke("support", "revoke", "a/b?c", env=stub.env()).returncode == 0
    assert stub.seen == [
        "POST /api/v1/gateways/gw%2F..%2Fa/support-grants",
        "POST /api/v1/support-grants/a%2Fb%3Fc/revoke",
    ]


def test_hours_out_of_range_or_a_missing_option_is_a_usage_error(stub: Stub) -> None:
    for hours in ("0", "-1", "168.5", "nan", "inf"):
        args = ("support", "grant", "gw-a", "--user", "sam", "--hours", hours, "--reason", "x")
        done = invoke(*args, env=stub.env())
        assert done.returncode == 2, (hours, done.stderr)
        assert "--hours takes a number above 0 and at most 168" in done.stderr, done.stderr
    for missing in ("--user", "--hours", "--reason"):
        full = {"--user": "sam", "--hours": "4", "--reason": "x"}
        del full[missing]
        args = ("support", "grant", "gw-a", *(part for pair in full.items() for part in pair))
        done = invoke(*args, env=stub.env())
        assert done.returncode == 2, (missing, done.stderr)
        assert missing in done.stderr
    for limit in ("0", "1001"):
        assert invoke("support", "list", "--limit", limit, env=stub.env()).returncode == 2
    assert stub.seen == []


def test_a_malformed_answer_is_one_error_line_naming_the_field(stub: Stub) -> None:
    for answer, args, field in (
        ([{**_GRANT, "expires_at": "soon"}], ("support", "list"), "$[0].expires_at"),
        ({"id": "x"}, ("support", "list"), "Expected `array`, got `object`"),
        ({**_GRANT, "user": None}, ("support", "revoke", "x"), "$.user"),
        (
            {k: v for k, v in _GRANT.items() if k != "status"},
            ("support", "grant", "gw", "--user", "sam", "--hours", "1", "--reason", "x"),
            "status",
        ),
    ):
        stub.answer(200, json.dumps(answer).encode())
        done = invoke(*args, env=stub.env())
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith("error: the cloud's answer has an unexpected shape")
        assert field in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
        assert no_traceback(done)

    stub.answer(200, json.dumps([{**_GRANT, "a_field_this_client_does_not_know": 1}]).encode())
    done = invoke("support", "list", "--all", env=stub.env())
    assert done.returncode == 0, done.stderr
    [cells] = _rows(done.stdout)
    assert cells[:6] == ["0f3c", "gw-a", "sam", "diagnose", "active", "2030-01-01 16:00:00"]
    assert cells[7:] == ["olga (operator)", "ticket 4711"]
    as_json = invoke("support", "list", "--json", env=stub.env())
    assert json.loads(as_json.stdout)[0]["a_field_this_client_does_not_know"] == 1
