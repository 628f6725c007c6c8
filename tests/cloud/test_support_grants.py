"""Support grants through the operator API: the customer's side (admin, operator) gives a
support user access to one gateway for some hours; the support user reaches that gateway and
no other, until the grant expires by itself or is revoked; every step is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tests.support.cloudproc import running_cloud
from tests.support.console import create_user, user_token

from tether.cloud.store import Store

REASON = "ticket 4711: the boiler room's readings stopped"


async def _grant(
    client: httpx.AsyncClient, gateway_id: str, user: str, hours: float = 4
) -> httpx.Response:
    return await client.post(
        f"/api/v1/gateways/{gateway_id}/support-grants",
        json={"user": user, "hours": hours, "reason": REASON},
    )


async def _ping(client: httpx.AsyncClient, gateway_id: str, kind: str = "ping") -> httpx.Response:
    return await client.post(f"/api/v1/gateways/{gateway_id}/commands", json={"kind": kind})


def _hint(gateway_id: str) -> str:
    return (
        f"(an operator gives one: tether support grant {gateway_id} --user sam --hours 4 "
        "--reason TEXT)"
    )


async def test_a_grant_reaches_one_gateway_until_it_is_revoked_or_expires(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support", "support passphrase")
        await create_user(admin, "olga", "operator", "operator passphrase")
        await create_user(admin, "vic", "viewer", "viewer passphrase")
        tokens = {name: await user_token(admin, name) for name in ("sam", "olga", "vic")}
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            for gateway_id in ("gw-a", "gw-b"):
                await store.create_gateway(gateway_id=gateway_id, name=gateway_id, now=now)
            async with (
                cloud.api(tokens["sam"]) as sam,
                cloud.api(tokens["olga"]) as olga,
                cloud.api(tokens["vic"]) as vic,
            ):
                # Neither a viewer nor the support user may give a grant; an operator may.
                for who in (vic, sam):
                    refused = await _grant(who, "gw-a", "sam")
                    assert refused.status_code == 403
                    assert "may not give or revoke support grants" in refused.json()["error"]
                granted = await _grant(olga, "gw-a", "sam")
                assert granted.status_code == 201, granted.text
                grant: dict[str, Any] = granted.json()
                assert {k: grant[k] for k in ("gateway_id", "user", "scope", "status")} == {
                    "gateway_id": "gw-a",
                    "user": "sam",
                    "scope": "diagnose",
                    "status": "active",
                }
                assert grant["created_by"] == "olga (operator)"
                assert grant["reason"] == REASON
                lasts = datetime.fromisoformat(grant["expires_at"]) - datetime.fromisoformat(
                    grant["created_at"]
                )
                assert lasts == timedelta(hours=4)

                # That gateway, its diagnostic commands; not another gateway, not a reboot.
                for kind in ("ping", "metrics"):
                    answer = await _ping(sam, "gw-a", kind)
                    assert answer.status_code == 201, answer.text
                other = await _ping(sam, "gw-b")
                assert other.status_code == 403
                assert other.json()["error"] == (
                    f"role 'support' needs a support grant for gateway gw-b {_hint('gw-b')}"
                )
                reboot = await _ping(sam, "gw-a", "reboot")
                assert reboot.status_code == 403
                assert "only diagnostic commands (metrics, ping)" in reboot.json()["error"]

                # Revoked: refused again, saying when; a second revocation is a conflict.
                revoked = await olga.post(f"/api/v1/support-grants/{grant['id']}/revoke")
                assert revoked.status_code == 200, revoked.text
                assert revoked.json()["status"] == "revoked"
                assert revoked.json()["revoked_by"] == "olga (operator)"
                after = await _ping(sam, "gw-a")
                assert after.status_code == 403
                error = after.json()["error"]
                assert error.startswith(
                    "role 'support' needs a support grant for gateway gw-a: "
                    "sam's last one was revoked at "
                ), error
                assert error.endswith(_hint("gw-a"))
                again = await olga.post(f"/api/v1/support-grants/{grant['id']}/revoke")
                assert again.status_code == 409
                assert "already revoked" in again.json()["error"]
                by_vic = await vic.post(f"/api/v1/support-grants/{grant['id']}/revoke")
                assert by_vic.status_code == 403

                # A grant whose time ran out counts no more: nobody had to act.
                expired = await store.create_support_grant(
                    gateway_id="gw-b",
                    username="sam",
                    scope="diagnose",
                    reason="last week's ticket",
                    created_by="olga (operator)",
                    now=now - timedelta(hours=10),
                    expires_at=now - timedelta(hours=6),
                )
                late = await _ping(sam, "gw-b")
                assert late.status_code == 403
                until = expired.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                assert late.json()["error"] == (
                    "role 'support' needs a support grant for gateway gw-b: sam's last one "
                    f"expired at {until} {_hint('gw-b')}"
                )
                ended = await olga.post(f"/api/v1/support-grants/{expired.grant_id}/revoke")
                assert ended.status_code == 409
                assert f"already expired at {until}" in ended.json()["error"]
                unknown = await olga.post("/api/v1/support-grants/no-such-grant/revoke")
                assert unknown.status_code == 404
        finally:
            await store.close()

        audit = (await admin.get("/api/v1/audit", params={"action": "support.*"})).json()
        assert [e["action"] for e in audit] == ["support.revoke", "support.grant"]
        for entry in audit:
            assert entry["actor"] == "olga (operator)"
            assert entry["target"] == grant["id"]
            assert entry["detail"] == {
                "gateway": "gw-a",
                "user": "sam",
                "scope": "diagnose",
                "hours": 4,
                "until": entry["detail"]["until"],
                "reason": REASON,
            }
        sent = (await admin.get("/api/v1/audit", params={"action": "command.send"})).json()
        assert sorted(e["detail"]["kind"] for e in sent) == ["metrics", "ping"]
        assert {e["detail"]["grant"] for e in sent} == {grant["id"]}


async def test_a_grant_that_cannot_be_given_is_refused_in_words(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support")
        await create_user(admin, "sue", "support")
        await create_user(admin, "vic", "viewer")
        assert (await admin.post("/api/v1/users/sue/disable")).status_code == 200
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            await store.create_gateway(gateway_id="gw-a", name="a", now=now)
            await store.create_gateway(gateway_id="gw-gone", name="gone", now=now)
            await store.revoke_gateway("gw-gone", now=now)
        finally:
            await store.close()
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("gw-a", {"user": "sam", "hours": 0, "reason": "x"}, 400, "hours must be more than 0"),
            ("gw-a", {"user": "sam", "hours": -1, "reason": "x"}, 400, "at most 168"),
            ("gw-a", {"user": "sam", "hours": 168.5, "reason": "x"}, 400, "at most 168"),
            ("gw-a", {"user": "sam", "hours": 1, "reason": " "}, 400, "may not be empty"),
            ("gw-a", {"user": "sam", "hours": 1, "reason": "a\nb"}, 400, "control characters"),
            ("gw-a", {"user": "sam", "hours": 1, "reason": "x" * 501}, 400, "at most 500"),
            ("gw-a", {"user": "sam", "hours": 1}, 400, "missing required field `reason`"),
            ("gw-a", {"user": "sam", "hours": 1, "reason": "x", "x": 1}, 400, "unknown field"),
            ("gw-a", {"user": "sam", "hours": 1, "reason": "x", "scope": "root"}, 400, "scope"),
            ("gw-a", {"user": "no one!", "hours": 1, "reason": "x"}, 400, "invalid username"),
            ("gw-a", {"user": "nobody", "hours": 1, "reason": "x"}, 404, "no user named"),
            ("gw-a", {"user": "vic", "hours": 1, "reason": "x"}, 409, "has the role 'viewer'"),
            ("gw-a", {"user": "admin", "hours": 1, "reason": "x"}, 409, "needs no grant"),
            ("gw-a", {"user": "sue", "hours": 1, "reason": "x"}, 409, "disabled"),
            ("gw-none", {"user": "sam", "hours": 1, "reason": "x"}, 404, "no gateway 'gw-none'"),
            ("gw-gone", {"user": "sam", "hours": 1, "reason": "x"}, 409, "is revoked"),
        ]
        for gateway_id, body, status, words in cases:
            answer = await admin.post(f"/api/v1/gateways/{gateway_id}/support-grants", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert words in answer.json()["error"], (body, answer.text)
        assert (await admin.get("/api/v1/support-grants")).json() == []
        assert (await admin.get("/api/v1/audit", params={"action": "support.*"})).json() == []
        # The username is taken as the cloud stores it, and a week is the longest.
        week = await admin.post(
            "/api/v1/gateways/gw-a/support-grants",
            json={"user": " Sam ", "hours": 168, "reason": "a long week"},
        )
        assert week.status_code == 201, week.text
        assert week.json()["user"] == "sam"


async def test_grants_are_listed_by_gateway_user_and_status_and_support_sees_its_own(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        for name in ("sam", "sue"):
            await create_user(admin, name, "support")
        await create_user(admin, "vic", "viewer")
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            for gateway_id in ("gw-a", "gw-b", "gw-c"):
                await store.create_gateway(gateway_id=gateway_id, name=gateway_id, now=now)
            await store.create_support_grant(
                gateway_id="gw-c",
                username="sam",
                scope="diagnose",
                reason="long ago",
                created_by="olga (operator)",
                now=now - timedelta(days=3),
                expires_at=now - timedelta(days=2),
            )
        finally:
            await store.close()
        made = {}
        for gateway_id, user in (("gw-a", "sam"), ("gw-a", "sue"), ("gw-b", "sam")):
            answer = await _grant(admin, gateway_id, user)
            assert answer.status_code == 201, answer.text
            made[gateway_id, user] = answer.json()["id"]
        revoked = await admin.post(f"/api/v1/support-grants/{made['gw-b', 'sam']}/revoke")
        assert revoked.status_code == 200

        async def listed(client: httpx.AsyncClient, **params: str) -> list[tuple[str, str, str]]:
            answer = await client.get("/api/v1/support-grants", params=params)
            assert answer.status_code == 200, answer.text
            return [(g["gateway_id"], g["user"], g["status"]) for g in answer.json()]

        everything = [
            ("gw-b", "sam", "revoked"),
            ("gw-a", "sue", "active"),
            ("gw-a", "sam", "active"),
            ("gw-c", "sam", "expired"),
        ]
        assert await listed(admin) == everything
        assert await listed(admin, gateway="gw-a") == everything[1:3]
        assert await listed(admin, user="sam") == [everything[0], *everything[2:]]
        assert await listed(admin, active="true") == everything[1:3]
        assert await listed(admin, active="false") == everything
        assert await listed(admin, gateway="gw-a", user="sam", active="true") == [everything[2]]
        assert await listed(admin, limit="1") == everything[:1]
        for params in ({"active": "maybe"}, {"limit": "0"}, {"limit": "many"}):
            bad = await admin.get("/api/v1/support-grants", params=params)
            assert bad.status_code == 400, params

        async with (
            cloud.api(await user_token(admin, "sam")) as sam,
            cloud.api(await user_token(admin, "vic")) as vic,
        ):
            assert await listed(sam) == [everything[0], *everything[2:]]  # their own alone
            assert await listed(sam, user="sam", active="true") == [everything[2]]
            others = await sam.get("/api/v1/support-grants", params={"user": "sue"})
            assert others.status_code == 403
            assert "only its own support grants" in others.json()["error"]
            assert await listed(vic) == everything  # a viewer reads the fleet's access too


async def test_building_data_is_read_by_support_only_under_a_grant(tmp_path: Path) -> None:
    """Devices, points and observations are the customer's data; link, health and stream
    figures are not, and support reads those without a grant."""
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support", "support passphrase")
        await create_user(admin, "vic", "viewer", "viewer passphrase")
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(gateway_id="gw-a", name="gw-a", now=datetime.now(UTC))
        finally:
            await store.close()
        customer = ("devices", "points", "observations")
        operational = ("streams", "health", "logs")
        async with (
            cloud.api(await user_token(admin, "sam")) as sam,
            cloud.api(await user_token(admin, "vic")) as vic,
        ):
            for path in customer:
                refused = await sam.get(f"/api/v1/gateways/gw-a/{path}")
                assert refused.status_code == 403, (path, refused.text)
                assert "devices, points and observations" in refused.json()["error"]
                assert _hint("gw-a") in refused.json()["error"]
                assert (await vic.get(f"/api/v1/gateways/gw-a/{path}")).status_code == 200
            for path in operational:
                answer = await sam.get(f"/api/v1/gateways/gw-a/{path}")
                assert answer.status_code == 200, (path, answer.text)
            assert (await _grant(admin, "gw-a", "sam")).status_code == 201
            for path in customer:
                answer = await sam.get(f"/api/v1/gateways/gw-a/{path}")
                assert answer.status_code == 200, (path, answer.text)


async def test_a_support_user_may_end_its_own_grant_and_no_other(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support", "support passphrase")
        await create_user(admin, "sue", "support", "support passphrase")
        await create_user(admin, "vic", "viewer", "viewer passphrase")
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(gateway_id="gw-a", name="gw-a", now=datetime.now(UTC))
        finally:
            await store.close()
        mine = (await _grant(admin, "gw-a", "sam")).json()["id"]
        theirs = (await _grant(admin, "gw-a", "sue")).json()["id"]
        async with (
            cloud.api(await user_token(admin, "sam")) as sam,
            cloud.api(await user_token(admin, "vic")) as vic,
        ):
            refused = await sam.post(f"/api/v1/support-grants/{theirs}/revoke")
            assert refused.status_code == 403
            assert "only its own support grants" in refused.json()["error"]
            assert (await vic.post(f"/api/v1/support-grants/{mine}/revoke")).status_code == 403
            ended = await sam.post(f"/api/v1/support-grants/{mine}/revoke")
            assert ended.status_code == 200, ended.text
            assert ended.json()["status"] == "revoked"
            assert (await _ping(sam, "gw-a")).status_code == 403
        audit = (await admin.get("/api/v1/audit", params={"action": "support.revoke"})).json()
        assert [(e["actor"], e["target"]) for e in audit] == [("sam (support)", mine)]
