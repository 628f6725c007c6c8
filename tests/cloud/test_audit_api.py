"""The audit log through the operator API, filtered on the server: what one person did, who
revoked a gateway, every action of a family, a time window, page after page, and the export
taking the same filters; a filter that cannot mean anything is answered 400 in words.

A real cloud over TLS; the entries are made through the API as people make them, plus a few
stored with chosen times (the store's own ``audit``), for the time window.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tests.support.cloudproc import Cloud, running_cloud
from tests.support.console import create_user, user_token

from tether.cloud.store import Store

OLGA = "olga (operator)"
ADMIN = "bootstrap token (admin)"  # the first start's API token
JAN = datetime(2030, 1, 1, tzinfo=UTC)


async def _listed(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await api.get("/api/v1/audit", params={"limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()
    return entries


async def _seed(cloud: Cloud, api: httpx.AsyncClient) -> None:
    """Olga makes and withdraws an enrollment token; the admin revokes gw-1 and makes Olga an
    API token; three entries of January 2030 (one a day) are stored as they were."""
    await create_user(api, "olga", "operator")
    olga = cloud.api(await user_token(api, "olga"))  # audited: api-token.create, by the admin
    async with olga:
        made = await olga.post("/api/v1/enrollment-tokens", json={"name": "boiler-room"})
        assert made.status_code == 201, made.text
        token_id = made.json()["token_id"]
        revoked = await olga.post(f"/api/v1/enrollment-tokens/{token_id}/revoke")
        assert revoked.status_code == 200, revoked.text
    store = await Store.open(cloud.database)
    try:
        await store.create_gateway(gateway_id="gw-1", name="plant", now=datetime.now(UTC))
        for day in range(3):
            await store.audit(
                actor="maintenance (admin)",
                action="config.set",
                target="gw-2",
                detail={"day": day},
                source=None,
                now=JAN + timedelta(days=day, hours=9),
            )
    finally:
        await store.close()
    assert (await api.post("/api/v1/gateways/gw-1/revoke")).status_code == 200


async def test_the_log_is_filtered_by_actor_action_target_and_time(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        await _seed(cloud, api)
        everything = await _listed(api)

        # what did Olga do
        hers = await _listed(api, actor=OLGA)
        assert [e["action"] for e in hers] == ["token.revoke", "token.create"]
        assert hers == [e for e in everything if e["actor"] == OLGA]
        assert await _listed(api, actor="olga") == []  # the actor as the log names it, exactly

        # who revoked gw-1
        [revoke] = await _listed(api, action="gateway.revoke", target="gw-1")
        assert revoke["actor"] == ADMIN

        # every token.* action: not api-token.create, which the admin's request wrote
        family = await _listed(api, action="token.*")
        assert {e["action"] for e in family} == {"token.create", "token.revoke"}
        assert "api-token.create" in {e["action"] for e in everything}
        assert [e["action"] for e in await _listed(api, action="api-token.*")] == [
            "api-token.create"
        ]

        # a window given in another offset: 2 January 00:00 to 3 January 11:00, Paris time
        window = await _listed(
            api, since="2030-01-02T00:00:00+01:00", until="2030-01-03T11:00:00+01:00"
        )
        assert [e["detail"] for e in window] == [{"day": 2}, {"day": 1}]
        since = await _listed(api, target="gw-2", since="2030-01-02T09:00:00Z")  # inclusive
        assert [e["detail"]["day"] for e in since] == [2, 1]
        until = await _listed(api, target="gw-2", until="2030-01-02T09:00:00Z")  # exclusive
        assert [e["detail"]["day"] for e in until] == [0]


async def test_pages_of_a_filtered_log_and_the_filtered_export(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        await _seed(cloud, api)
        want = await _listed(api, action="config.set")
        assert len(want) == 3
        pages: list[list[dict[str, Any]]] = []
        params: dict[str, Any] = {"action": "config.set", "limit": 2}
        for _ in range(5):  # bounded: 3 entries, 2 a page
            answer = await api.get("/api/v1/audit", params=params)
            assert answer.status_code == 200, answer.text
            if not answer.json():
                break
            pages.append(answer.json())
            params["before"] = answer.json()[-1]["id"]
        assert [len(p) for p in pages] == [2, 1]
        assert [e for p in pages for e in p] == want

        jsonl = await api.get("/api/v1/audit/export", params={"actor": OLGA})
        assert jsonl.status_code == 200, jsonl.text
        lines = [json.loads(line) for line in jsonl.text.splitlines()]
        assert [e["action"] for e in lines] == ["token.create", "token.revoke"]  # oldest first
        exported = await api.get(
            "/api/v1/audit/export",
            params={"format": "csv", "action": "config.*", "until": "2030-01-02T09:00:00+00:00"},
        )
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["action"], r["detail"]) for r in rows] == [("config.set", '{"day":0}')]


async def test_filters_that_cannot_mean_anything_are_refused_in_words(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        cases = [
            ({"since": "2030-01-01T09:00:00"}, "since must carry a UTC offset"),
            ({"until": "2030-01-01"}, "until must carry a UTC offset"),
            ({"since": "last tuesday"}, "since must be an ISO 8601 time with a UTC offset"),
            (
                {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
                "until (2030-01-01T00:00:00+00:00) must be later than since",
            ),
            ({"action": "token*"}, "action must be an action (token.create) or a family"),
            ({"action": "*"}, "action must be an action"),
            ({"actor": "x" * 300}, "actor must be at most 255 characters"),
        ]
        for params, words in cases:
            for path in ("/api/v1/audit", "/api/v1/audit/export"):
                answer = await api.get(path, params=params)
                assert answer.status_code == 400, (path, params)
                assert answer.headers["content-type"].startswith("application/json")
                assert words in answer.json()["error"], (path, answer.text)
        for before in ("0", "-3", "soon"):
            answer = await api.get("/api/v1/audit", params={"before": before})
            assert answer.status_code == 400
            assert "before must be" in answer.json()["error"]


async def test_reading_stays_for_admins_and_is_not_itself_audited(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        await create_user(api, "olga", "operator")
        olga = cloud.api(await user_token(api, "olga"))
        async with olga:
            for path in ("/api/v1/audit", "/api/v1/audit/export"):
                refused = await olga.get(path, params={"actor": OLGA})
                assert refused.status_code == 403
                assert refused.json()["error"] == "role 'operator' may not read the audit log"
        before = await _listed(api)
        await _listed(api, action="token.*")
        assert (await api.get("/api/v1/audit/export")).status_code == 200
        assert await _listed(api) == before


async def test_the_openapi_document_names_the_filters(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api(auth=False) as api:
        document = (await api.get("/api/v1/openapi.json")).json()
    extras = {"/api/v1/audit": {"before", "limit"}, "/api/v1/audit/export": {"format"}}
    for path, extra in extras.items():
        params = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        assert set(params) == {"actor", "action", "target", "since", "until", *extra}
        assert all(p["in"] == "query" and not p["required"] for p in params.values())
        assert "token.*" in params["action"]["description"]
        assert "UTC offset" in params["since"]["description"]
