"""Console pages rendered from what gateways report: health, identity, logs and a preflight.

A real cloud over TLS; the reports are stored the way the cloud stores what agents send, then
the pages and their live regions are read through a logged-in session.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from tests.support.cloudproc import running_cloud
from tests.support.console import console_client, console_login, create_user

from tether.cloud.store import Store
from tether.cloud.store.health import HealthStore
from tether.netcheck.report import Check, CheckReport, CheckResult, Status


def _report(cpu: float, spool: int, *, identity: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "system": {
            "cpu_percent": cpu,
            "memory": {"percent": 41.5},
            "disk": {"percent": 63.0},
        },
        "spool": {"observations": spool, "dropped": 0},
        "uploader": {"observations_acked": 1200},
        "time": {"ntp_synchronized": True},
    }
    if identity:
        data["network_identity"] = {
            "hostname": "gw-boiler",
            "interfaces": {
                "eth0": {"mac": "02:00:5e:10:00:01", "ipv4": ["192.0.2.44"], "up": True},
                "lo": {"mac": "00:00:00:00:00:00", "ipv4": ["127.0.0.1"], "up": True},
            },
        }
    return data


def _preflight() -> dict[str, Any]:
    now = datetime.now(UTC)
    report = CheckReport(
        manifest_product="tether gateway",
        manifest_version="2026112101",
        manifest_publisher="tether",
        started_at=now,
        finished_at=now,
        host="gw-boiler",
        results=(
            CheckResult(
                check=Check.DNS,
                target="tether.example.com",
                status=Status.PASS,
                finding="resolves",
            ),
            CheckResult(
                check=Check.TLS,
                target="tether.example.com:443 (IPv4)",
                status=Status.FAIL,
                finding="TLS is intercepted by a proxy presenting Example Inspection CA",
                fix="exempt tether.example.com from TLS inspection",
            ),
        ),
    )
    document: dict[str, Any] = json.loads(msgspec.json.encode(report))
    document["status"] = report.status.value
    return document


async def test_the_gateway_page_shows_health_identity_logs_and_preflight(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as admin:
        store = await Store.open(cloud.database)
        try:
            await store.create_gateway(
                gateway_id="gw-b1", name="boiler room", now=datetime.now(UTC)
            )
            health = HealthStore(store.engine)
            now = time.time()
            await health.add_report("gw-b1", now - 120, _report(35.0, 10, identity=True))
            await health.add_report("gw-b1", now - 60, _report(97.0, 250, identity=False))
            await health.add_logs(
                "gw-b1",
                [
                    {  # every key, as the cloud stores what an agent sent
                        "ts": now - 30,
                        "level": "warning",
                        "source": "agent",
                        "message": "link slow",
                        "customer_data": False,
                        "fields": None,
                    },
                    {
                        "ts": now - 20,
                        "level": "info",
                        "source": "connector:modbus",
                        "message": "meter 7 read 1234 kWh",
                        "customer_data": True,
                        "fields": None,
                    },
                ],
            )
            await health.set_preflight("gw-b1", now - 10, _preflight())
        finally:
            await store.close()
        await create_user(admin, "sam", "support", "support passphrase")
        async with console_client(cloud) as client:
            admin_session = await console_login(
                client, "admin", (cloud.data_dir / "admin.password").read_text().strip()
            )
            page = (await client.get("/console/gateways/gw-b1", headers=admin_session.cookies)).text
            # identity from the report that carried it, loopback left out
            assert "02:00:5e:10:00:01" in page
            assert "192.0.2.44" in page
            assert "00:00:00:00:00:00" not in page
            # the latest figures, an alert, and charts over both reports
            assert "CPU 97 %" in page
            assert 'class="gauge-bar high"' in page
            assert page.count('<svg class="chart"') == 2
            assert "250 observations waiting" in page
            # logs, newest first, customer data shown to an admin
            assert page.index("meter 7 read") < page.index("link slow")
            # the preflight: what failed and the fix
            assert "intercepted by a proxy" in page
            assert "Fix: exempt tether.example.com from TLS inspection" in page
            assert "1 other check passed" in page

            live = await client.get(
                "/console/gateways/gw-b1/live",
                params={"regions": "gw-logs,gw-preflight"},
                headers={**admin_session.cookies, "X-Tether-Live": "1"},
            )
            regions = live.json()["regions"]
            assert sorted(regions) == ["gw-logs", "gw-preflight"]
            assert "link slow" in regions["gw-logs"]

            fleet = (await client.get("/console/", headers=admin_session.cookies)).text
            assert "CPU 97 %" in fleet
            assert ">250<" in fleet  # spool depth

            support = await console_login(client, "sam", "support passphrase")
            seen = (await client.get("/console/gateways/gw-b1", headers=support.cookies)).text
            assert "link slow" in seen
            assert "meter 7 read" not in seen  # may carry customer data: not for support
            assert "hidden from support" in seen
