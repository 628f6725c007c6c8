"""A firewalled site in network namespaces, whose nftables rules are the ones tether generates.

The gateway sits behind a router namespace running the generated nftables ruleset and dnsmasq
(with the generated ``nftset`` lines), exactly as the rules' own instructions say. The check runs
inside the gateway namespace as a site engineer would run it: what the generated rules admit
passes, what they leave out fails with a finding and the allow rule to add.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.testbed import netns
from tests.support.testbed.appserver import AppServer
from tests.support.testbed.dnsserver import DNSServer
from tests.support.testbed.ntpserver import NTPServer

from tether.netcheck.report import Check, CheckReport, Status, decode_report
from tether.netreq.loader import manifest_to_json
from tether.netreq.own import DeploymentSettings, build_own_manifest
from tether.netreq.render import RuleOptions, build_rules

pytestmark = pytest.mark.root

HOST = "tether.site.test"
LOGS = "logs.site.test"  # optional area on its own hostname and address: not in the rules
TETHER = str(Path(sys.executable).parent / "tether")


@pytest.fixture
def site() -> Iterator[netns.Site]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with netns.site() as s:
        yield s


def _results(report: CheckReport, check: Check, endpoint: str | None) -> list[Status]:
    return [r.status for r in report.results if r.check is check and endpoint in r.about()]


def test_generated_nftables_admit_exactly_the_manifest(
    site: netns.Site,
    tmp_path: Path,
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ntp_factory: Callable[..., NTPServer],
    ca_file: Path,
) -> None:
    host_a, host_b = site.host_ips
    app = app_factory([HOST], host=host_a)
    app_factory([LOGS], host=host_b, port=app.port)
    upstream = dns_factory({HOST: [host_a], LOGS: [host_b]}, host=host_a)
    ntp_factory(host=host_a, port=123)  # advertised by DHCP; the rules do not admit UDP 123

    manifest = build_own_manifest(
        DeploymentSettings(hostname=HOST, port=app.port, area_hostnames={"logs": LOGS})
    )
    rules = build_rules(manifest, "nftables", RuleOptions(include_optional=False))
    table = site.load_firewall(rules.file(".nft"))
    site.start_dns(f"{host_a}#{upstream.port}", rules.file("-dnsmasq.conf"))

    leases = tmp_path / "root/run/systemd/netif/leases"
    leases.mkdir(parents=True)
    (leases / "2").write_text(
        f"ADDRESS={site.gateway_ip}\nDNS={site.firewall_inside_ip}\nNTP={host_a}\n"
    )
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_bytes(manifest_to_json(manifest))
    argv = site.exec_argv(
        [
            TETHER,
            "net",
            "check",
            "-m",
            str(manifest_path),
            "--ca",
            str(ca_file),
            "--lease-root",
            str(tmp_path / "root"),
            "--timeout",
            "3",
            "--long-poll-hold",
            "1",
            "--firewall-format",
            "nftables",
            "--json",
        ]
    )
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    report = decode_report(done.stdout)

    # Resolution went through the site's dnsmasq, known both from resolv.conf and from DHCP.
    assert report.resolvers == (f"{site.firewall_inside_ip} (system, dhcp)",)
    for endpoint in ("control", "enrollment", "ingest", "updates", "support"):
        for check in (Check.DNS, Check.TCP, Check.TLS, Check.APP):
            assert _results(report, check, endpoint) == [Status.PASS], (endpoint, check)
    assert _results(report, Check.WEBSOCKET, "control") == [Status.PASS]
    assert _results(report, Check.LONG_POLL, "control") == [Status.PASS]

    [blocked] = [r for r in report.results if r.check is Check.TCP and r.endpoint == "logs"]
    assert blocked.status is Status.FAIL
    assert "silently dropped" in blocked.finding
    assert blocked.fix == f"allow outbound TCP {app.port} from the gateway to {LOGS}"
    assert report.blocked_endpoints() == ("logs",)

    # NTP advertised by DHCP is dropped by the firewall: time comes from the HTTPS Date.
    [ntp] = [r for r in report.results if r.check is Check.NTP]
    assert ntp.status is Status.WARN
    assert host_a in ntp.target
    [clock] = [r for r in report.results if r.check is Check.TIME]
    assert clock.status is Status.PASS
    assert f"HTTPS Date of {HOST}" in clock.finding

    # The fix is the nftables/dnsmasq configuration for exactly the blocked endpoint.
    fix = json.loads(done.stdout)["firewall_fix"]
    assert fix["format"] == "nftables"
    dnsmasq_lines = next(f["content"] for f in fix["files"] if f["name"].endswith(".conf"))
    assert f"nftset=/{LOGS}/" in dnsmasq_lines
    assert f"nftset=/{HOST}/" not in dnsmasq_lines

    # and the firewall really learnt the allowed address only, through dnsmasq
    listing = site.nft("list", "table", "inet", table)
    assert host_a in listing
    assert host_b not in listing
