"""The support role: reads the fleet, and runs diagnostics (ping, metrics) on a gateway only
under a support grant the customer's side gave for it; changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.cloudproc import running_cloud
from tests.support.console import create_user, user_token

from tether.cloud.store import Store
from tether.protocol.commands import COMMAND_KINDS, DIAGNOSTIC_COMMAND_KINDS


async def test_support_sends_and_cancels_diagnostics_under_a_grant_and_nothing_else(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        await create_user(admin, "sam", "support", "support passphrase")
        token = await user_token(admin, "sam")
        store = await Store.open(cloud.database)
        try:
            now = datetime.now(UTC)
            await store.create_gateway(gateway_id="gw-site", name="site", now=now)
            reboot = await store.create_command(
                gateway_id="gw-site",
                kind="reboot",
                args={},
                expires_at=now + timedelta(hours=1),
                created_by="admin (admin)",
                now=now,
            )
        finally:
            await store.close()
        async with cloud.api(token) as support:
            # No grant yet: refused, saying what is missing and who can give it.
            refused = await support.post("/api/v1/gateways/gw-site/commands", json={"kind": "ping"})
            assert refused.status_code == 403
            assert refused.json()["error"] == (
                "role 'support' needs a support grant for gateway gw-site (an operator gives "
                "one: tether support grant gw-site --user sam --hours 4 --reason TEXT)"
            )
            granted = await admin.post(
                "/api/v1/gateways/gw-site/support-grants",
                json={"user": "sam", "hours": 4, "reason": "ticket 4711"},
            )
            assert granted.status_code == 201, granted.text
            grant_id = granted.json()["id"]

            sent = {}
            for kind in sorted(DIAGNOSTIC_COMMAND_KINDS):
                answer = await support.post(
                    "/api/v1/gateways/gw-site/commands", json={"kind": kind}
                )
                assert answer.status_code == 201, answer.text
                assert answer.json()["created_by"] == "sam (support)"
                sent[kind] = answer.json()["id"]
            for kind in sorted(COMMAND_KINDS - DIAGNOSTIC_COMMAND_KINDS):
                answer = await support.post(
                    "/api/v1/gateways/gw-site/commands", json={"kind": kind}
                )
                assert answer.status_code == 403, (kind, answer.text)
                assert "only diagnostic commands (metrics, ping)" in answer.json()["error"]

            cancelled = await support.post(f"/api/v1/commands/{sent['ping']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "cancelled"
            refused = await support.post(f"/api/v1/commands/{reboot.command_id}/cancel")
            assert refused.status_code == 403
            unknown = await support.post("/api/v1/commands/no-such-command/cancel")
            assert unknown.status_code == 404
            config = await support.put(
                "/api/v1/gateways/gw-site/config/agent", json={"health_interval": 60}
            )
            assert config.status_code == 403

        commands = (await admin.get("/api/v1/commands", params={"gateway": "gw-site"})).json()
        states = {c["kind"]: c["state"] for c in commands}
        assert states == {"reboot": "queued", "ping": "cancelled", "metrics": "queued"}
        audit = (await admin.get("/api/v1/audit", params={"actor": "sam (support)"})).json()
        assert sorted(e["action"] for e in audit) == [
            "command.cancel",
            "command.send",
            "command.send",
        ]
        assert {e["detail"]["grant"] for e in audit} == {grant_id}  # each names its grant
