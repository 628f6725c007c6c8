"""Any manifest works: a reference vendor's gateway, checked against look-alike test hosts.

The test's DNS server maps every vendor hostname to its own loopback address, where test servers
listen on the vendor's real ports (443, 123), so nothing ever reaches the vendor.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.testbed.appserver import AppServer
from tests.support.testbed.certs import TestCA
from tests.support.testbed.dnsserver import DNSServer
from tests.support.testbed.ntpserver import NTPServer

from tether.netcheck.dns import Resolver
from tether.netcheck.report import Check, CheckReport, Status
from tether.netcheck.runner import CheckOptions, run_checks
from tether.netcheck.tls import TrustAnchors
from tether.netreq.catalog import load_reference

pytestmark = pytest.mark.root


def _by_endpoint(report: CheckReport, check: Check) -> dict[str | None, list[Status]]:
    found: dict[str | None, list[Status]] = {}
    for r in report.results:
        if r.check is check:
            found.setdefault(r.endpoint, []).append(r.status)
    return found


async def test_disruptive_technologies_connector_here(
    app_factory: Callable[..., AppServer],
    dns_factory: Callable[..., DNSServer],
    ntp_factory: Callable[..., NTPServer],
    test_ca: TestCA,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding the vendor's ports 443 and 123 needs root")
    manifest = load_reference("dt-cloud-connector-2nd-gen")
    net = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}"
    address = {ep.id: f"{net}.{i}" for i, ep in enumerate(manifest.endpoints, start=10)}
    served = ("ccon-manager", "est", "mender")  # mender-artifacts: nothing listens
    for ep in manifest.endpoints:
        if ep.id in served:
            app_factory([ep.host], host=address[ep.id], port=443, tether=False)
    ntp_factory(host=address["ntp-time1"], port=123)
    ntp_factory(host=address["ntp-time2"], port=123, offset=0.5)
    ntp_factory(host=address["ntp-time3"], port=123, answer=False)  # UDP 123 dropped
    dns = dns_factory({ep.host: [address[ep.id]] for ep in manifest.endpoints})

    report = await run_checks(
        manifest,
        CheckOptions(
            resolvers=(Resolver("127.0.0.1", dns.port, "test"),),
            anchors=TrustAnchors((test_ca.cert,)),
            environ={},
            timeout=3.0,
            lease_root=Path("/nonexistent-lease-root"),
        ),
    )
    # every vendor name was looked up through the test's DNS server only
    assert {name for name, _ in dns.queries} == {ep.host for ep in manifest.endpoints}

    tls = _by_endpoint(report, Check.TLS)
    app = _by_endpoint(report, Check.APP)
    for endpoint in served:
        assert tls[endpoint] == [Status.PASS]
        assert app[endpoint] == [Status.PASS]  # an HTTP answer (404 here) proves the service
    [refused] = [
        r for r in report.results if r.endpoint == "mender-artifacts" and r.check is Check.TCP
    ]
    assert refused.status is Status.FAIL
    assert "refused" in refused.finding

    ntp = _by_endpoint(report, Check.NTP)
    assert ntp["ntp-time1"] == [Status.PASS]
    assert ntp["ntp-time2"] == [Status.PASS]
    assert ntp["ntp-time3"] == [Status.WARN]
    assert ntp["ntp-time4"] == [Status.WARN]
    [clock] = [r for r in report.results if r.check is Check.TIME]
    assert clock.status is Status.PASS
    assert report.exit_code == 2
    assert set(report.blocked_endpoints()) == {"mender-artifacts", "ntp-time3", "ntp-time4"}
