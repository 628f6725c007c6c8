"""The agent's preflight against a real cloud on loopback: the manifest fetched from the cloud
(over the pinned CA), the hello, WebSocket and long-poll probe endpoints answering; the manifest
built from the URL when the cloud cannot serve it; the agent's own proxy setting used.

Names resolve through a DNS server of the test's own on 127.0.0.1 (the cloud's manifest names
``localhost``), never through the machine's resolvers, so no probe leaves loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.cloudproc import Cloud, free_port, running_cloud
from tests.support.testbed.dnsserver import DNSServer

from tether.gateway.preflight import Preflight, PreflightUnavailable
from tether.netcheck import CheckOptions
from tether.netcheck.dns import parse_resolver

#: The cloud's certificate must also name ``localhost``: the manifest it serves names it.
CLOUD_NAMES = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer(records={"localhost": ["127.0.0.1"]}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", extra_hostnames=CLOUD_NAMES) as running:
        yield running


def loopback_options(tmp_path: Path, dns: DNSServer) -> CheckOptions:
    """Only the test's resolver, no lease files, no resolv.conf of this machine."""
    return CheckOptions(
        resolvers=(parse_resolver(dns.address),),
        lease_root=tmp_path / "no-leases",
        resolv_conf=tmp_path / "no-resolv.conf",
        hosts_file=tmp_path / "no-hosts",
        long_poll_wait=1.0,  # the agent holds 25 s; 1 s proves the same path here
        environ={},
    )


def results(document: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [r for r in document["results"] if r["check"] == check]


async def test_the_preflight_fetches_the_manifest_from_the_cloud_and_every_probe_passes(
    tmp_path: Path, cloud: Cloud, dns: DNSServer
) -> None:
    preflight = Preflight(
        cloud_url=cloud.url,
        ca_path=str(cloud.ca_path),
        trust_env=False,
        options=loopback_options(tmp_path, dns),
    )
    assert preflight.due()
    document = await preflight.run()
    assert preflight.last_report == document
    assert not preflight.due()  # at most once per interval

    # The cloud's own manifest: it names "localhost" (a manifest built from the URL would name
    # 127.0.0.1), so it was fetched from the cloud.
    assert document["manifest_product"]
    assert {r["target"].split(" ")[0] for r in results(document, "dns")} == {"localhost"}
    assert {name for name, _ in dns.queries} == {"localhost"}
    for check in ("dns", "tcp", "tls", "app", "websocket", "long-poll"):
        found = results(document, check)
        assert found, f"no {check} result"
        assert {r["status"] for r in found} == {"pass"}, found
    [hello] = [r for r in results(document, "app") if r["endpoint"] == "control"]
    assert "/.well-known/tether/hello" in hello["finding"]
    [websocket] = results(document, "websocket")
    assert "/link?probe=1" in websocket["target"]
    assert "101" in websocket["finding"]
    [tls] = results(document, "tls")[:1]
    assert "tether platform CA" in tls["finding"]
    assert document["proxy"] is None  # the agent goes direct: so do its checks
    assert document["status"] == "pass"


async def test_without_the_cloud_the_manifest_is_built_from_its_url(
    tmp_path: Path, cloud: Cloud, dns: DNSServer
) -> None:
    closed = free_port()
    preflight = Preflight(
        cloud_url=f"https://localhost:{closed}/",
        ca_path=str(cloud.ca_path),
        trust_env=False,
        options=loopback_options(tmp_path, dns),
    )
    document = await preflight.run()
    assert document["status"] == "fail"
    tcp = results(document, "tcp")
    assert tcp
    assert all(f"localhost:{closed}" in r["target"] for r in tcp)
    assert {r["status"] for r in tcp} == {"fail"}
    assert "refused" in tcp[0]["finding"]
    assert results(document, "websocket") == []  # nothing after a failed connect


async def test_a_cloud_addressed_by_ip_without_its_manifest_cannot_be_checked(
    tmp_path: Path, cloud: Cloud, dns: DNSServer
) -> None:
    # The manifest names hosts by DNS name only: from an IP URL none can be built.
    preflight = Preflight(
        cloud_url=f"https://127.0.0.1:{free_port()}",
        ca_path=str(cloud.ca_path),
        trust_env=False,
        options=loopback_options(tmp_path, dns),
    )
    with pytest.raises(PreflightUnavailable) as refused:
        await preflight.run()
    message = str(refused.value)
    assert "names an IP address (127.0.0.1)" in message
    assert "could not be fetched: " in message
    assert "refused" in message.lower() or "connect" in message.lower()


async def test_the_checks_take_the_agents_proxy_not_the_environments(
    tmp_path: Path, cloud: Cloud, dns: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = free_port()
    # The environment names a proxy; an agent told not to trust its environment ignores it.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
    base = CheckOptions(
        resolvers=(parse_resolver(dns.address),),
        lease_root=tmp_path / "no-leases",
        resolv_conf=tmp_path / "no-resolv.conf",
        hosts_file=tmp_path / "no-hosts",
        long_poll_wait=1.0,  # the agent holds 25 s; 1 s proves the same path here
    )
    direct = Preflight(
        cloud_url=cloud.url, ca_path=str(cloud.ca_path), trust_env=False, options=base
    )
    report = await direct.run()
    assert report["proxy"] is None
    assert {r["status"] for r in results(report, "websocket")} == {"pass"}

    # The agent's configured proxy (one that is not listening) is the one checked (the
    # manifest cannot be fetched through it either: it is built from the URL).
    proxied = Preflight(
        cloud_url=f"https://localhost:{cloud.port}",
        ca_path=str(cloud.ca_path),
        proxy=f"http://site:pw@127.0.0.1:{closed}",
        trust_env=False,
        options=base,
    )
    report = await proxied.run()
    assert report["proxy"] is not None
    assert f"127.0.0.1:{closed}" in report["proxy"]
    assert "pw" not in report["proxy"]
    proxy_rows = results(report, "proxy")
    assert proxy_rows
    assert {r["status"] for r in proxy_rows} == {"fail"}
    assert results(report, "websocket") == []  # nothing passes a proxy that is not there
    assert report["status"] == "fail"
