"""Request bodies nested absurdly deep, and NUL characters (which the store cannot keep), are
refused in words (400) before they reach the store, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.support.cloudproc import running_cloud

from tether.cloud.api import BODY_DEPTH_MAX
from tether.cloud.store import Store


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


async def test_deep_nesting_is_refused_and_reasonable_nesting_taken(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(gateway_id="gw-deep", name="deep", now=datetime.now(UTC))
        finally:
            await store.close()
        headers = {"Content-Type": "application/json"}
        for levels in (5000, BODY_DEPTH_MAX + 1):
            body = '{"kind": "ping", "args": {"a": ' + _nested(levels) + "}}"
            answer = await admin.post(
                "/api/v1/gateways/gw-deep/commands", content=body, headers=headers
            )
            assert answer.status_code == 400, (levels, answer.text)
            assert f"nested more than {BODY_DEPTH_MAX} levels" in answer.json()["error"]
            config = await admin.put(
                "/api/v1/gateways/gw-deep/config/agent",
                content='{"x": ' + _nested(levels) + "}",
                headers=headers,
            )
            assert config.status_code == 400, (levels, config.text)
        fine = '{"kind": "ping", "args": {"a": ' + _nested(BODY_DEPTH_MAX - 3) + "}}"
        taken = await admin.post("/api/v1/gateways/gw-deep/commands", content=fine, headers=headers)
        assert taken.status_code == 201, taken.text


async def test_nul_characters_are_refused_wherever_an_operator_sends_them(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(gateway_id="gw-nul", name="nul", now=datetime.now(UTC))
        finally:
            await store.close()
        attempts = [
            admin.post(
                "/api/v1/gateways/gw-nul/commands", json={"kind": "ping", "args": {"a": "x\x00"}}
            ),
            admin.post(
                "/api/v1/gateways/gw-nul/commands", json={"kind": "ping", "args": {"k\x00": 1}}
            ),
            admin.put("/api/v1/gateways/gw-nul/config/agent", json={"health_interval\x00": 60}),
            admin.post("/api/v1/enrollment-tokens", json={"name": "site\x00"}),
            admin.get("/api/v1/audit", params={"actor": "olga\x00"}),
            admin.get("/api/v1/gateways/gw%00nul"),
            admin.get("/api/v1/commands", params={"gateway": "gw\x00"}),
        ]
        for attempt in attempts:
            answer = await attempt
            assert answer.status_code == 400, (answer.request.url, answer.text)
            assert "NUL character" in answer.json()["error"], answer.text


async def test_a_nul_in_a_console_path_is_refused(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        for path in ("/console/gateways/gw%00x", "/console/audit?actor=a%00b"):
            answer = await admin.get(path)
            assert answer.status_code == 400, path
            assert "NUL" in answer.text
