"""Automatic re-enrollment two thirds into the certificate's life, over the live platform."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.cloudproc import (
    create_token,
    get_gateway,
    run_command,
    running_agent,
    running_cloud,
    wait_for,
)

from tether.cloud.store import Store
from tether.gateway.identity import load_identity
from tether.pki.ca import certificate_serial_hex

LIFETIME = timedelta(seconds=6)


async def test_agent_renews_its_certificate_and_keeps_working(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud", certificate_lifetime=LIFETIME) as cloud,
        cloud.api() as api,
    ):
        code = (await create_token(api, name="building-1"))["enrollment_code"]
        async with running_agent(tmp_path / "gw", code=code) as gw:
            await gw.wait_linked()
            first = gw.agent.identity.certificate
            assert first.not_valid_after_utc - datetime.now(UTC) <= LIFETIME

            renewed = await wait_for(
                lambda: (
                    gw.agent.identity.certificate
                    if gw.agent.identity.certificate.serial_number != first.serial_number
                    else None
                ),
                within=3 * LIFETIME.total_seconds(),
                what="the agent to renew its certificate",
            )
            assert gw.agent.identity.gateway_id == gw.gateway_id
            assert renewed.not_valid_after_utc > first.not_valid_after_utc
            assert renewed.public_key() != first.public_key()  # a fresh key each time
            # Kept on disk, for the next start.
            on_disk = load_identity(gw.agent.settings.identity_dir).certificate
            assert on_disk.serial_number != first.serial_number

            # The cloud recorded the new certificate for the same gateway, and audited it.
            store = await Store.open(cloud.database)
            try:
                record = await store.get_certificate(certificate_serial_hex(renewed))
                gateway_record = await store.get_gateway(gw.gateway_id)
            finally:
                await store.close()
            assert record is not None
            assert record.gateway_id == gw.gateway_id
            assert gateway_record is not None
            assert gateway_record.cert_serial != certificate_serial_hex(first)
            audit = (await api.get("/api/v1/audit")).json()
            reenrolls = [a for a in audit if a["action"] == "gateway.reenroll"]
            assert reenrolls
            assert all(a["target"] == gw.gateway_id for a in reenrolls)
            assert reenrolls[-1]["actor"] == f"gateway:{gw.gateway_id}"

            # The link goes on working.
            assert (await run_command(api, gw.gateway_id, "ping"))["state"] == "succeeded"

            # Once the first certificate has expired, a new link still opens: with the new one.
            await wait_for(
                lambda: datetime.now(UTC) > first.not_valid_after_utc,
                within=2 * LIFETIME.total_seconds(),
                what="the first certificate to expire",
            )
            restart = await run_command(api, gw.gateway_id, "restart-service")
            assert restart["state"] == "succeeded"
            await wait_for(
                lambda: gw.agent.status.links_opened >= 2 and gw.agent.linked.is_set(),
                what="the agent to link again",
            )
            assert (await run_command(api, gw.gateway_id, "ping"))["state"] == "succeeded"
            gateway = await get_gateway(api, gw.gateway_id)
            assert gateway["linked"] is True
            assert datetime.fromisoformat(gateway["cert_not_after"]) > first.not_valid_after_utc
