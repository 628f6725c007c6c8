"""Health, logs, /metrics and the agent's own preflight, end to end over real TLS on loopback.

A linked agent reports its health at the interval the cloud sets, with its network identity
at start and again only when it changes; the fleet's Prometheus text is served to a viewer's
token; the agent's logs reach the cloud redacted, at the level and from the sources set
remotely, once each even when an ack is lost; support does not see records that may carry
customer data. Behind an nginx that strips WebSocket upgrades the agent settles on long-poll,
runs its preflight and reports it: the API and ``tether gateways show`` name the problem.
"""

from __future__ import annotations

import asyncio
import functools
import grp
import itertools
import json
import logging
import os
import pwd
import re
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.cloudproc import (
    Cloud,
    RunningAgent,
    StartAgent,
    create_token,
    running_agent,
    running_cloud,
    tether_script,
    wait_for,
    wait_gateway,
)
from tests.support.testbed import nginx
from tests.support.testbed.certs import ServerCert
from tests.support.testbed.dnsserver import DNSServer
from tests.support.testbed.proc import is_listening, start_process

import tether.gateway.agent
from tether.gateway.health import network_identity
from tether.gateway.logship import LogShipper
from tether.netcheck import CheckOptions
from tether.netcheck.dns import parse_resolver
from tether.pki.ca import CertificateAuthority
from tether.protocol.messages import LogBatchAck

CLI_TIMEOUT = 60.0
LEASE = """\
lease {{
  interface "eth0";
  fixed-address 192.168.50.23;
  option domain-name-servers {dns};
  option ntp-servers 192.168.50.4;
}}
"""


async def _tether(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` in a thread, so the cloud in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


async def _user_token(api: httpx.AsyncClient, username: str, role: str) -> str:
    """A person with *role* and an API token of theirs, made through the operator API."""
    created = await api.post(
        "/api/v1/users", json={"username": username, "role": role, "password": "a long passphrase"}
    )
    assert created.status_code == 201, created.text
    token = await api.post(f"/api/v1/users/{username}/tokens", json={"label": "scraper"})
    assert token.status_code == 201, token.text
    secret: str = token.json()["secret"]
    return secret


async def _set_config(api: httpx.AsyncClient, gateway_id: str, section: str, data: Any) -> int:
    """Set a section and wait until the gateway applied that version; returns it."""
    put = await api.put(f"/api/v1/gateways/{gateway_id}/config/{section}", json=data)
    assert put.status_code == 200, put.text
    version: int = put.json()["version"]
    await _wait_applied(api, gateway_id, section, version)
    return version


async def _wait_applied(
    api: httpx.AsyncClient, gateway_id: str, section: str, version: int
) -> dict[str, Any]:
    async def applied() -> dict[str, Any] | None:
        for c in (await api.get(f"/api/v1/gateways/{gateway_id}/config")).json():
            if c["section"] == section and c["applied_version"] == version:
                return c  # type: ignore[no-any-return]
        return None

    return await wait_for(applied, what=f"{section} v{version} applied")


def _stored_reports(cloud: Cloud, gateway_id: str) -> list[tuple[float, dict[str, Any]]]:
    """Every health report the cloud's store holds for the gateway, oldest first."""
    path = cloud.database.split(":///", 1)[1]
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT ts, data FROM health_reports WHERE gateway_id = ? ORDER BY ts", (gateway_id,)
        ).fetchall()
    return [(ts, json.loads(data)) for ts, data in rows]


# --- health ----------------------------------------------------------------------------------


async def test_health_reports_at_the_interval_set_remotely_with_the_identity_when_it_changes(
    tmp_path: Path,
    cloud: Cloud,
    api: httpx.AsyncClient,
    start_agent: StartAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leases = tmp_path / "leases"
    lease_file = leases / "var/lib/dhcp/dhclient.leases"
    lease_file.parent.mkdir(parents=True)
    lease_file.write_text(LEASE.format(dns="192.168.50.2"))
    # The agent's own identity function, reading this test's lease files instead of /var/lib.
    monkeypatch.setattr(
        tether.gateway.agent,
        "network_identity",
        functools.partial(network_identity, lease_root=leases),
    )
    gw = await start_agent("health-1")
    gid = gw.gateway_id
    first = await wait_for(lambda: _stored_reports(cloud, gid), what="the first health report")
    assert first[0][1]["network_identity"]["dhcp"]["dns_servers"] == ["192.168.50.2"]

    # A connector, so the report has its figures.
    sim = {"seed": 1, "air_handlers": 1, "vavs_per_ahu": 1, "meters": 0, "zone_sensors": 1}
    await _set_config(
        api,
        gid,
        "connectors",
        {
            "instances": {
                "sim": {
                    "connector": "simulated-building",
                    "config": {**sim, "poll_interval": 1.0},
                    "enabled": True,
                }
            }
        },
    )
    # Five seconds between reports instead of the default 60: applied and then honoured.
    before = len(_stored_reports(cloud, gid))
    await _set_config(api, gid, "agent", {"health_interval": 5})
    assert gw.agent.health_interval == 5.0
    # A report at once on the change, then one every interval: three within 25 s (at the
    # default interval there would be one).
    reports = await wait_for(
        lambda: (r := _stored_reports(cloud, gid)) and len(r) >= before + 3 and r,
        within=25.0,
        what="two more health reports at the new interval",
    )
    for (t0, _), (t1, _) in itertools.pairwise(reports[before:]):
        assert t1 - t0 >= 4.5  # never sooner than the interval: nothing else woke it
    # Sent at start, then not again while it does not change.
    assert all("network_identity" not in data for _, data in reports[1:])

    ts, report = reports[-1]
    system = report["system"]
    assert system["cpu_percent"] >= 0.0
    assert 0.0 < system["memory"]["percent"] <= 100.0
    assert 0.0 <= system["disk"]["percent"] <= 100.0
    assert set(report["network"]) == {"rx_bps", "tx_bps"}
    assert report["link"]["tier"] == "ws"
    assert report["link"]["links_opened"] == 1
    assert report["spool"]["dropped"] == 0
    assert report["spool"]["observations"] >= 0
    assert report["connectors"]["sim"]["state"] == "running"
    assert report["connectors"]["sim"]["polls"] >= 1
    # Time sync: whether the clock is known to be right (the key depends on the time source).
    assert any(
        isinstance(report["time"].get(key), bool) for key in ("ntp_synchronized", "synchronized")
    ), report["time"]
    assert report["logs"]["dropped"] == 0

    # The API shows the same: the latest report, and the series of figures.
    health = (await api.get(f"/api/v1/gateways/{gid}/health")).json()
    assert health["latest"]["ts"] >= ts
    assert len(health["series"]) >= len(reports)
    assert health["series"][-1]["cpu_percent"] is not None

    # DHCP now advertises another resolver: the next report carries the new identity.
    lease_file.write_text(LEASE.format(dns="192.168.50.9"))
    count = len(_stored_reports(cloud, gid))
    changed = await wait_for(
        lambda: [d for _, d in _stored_reports(cloud, gid)[count:] if "network_identity" in d],
        within=15.0,
        what="a report with the changed identity",
    )
    assert changed[0]["network_identity"]["dhcp"]["dns_servers"] == ["192.168.50.9"]


# --- /metrics --------------------------------------------------------------------------------


async def test_metrics_are_prometheus_text_for_a_token_with_read_access(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("metrics-1")
    await wait_for(lambda: _stored_reports(cloud, gw.gateway_id), what="a health report")
    async with cloud.api(auth=False) as anonymous:
        refused = await anonymous.get("/metrics")
        assert refused.status_code == 401
    async with cloud.api("tt_not-a-real-token") as wrong:
        assert (await wrong.get("/metrics")).status_code == 401
    viewer_token = await _user_token(api, "scraper", "viewer")
    async with cloud.api(viewer_token) as viewer:
        assert (await viewer.get(f"/api/v1/gateways/{gw.gateway_id}")).status_code == 200
        assert (await viewer.get("/api/v1/audit")).status_code == 403
        response = await viewer.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(response.text)
    }
    assert families["tether_gateways"][(("state", "linked"),)] == 1.0
    assert families["tether_gateways"][(("state", "offline"),)] == 0.0
    assert families["tether_gateways_tier"] == {(("tier", "ws"),): 1.0}
    assert families["tether_process_links"][()] == 1.0
    assert families["tether_health_reports"][()] >= 1.0
    assert families["tether_sqlite_wal_pages"][()] >= 0.0  # the cloud's store is a SQLite file
    assert families["tether_sqlite_checkpoint_failures"][()] == 0.0
    mine = (("gateway", gw.gateway_id),)
    assert 0.0 < families["tether_gateway_memory_percent"][mine] <= 100.0
    assert mine in families["tether_gateway_cpu_percent"]
    assert families["tether_gateway_spool_dropped"][mine] == 0.0
    # The operator API's requests, by route template (never the path as written) and status.
    requests = families["tether_api_requests"]
    assert (
        requests[(("method", "GET"), ("route", "/api/v1/gateways/{gateway_id}"), ("status", "200"))]
        >= 1
    )
    assert requests[(("method", "GET"), ("route", "/api/v1/audit"), ("status", "403"))] == 1
    assert not any(gw.gateway_id in dict(labels)["route"] for labels in requests)
    timed = families["tether_api_request_seconds"]
    one = (("method", "GET"), ("route", "/api/v1/audit"))
    assert timed[(("le", "+Inf"), *one)] == 1
    assert 0.0 < timed[one] < 60.0  # the _sum sample: the time taken, in seconds
    # The serving process's own figures, under Prometheus's usual names.
    assert families["process_resident_memory_bytes"][()] > 10 * 2**20
    assert families["process_open_fds"][()] >= 3
    assert families["process_cpu_seconds"][()] > 0.0
    assert any(dict(labels)["implementation"] == "CPython" for labels in families["python_info"])


# --- logs ------------------------------------------------------------------------------------


async def _logs(client: httpx.AsyncClient, gateway_id: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/gateways/{gateway_id}/logs", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def _wait_log(
    client: httpx.AsyncClient, gateway_id: str, marker: str, **params: Any
) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        rows = [r for r in await _logs(client, gateway_id, **params) if marker in r["message"]]
        return rows[0] if rows else None

    return await wait_for(found, what=f"the log record {marker!r} in the cloud")


async def test_logs_reach_the_cloud_redacted_at_the_level_and_sources_set_remotely(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("logs-1")
    gid = gw.gateway_id
    marker = uuid.uuid4().hex
    log = logging.getLogger("tether.gateway.test")
    log.debug("%s before: debug is below the default level", marker)
    log.warning("%s proxy password=hunter22 refused", marker)
    warning = await _wait_log(api, gid, f"{marker} proxy")
    assert warning["message"] == f"{marker} proxy password=[redacted] refused"
    assert warning["level"] == "warning"
    assert warning["source"] == "agent:tether.gateway.test"
    assert warning["customer_data"] is False

    # `tether config set GW logs FILE`: debug records from the agent are shipped from now on.
    document = tmp_path / "logs.json"
    document.write_text(json.dumps({"level": "debug", "sources": ["agent"]}))
    result = await _tether(cloud.cli_env(), "config", "set", gid, "logs", str(document))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"logs v1 stored; pushed to {gid}" in " ".join(result.stdout.split())
    await _wait_applied(api, gid, "logs", 1)
    log.debug("%s after: now shipped", marker)
    await _wait_log(api, gid, f"{marker} after")
    messages = [r["message"] for r in await _logs(api, gid, limit=1000)]
    assert not any(m.startswith(f"{marker} before") for m in messages)
    # The level filter of the API: warnings and above.
    warnings = await _logs(api, gid, level="warning", limit=1000)
    assert {r["level"] for r in warnings} <= {"warning", "error", "critical"}
    assert any(r["message"].startswith(f"{marker} proxy") for r in warnings)

    # A wrong logs section is refused by the cloud before it is stored.
    put = await api.put(f"/api/v1/gateways/{gid}/config/logs", json={"level": "loud"})
    assert put.status_code == 400
    assert "log level must be one of" in put.json()["error"]

    # Sources without "agent": the agent's own records are no longer even buffered.
    await _set_config(api, gid, "logs", {"level": "info", "sources": []})
    pending = gw.agent.logs.pending
    log.warning("%s silenced", marker)
    assert gw.agent.logs.pending == pending

    # `tether logs GW` prints the records.
    shown = await _tether(cloud.cli_env(), "logs", gid, "--limit", "1000")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"{marker} proxy password=[redacted] refused" in shown.stdout
    assert f"{marker} after: now shipped" in shown.stdout
    assert "hunter22" not in shown.stdout


async def _config_error(api: httpx.AsyncClient, gid: str, section: str, version: int) -> str | None:
    for c in (await api.get(f"/api/v1/gateways/{gid}/config")).json():
        if c["section"] == section and c["applied_version"] == version and c["applied_error"]:
            return str(c["applied_error"])
    return None


async def test_support_does_not_see_records_that_may_carry_customer_data(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("logs-2")
    gid = gw.gateway_id
    marker = uuid.uuid4().hex
    logging.getLogger("tether.gateway.connectors.test").warning("%s zone 4 reads 21.5", marker)
    logging.getLogger("tether.gateway.test").warning("%s link is fine", marker)
    field = await _wait_log(api, gid, f"{marker} zone")
    assert field["customer_data"] is True
    await _wait_log(api, gid, f"{marker} link")
    support_token = await _user_token(api, "helpdesk", "support")
    async with cloud.api(support_token) as support:
        seen = [r["message"] for r in await _logs(support, gid, limit=1000)]
    assert f"{marker} link is fine" in seen
    assert not any(marker in m and "zone" in m for m in seen)
    viewer_token = await _user_token(api, "vera", "viewer")
    async with cloud.api(viewer_token) as viewer:
        assert f"{marker} zone 4 reads 21.5" in [
            r["message"] for r in await _logs(viewer, gid, limit=1000)
        ]


async def test_tether_logs_follow_prints_records_as_they_arrive(
    tmp_path: Path, cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("logs-follow")
    marker = uuid.uuid4().hex
    log = logging.getLogger("tether.gateway.test")
    log.warning("%s first", marker)
    await _wait_log(api, gw.gateway_id, f"{marker} first")
    out = tmp_path / "follow.out"
    with out.open("wb") as sink:
        follower = await asyncio.create_subprocess_exec(
            *(str(tether_script()), "logs", gw.gateway_id, "--follow", "--interval", "0.2"),
            env=cloud.cli_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        await wait_for(lambda: f"{marker} first" in out.read_text(), what="the first record")
        log.error("%s second", marker)
        await wait_for(lambda: f"{marker} second" in out.read_text(), what="the followed record")
        assert follower.returncode is None  # still following
    finally:
        follower.terminate()
        await asyncio.wait_for(follower.wait(), 10)
    lines = [line for line in out.read_text().splitlines() if marker in line]
    assert len(lines) == 2  # each record once, in order
    assert lines[0].endswith(f"{marker} first")
    assert "error" in lines[1]


async def test_a_log_batch_whose_ack_was_lost_is_sent_again_and_stored_once(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("logs-3")
    agent = gw.agent
    shipper: LogShipper = agent.logs
    await wait_for(lambda: shipper.pending == 0, what="the agent's first records shipped")
    original = shipper.on_ack
    lost: list[int] = []

    def lose_the_first_ack(ack: LogBatchAck) -> None:
        if not lost:
            lost.append(ack.seq)  # the cloud stored the batch; its ack is lost with the link
            agent.request_restart("the link breaks before the ack arrives")
            return
        original(ack)

    marker = uuid.uuid4().hex
    shipper.on_ack = lose_the_first_ack  # type: ignore[method-assign]
    logging.getLogger("tether.gateway.test").warning("%s sent before the cut", marker)
    await wait_for(lambda: lost, what="a batch acknowledged (and the ack lost)")
    await wait_for(lambda: agent.status.links_opened >= 2, what="the agent linked again")
    # Records leave the buffer only on an ack: empty means the resent batch was acknowledged.
    await wait_for(lambda: shipper.pending == 0, what="the batch resent and acknowledged")
    rows = [r for r in await _logs(api, gw.gateway_id, limit=1000) if marker in r["message"]]
    assert [r["message"] for r in rows] == [f"{marker} sent before the cut"]


async def test_the_records_a_full_buffer_dropped_are_counted_in_the_cloud(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("logs-4")
    shipper = gw.agent.logs
    await wait_for(lambda: shipper.pending == 0, what="the agent's first records shipped")
    shipper.capacity = 5
    marker = uuid.uuid4().hex
    log = logging.getLogger("tether.gateway.test")
    for i in range(20):
        log.warning("%s record %d", marker, i)
    assert shipper.dropped_total == 15
    dropped = shipper.dropped_total
    await wait_for(lambda: shipper.dropped == 0, what="the drops reported and acknowledged")
    rows = [r for r in await _logs(api, gw.gateway_id, limit=1000) if marker in r["message"]]
    assert [r["message"] for r in rows] == [f"{marker} record {i}" for i in range(15, 20)]
    async with cloud.api() as admin:
        text = (await admin.get("/metrics")).text
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "tether_gateway_log_records_dropped"
    ]
    assert family.samples[0].value == dropped


# --- preflight -------------------------------------------------------------------------------

#: nginx listens on the cloud's port at this address: the manifest's "localhost" resolves to it.
NGINX_HOST = "127.0.0.2"
HEADER = "X-Tether-Client-Cert"


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer(records={"localhost": [NGINX_HOST]}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def lb_cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud that trusts the client-certificate header from 127.0.0.1 (nginx's source) and
    whose certificate also names localhost (the name its manifest gives)."""
    async with running_cloud(
        tmp_path / "cloud",
        trusted_proxies=("127.0.0.1",),
        extra_hostnames=("127.0.0.1", "::1", "localhost"),
    ) as running:
        yield running


def _start_nginx(cloud: Cloud) -> nginx.Nginx:
    """nginx on NGINX_HOST:<the cloud's port> without upgrade forwarding, asking for a client
    certificate but not requiring one (so the preflight's anonymous probes pass TLS)."""
    ca = CertificateAuthority.load_or_create(cloud.settings.pki_dir)
    key_pem, chain_pem = ca.issue_server(
        ["localhost", NGINX_HOST], lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    cert = ServerCert(cert_pem=chain_pem, key_pem=key_pem, chain_pem=chain_pem)
    directory = Path(tempfile.mkdtemp(prefix="tether-nginx-"))
    directory.chmod(0o755)
    cert_path, key_path = cert.write(directory)
    user = None
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    config = nginx.render_config(
        directory=directory,
        host=NGINX_HOST,
        port=cloud.port,
        cert=cert_path,
        key=key_path,
        upstream=f"https://127.0.0.1:{cloud.port}",
        websocket=False,
        read_timeout=60,
        user=user,
        client_ca=cloud.ca_path,
        upstream_ca=cloud.ca_path,
        upstream_name="localhost",
        client_cert_header=HEADER,
    )
    assert "ssl_verify_client on;" in config
    (directory / "nginx.conf").write_text(
        config.replace("ssl_verify_client on;", "ssl_verify_client optional;")
    )
    process = start_process(
        [
            nginx.NGINX,
            *("-e", str(directory / "error.log")),
            *("-p", str(directory)),
            *("-c", str(directory / "nginx.conf")),
        ],
        log=directory / "stdout.log",
        ready=lambda: is_listening(NGINX_HOST, cloud.port),
        what="nginx",
    )
    return nginx.Nginx(host=NGINX_HOST, port=cloud.port, directory=directory, process=process)


@pytest.fixture
def load_balancer(lb_cloud: Cloud) -> Iterator[nginx.Nginx]:
    if not nginx.available():
        pytest.skip("nginx is not installed (scripts/sysdeps.sh)")
    proxy = _start_nginx(lb_cloud)
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_an_agent_that_cannot_reach_its_best_tier_reports_its_preflight(
    tmp_path: Path, lb_cloud: Cloud, load_balancer: nginx.Nginx, dns: DNSServer
) -> None:
    cloud = lb_cloud
    async with cloud.api() as api:
        code = (await create_token(api, name="behind-nginx"))["enrollment_code"]
        async with running_agent(
            tmp_path / "gw",
            code=code,
            cloud_url=f"https://{NGINX_HOST}:{cloud.port}",
            longpoll_wait=5.0,
        ) as gw:
            _loopback_only(gw, tmp_path, dns)
            gid = gw.gateway_id
            await wait_gateway(
                api, gid, lambda g: g["linked"] and g["tier"] == "long-poll", what="on long-poll"
            )

            async def preflight() -> dict[str, Any] | None:
                detail = (await api.get(f"/api/v1/gateways/{gid}")).json()
                return detail if detail["preflight"] else None

            detail = await wait_for(preflight, what="the preflight report in the cloud")
            assert gw.agent.status.tier == "long-poll"  # it came over the lower tier
        report = detail["preflight"]
        # Degraded, not down: the WebSocket is refused, the long-poll fallback works.
        assert report["status"] == "warn"
        assert report["report"]["status"] == "warn"
        results = report["report"]["results"]
        [websocket] = [r for r in results if r["check"] == "websocket"]
        assert websocket["status"] == "warn"
        assert websocket["target"] == f"localhost:{cloud.port}/link?probe=1"
        assert "WebSocket upgrade refused: HTTP 400" in websocket["finding"]
        assert "long-poll fallback works" in websocket["finding"]
        assert "forward 'Upgrade: websocket'" in websocket["fix"]
        # What does work through the same nginx passes: the problem is named, not guessed.
        for check in ("dns", "tcp", "tls", "long-poll"):
            assert {r["status"] for r in results if r["check"] == check} == {"pass"}, check
        assert "WebSocket upgrade failed" in (detail["tier_reason"] or "")

        shown = await _tether(cloud.cli_env(), "gateways", "show", gid)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "preflight run by the gateway: WARN" in shown.stdout
        row = (
            rf"│ WARN\s+│ websocket\s+│ localhost:{cloud.port}/link\?probe=1\s+│ WebSocket upgrade"
        )
        assert re.search(row, shown.stdout), shown.stdout
        assert "tier history" in shown.stdout


def _loopback_only(gw: RunningAgent, tmp_path: Path, dns: DNSServer) -> None:
    """Point the agent's preflight at the test's resolver (before the agent's task runs)."""
    assert gw.agent.preflight.last_run is None
    gw.agent.preflight.options = CheckOptions(
        resolvers=(parse_resolver(dns.address),),
        lease_root=tmp_path / "no-leases",
        resolv_conf=tmp_path / "no-resolv.conf",
        hosts_file=tmp_path / "no-hosts",
    )


async def test_after_failed_link_attempts_the_preflight_runs_and_goes_with_the_next_link(
    tmp_path: Path, dns: DNSServer
) -> None:
    dns.records["localhost"] = ["127.0.0.1"]
    names = ("127.0.0.1", "::1", "localhost")
    async with running_cloud(tmp_path / "cloud", extra_hostnames=names) as cloud:
        port = cloud.port
        async with cloud.api() as api:
            code = (await create_token(api, name="lonely"))["enrollment_code"]
        gw_cm = running_agent(tmp_path / "gw", code=code, cloud_url=f"https://localhost:{port}")
        gw = await gw_cm.__aenter__()
        _loopback_only(gw, tmp_path, dns)
    try:
        # The cloud is gone: the agent's link attempts fail (not a tier's fault), and after a
        # few it runs its preflight, which cannot fetch the manifest and builds it from the URL.
        report = await wait_for(
            lambda: gw.agent.preflight.last_report, what="the preflight after failed attempts"
        )
        assert report["status"] == "fail"
        tcp = [r for r in report["results"] if r["check"] == "tcp"]
        assert tcp
        assert all(r["status"] == "fail" for r in tcp)
        assert f"localhost:{port}" in tcp[0]["target"]
        assert gw.agent.status.tier == "ws"  # the cloud was down: no tier was given up

        # The cloud comes back on its port: the report goes with the first link.
        async with running_cloud(tmp_path / "cloud", port=port, extra_hostnames=names) as back:
            await gw.wait_linked()
            async with back.api() as api:

                async def stored() -> dict[str, Any] | None:
                    detail = (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()
                    return detail["preflight"]  # type: ignore[no-any-return]

                preflight = await wait_for(stored, what="the held preflight report in the cloud")
            assert preflight["status"] == "fail"
            assert [
                (r["check"], r["target"], r["status"]) for r in preflight["report"]["results"]
            ] == [(r["check"], r["target"], r["status"]) for r in report["results"]]
            await gw.stop()
    finally:
        await gw_cm.__aexit__(None, None, None)
