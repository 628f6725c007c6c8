"""A gateway name names one gateway: an enrollment token may not take a name in use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.cloudproc import running_cloud

from tether.cloud.store import Store


async def test_a_name_in_use_is_refused_until_its_holder_is_revoked(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            await store.create_gateway(gateway_id="gw-b9", name="building 9", now=now)
            await store.create_enrollment_token(
                gateway_name="expired one",
                ttl=timedelta(minutes=1),
                created_by="test",
                now=now - timedelta(hours=1),
            )
        finally:
            await store.close()

        first = await admin.post("/api/v1/enrollment-tokens", json={"name": "building 7"})
        assert first.status_code == 201, first.text
        token_id = first.json()["token_id"]
        again = await admin.post("/api/v1/enrollment-tokens", json={"name": " building 7 "})
        assert again.status_code == 409
        assert f"enrollment token {token_id}" in again.json()["error"]
        taken = await admin.post("/api/v1/enrollment-tokens", json={"name": "building 9"})
        assert taken.status_code == 409
        assert "gateway gw-b9" in taken.json()["error"]

        # Names whose holders are gone are free again.
        expired = await admin.post("/api/v1/enrollment-tokens", json={"name": "expired one"})
        assert expired.status_code == 201, expired.text
        revoked = await admin.post(f"/api/v1/enrollment-tokens/{token_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        reused = await admin.post("/api/v1/enrollment-tokens", json={"name": "building 7"})
        assert reused.status_code == 201, reused.text
        assert (await admin.post("/api/v1/gateways/gw-b9/revoke")).status_code == 200
        replaced = await admin.post("/api/v1/enrollment-tokens", json={"name": "building 9"})
        assert replaced.status_code == 201, replaced.text
        # A token without a name gets a generated one, never refused.
        for _ in range(2):
            unnamed = await admin.post("/api/v1/enrollment-tokens", json={})
            assert unnamed.status_code == 201, unnamed.text
