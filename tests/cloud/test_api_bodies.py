"""Request bodies nested absurdly deep are refused in words (400), never a 500."""

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
