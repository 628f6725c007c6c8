"""The whole preflight against the hostile-network test bed: each condition, its finding and fix.

Every hostname is mapped by the test's own DNS server to loopback; tether's own manifest is built
for the test deployment (hostname and port of the test application server).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.support.testbed.appserver import CAPTIVE_API_PATH, AppServer
from tests.support.testbed.certs import TestCA
from tests.support.testbed.dnsserver import DNSServer
from tests.support.testbed.mitm import MitmProxy
from tests.support.testbed.nginx import Nginx
from tests.support.testbed.ntpserver import NTPServer
from tests.support.testbed.squid import Squid

import tether
from tether.netcheck.dns import Resolver
from tether.netcheck.proxy import ProxySettings, parse_proxy_url
from tether.netcheck.report import Check, CheckReport, CheckResult, Status, encode_report
from tether.netcheck.runner import CheckOptions, ProgressEvent, run_checks
from tether.netcheck.tls import TrustAnchors
from tether.netreq.model import Manifest
from tether.netreq.own import DeploymentSettings, build_own_manifest

HOST = "tether.site.test"
INGEST = "ingest.site.test"


def own_manifest(port: int, **hostnames: str) -> Manifest:
    return build_own_manifest(
        DeploymentSettings(hostname=HOST, port=port, area_hostnames=hostnames)
    )


def options(dns: DNSServer | list[DNSServer], test_ca: TestCA, **kw: Any) -> CheckOptions:
    servers = dns if isinstance(dns, list) else [dns]
    defaults: dict[str, Any] = {
        "resolvers": tuple(
            Resolver("127.0.0.1", s.port, f"test {i}") for i, s in enumerate(servers)
        ),
        "anchors": TrustAnchors((test_ca.cert,)),
        "environ": {},
        "timeout": 3.0,
        "long_poll_wait": 0.5,
        "lease_root": Path("/nonexistent-lease-root"),
        "hosts_file": Path("/nonexistent-hosts"),
    }
    defaults.update(kw)
    return CheckOptions(**defaults)


def find(
    report: CheckReport, check: Check, endpoint: str | None = None, **match: str
) -> list[CheckResult]:
    found = [
        r
        for r in report.results
        if r.check is check and (endpoint is None or endpoint in r.about())
    ]
    for key, value in match.items():
        found = [r for r in found if value in getattr(r, key)]
    return found


def statuses(results: list[CheckResult]) -> set[Status]:
    return {r.status for r in results}


def not_passing(report: CheckReport) -> list[str]:
    return [
        f"{r.check} {r.target}: {r.status} {r.finding}"
        for r in report.results
        if r.status not in (Status.PASS, Status.SKIP)
    ]


@pytest.fixture
def app(app_factory: Callable[..., AppServer]) -> AppServer:
    return app_factory([HOST, INGEST, "ingest.blocked.test"])


@pytest.fixture
def dns(dns_factory: Callable[..., DNSServer]) -> DNSServer:
    return dns_factory(
        {HOST: ["127.0.0.1"], INGEST: ["127.0.0.1"], "ingest.blocked.test": ["127.0.0.1"]},
        nxdomain=["gone.site.test"],
    )


async def test_clean_network_passes(
    app: AppServer,
    dns: DNSServer,
    ntp_factory: Callable[..., NTPServer],
    test_ca: TestCA,
) -> None:
    ntp = ntp_factory()
    events: list[ProgressEvent] = []
    report = await run_checks(
        own_manifest(app.port),
        options(dns, test_ca, ntp_servers=(ntp.address,), progress=events.append),
    )
    assert not_passing(report) == []
    assert report.exit_code == 0
    for check in (Check.DNS, Check.ROUTE, Check.TCP, Check.TLS, Check.APP, Check.NTP):
        assert statuses(find(report, check)) == {Status.PASS}, check
    [ws] = find(report, Check.WEBSOCKET, "control")
    assert "101" in ws.finding
    [poll] = find(report, Check.LONG_POLL, "control")
    assert poll.status is Status.PASS
    [clock] = find(report, Check.TIME)
    assert clock.status is Status.PASS
    assert "NTP" in clock.finding
    assert statuses(find(report, Check.CAPTIVE)) == {Status.PASS}
    assert find(report, Check.PROXY)[0].status is Status.SKIP
    assert {e for r in find(report, Check.APP) for e in r.about()} == {
        "control",
        "enrollment",
        "ingest",
        "updates",
        "logs",
        "support",
    }
    # progress: one event per unit of work, ending at the total
    assert events[-1].completed == events[-1].total == len(events)


ALL_ON_HOST = ("control", "enrollment", "ingest", "updates", "logs", "support")


async def test_a_host_shared_by_endpoints_is_probed_and_reported_once(
    app: AppServer, dns: DNSServer, test_ca: TestCA
) -> None:
    """Six endpoints on one name and port: one DNS, route, TCP and TLS row naming all six."""
    report = await run_checks(own_manifest(app.port), options(dns, test_ca))
    assert not_passing(report) == []
    assert [q for q, _ in dns.queries].count(HOST) <= 2  # A and AAAA, asked once
    for check in (Check.DNS, Check.TCP, Check.TLS):
        [row] = find(report, check)
        assert row.endpoints == ALL_ON_HOST, check
        assert row.endpoint == "control"  # the first, for readers of the older report
    assert len(find(report, Check.ROUTE)) == len({r.target for r in find(report, Check.ROUTE)})
    # The application answers that differ stay apart; identical ones are asked once.
    apps = {r.details["path"]: r.endpoints for r in find(report, Check.APP)}
    assert apps == {
        "/.well-known/tether/hello": ("control", "ingest", "updates", "logs", "support"),
        "/.well-known/est/cacerts": ("enrollment",),
    }
    [ws] = find(report, Check.WEBSOCKET)
    assert ws.endpoints == ("control",)
    [poll] = find(report, Check.LONG_POLL)
    assert poll.endpoints == ("control",)
    assert [r.check for r in report.for_endpoint("updates")] == [
        Check.DNS,
        *[Check.ROUTE] * len(find(report, Check.ROUTE)),
        Check.TCP,
        Check.TLS,
        Check.APP,
    ]


async def test_nxdomain_on_one_resolver(
    app: AppServer,
    dns: DNSServer,
    dns_factory: Callable[..., DNSServer],
    test_ca: TestCA,
) -> None:
    # A second resolver (say, the one DHCP advertises) filters the ingest name.
    filtering = dns_factory({HOST: ["127.0.0.1"]}, nxdomain=[INGEST])
    manifest = own_manifest(app.port, ingest=INGEST)
    report = await run_checks(manifest, options([dns, filtering], test_ca))
    ingest_dns = find(report, Check.DNS, "ingest")
    assert len(ingest_dns) == 2  # every resolver is asked
    [bad] = [r for r in ingest_dns if r.status is Status.FAIL]
    assert f"127.0.0.1:{filtering.port}" in bad.target
    assert "NXDOMAIN" in bad.finding
    assert "ask the DNS admins" in bad.fix
    assert report.exit_code == 2
    # the other endpoints resolve through both resolvers
    assert statuses(find(report, Check.DNS, "control")) == {Status.PASS}


async def test_silent_resolver(
    app: AppServer, dns_factory: Callable[..., DNSServer], test_ca: TestCA
) -> None:
    silent = dns_factory({HOST: ["127.0.0.1"]}, silent=[HOST])
    report = await run_checks(
        own_manifest(app.port), options(silent, test_ca, endpoint_ids=("control",), timeout=0.5)
    )
    [result] = find(report, Check.DNS, "control")
    assert result.status is Status.FAIL
    assert "does not answer" in result.finding
    assert "allow DNS (UDP and TCP 53)" in result.fix
    assert find(report, Check.TCP) == []  # nothing to connect to


async def test_refused_and_broken_ipv6(
    app: AppServer, dns_factory: Callable[..., DNSServer], test_ca: TestCA
) -> None:
    # The tether host has a broken IPv6 address; the ingest host points where nothing listens.
    dns = dns_factory({HOST: ["127.0.0.1", "::1"], INGEST: ["127.0.0.2"]})
    manifest = own_manifest(app.port, ingest=INGEST)
    report = await run_checks(manifest, options(dns, test_ca))

    [refused] = find(report, Check.TCP, "ingest")
    assert refused.status is Status.FAIL
    assert "refused" in refused.finding
    assert refused.fix == f"allow outbound TCP {app.port} from the gateway to {INGEST}"
    assert refused.firewall
    assert find(report, Check.TLS, "ingest") == []  # later probes stop at the failure
    # firewall fixes: ingest (blocked) and every endpoint on the tether host (its IPv6 path)
    assert set(report.blocked_endpoints()) == {
        "control",
        "enrollment",
        "ingest",
        "updates",
        "logs",
        "support",
    }

    v6 = find(report, Check.TCP, "control", target="(IPv6)")
    assert statuses(v6) == {Status.WARN}
    assert "IPv4 works" in v6[0].finding
    assert statuses(find(report, Check.TCP, "control", target="(IPv4)")) == {Status.PASS}
    assert statuses(find(report, Check.TLS, "control")) == {Status.PASS}


async def test_squid_with_authentication(
    app: AppServer,
    dns: DNSServer,
    squid_factory: Callable[..., Squid],
    test_ca: TestCA,
) -> None:
    squid = squid_factory(
        hosts={HOST: "127.0.0.1", INGEST: "127.0.0.1", "ingest.blocked.test": "127.0.0.1"},
        credentials=("alice", "s3cret-pw"),
        denied_domains=[".blocked.test"],
    )
    manifest = own_manifest(app.port, ingest="ingest.blocked.test")

    env = {"HTTPS_PROXY": squid.url, "NO_PROXY": "localhost"}
    report = await run_checks(manifest, options(dns, test_ca, environ=env))
    [denied] = find(report, Check.PROXY, "ingest")
    assert denied.status is Status.FAIL
    assert denied.fix == (
        f"proxy refuses CONNECT to ingest.blocked.test:{app.port}: ask the proxy admins to allow it"
    )
    assert denied.firewall
    assert statuses(find(report, Check.PROXY, "control")) == {Status.PASS}
    assert statuses(find(report, Check.TLS, "control")) == {Status.PASS}
    assert statuses(find(report, Check.WEBSOCKET, "control")) == {Status.PASS}
    assert find(report, Check.TCP, "control") == []  # no direct connection was needed
    assert report.proxy == f"http://alice:***@127.0.0.1:{squid.port}"
    assert b"s3cret-pw" not in encode_report(report)

    anonymous = {"HTTPS_PROXY": squid.url_without_credentials}
    report = await run_checks(manifest, options(dns, test_ca, environ=anonymous))
    [auth] = find(report, Check.PROXY, "control")
    assert auth.status is Status.FAIL
    assert auth.fix == (
        "proxy requires authentication: set credentials in HTTPS_PROXY "
        "(http://user:pass@proxy:port)"
    )
    assert "407" in auth.finding


async def test_no_proxy_goes_direct(
    app: AppServer,
    dns: DNSServer,
    squid_factory: Callable[..., Squid],
    test_ca: TestCA,
) -> None:
    squid = squid_factory(hosts={HOST: "127.0.0.1"}, denied_domains=[".site.test"])
    env = {"https_proxy": squid.url, "no_proxy": ".site.test"}
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, environ=env, endpoint_ids=("control",))
    )
    assert not_passing(report) == []
    assert statuses(find(report, Check.TCP, "control")) == {Status.PASS}
    [proxy] = find(report, Check.PROXY)  # no endpoint uses it: not checked, not a failure
    assert proxy.status is Status.SKIP
    assert "no endpoint uses the proxy" in proxy.finding


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


async def test_unused_dead_proxy_is_no_failure(
    app: AppServer, dns: DNSServer, test_ca: TestCA
) -> None:
    env = {"NO_PROXY": "*", "HTTPS_PROXY": f"http://127.0.0.1:{_dead_port()}"}
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, environ=env, endpoint_ids=("control",))
    )
    assert not_passing(report) == []
    assert report.exit_code == 0
    assert statuses(find(report, Check.PROXY)) == {Status.SKIP}


@pytest.mark.parametrize("no_proxy", ["*.site.test", f"{HOST}:443", "127.0.0.0/8"])
async def test_no_proxy_entries_the_agent_ignores_do_not_send_the_check_direct(
    app: AppServer, dns: DNSServer, test_ca: TestCA, no_proxy: str
) -> None:
    """The agent's client would use the (dead) proxy for these: so must the check, and fail."""
    env = {"NO_PROXY": no_proxy, "HTTPS_PROXY": f"http://127.0.0.1:{_dead_port()}"}
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, environ=env, endpoint_ids=("control",))
    )
    assert find(report, Check.TCP, "control") == []  # never went direct
    assert Status.FAIL in statuses(find(report, Check.PROXY, "control"))
    assert report.exit_code == 2


async def test_https_proxy_in_the_environment_is_ignored_like_the_agent_does(
    app: AppServer, dns: DNSServer, squid_factory: Callable[..., Squid], test_ca: TestCA
) -> None:
    squid = squid_factory(hosts={HOST: "127.0.0.1"})
    env = {"HTTPS_PROXY": f"https://127.0.0.1:{squid.port}"}
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, environ=env, endpoint_ids=("control",))
    )
    [proxy] = find(report, Check.PROXY)
    assert proxy.status is Status.WARN
    assert "connects directly" in proxy.finding
    assert statuses(find(report, Check.TCP, "control")) == {Status.PASS}  # direct, as the agent


async def test_configured_https_proxy_is_spoken_to_over_tls(
    app: AppServer, dns: DNSServer, squid_factory: Callable[..., Squid], test_ca: TestCA
) -> None:
    """The agent's own proxy setting https://… means TLS to the proxy: a plain squid fails."""
    squid = squid_factory(hosts={HOST: "127.0.0.1"})
    settings = ProxySettings(https_proxy=parse_proxy_url(f"https://127.0.0.1:{squid.port}"))
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, proxy=settings, endpoint_ids=("control",))
    )
    [tunnel] = find(report, Check.PROXY, "control")
    assert tunnel.status is Status.FAIL
    assert "TLS to the https:// proxy" in tunnel.finding
    assert "http://" in tunnel.finding


async def test_mitmproxy_interception(
    app: AppServer,
    dns: DNSServer,
    squid_factory: Callable[..., Squid],
    mitm_factory: Callable[..., MitmProxy],
    test_ca: TestCA,
    ca_file: Path,
) -> None:
    upstream = squid_factory(hosts={HOST: "127.0.0.1"})
    mitm = mitm_factory(upstream=upstream.url, upstream_ca=ca_file)
    report = await run_checks(
        own_manifest(app.port),
        options(dns, test_ca, environ={"HTTPS_PROXY": mitm.url}, endpoint_ids=("control",)),
    )
    [tls] = find(report, Check.TLS, "control")
    assert tls.status is Status.FAIL
    assert "TLS interception" in tls.finding
    assert "'mitmproxy'" in tls.finding
    assert tls.fix.startswith(f"exempt {HOST} from TLS decryption/inspection on 'mitmproxy'")
    assert find(report, Check.APP, "control") == []
    assert report.exit_code == 2


async def test_proxy_refusing_websocket_upgrades(
    app: AppServer,
    dns: DNSServer,
    nginx_factory: Callable[..., Nginx],
    test_ca: TestCA,
) -> None:
    # A TLS-terminating middlebox in front of the cloud that does not pass Upgrade.
    lb = nginx_factory([HOST], f"https://127.0.0.1:{app.port}", websocket=False)
    report = await run_checks(
        own_manifest(lb.port), options(dns, test_ca, endpoint_ids=("control",))
    )
    [ws] = find(report, Check.WEBSOCKET, "control")
    assert ws.status is Status.WARN  # tier 1 is lost, tier 2 works
    assert "426" in ws.finding
    assert "long-poll fallback works" in ws.finding
    assert "allow WebSocket upgrades" in ws.fix
    assert statuses(find(report, Check.LONG_POLL, "control")) == {Status.PASS}
    assert statuses(find(report, Check.APP, "control")) == {Status.PASS}
    assert report.exit_code == 1

    passing = nginx_factory([HOST], f"https://127.0.0.1:{app.port}", websocket=True)
    report = await run_checks(
        own_manifest(passing.port), options(dns, test_ca, endpoint_ids=("control",))
    )
    assert statuses(find(report, Check.WEBSOCKET, "control")) == {Status.PASS}


async def test_ntp_blocked_falls_back_to_https_date(
    app: AppServer,
    dns: DNSServer,
    ntp_factory: Callable[..., NTPServer],
    test_ca: TestCA,
) -> None:
    blocked = ntp_factory(answer=False)
    report = await run_checks(
        own_manifest(app.port),
        options(
            dns, test_ca, ntp_servers=(blocked.address,), endpoint_ids=("control",), timeout=1.0
        ),
    )
    [ntp] = find(report, Check.NTP)
    assert ntp.status is Status.WARN
    assert "UDP 123 dropped" in ntp.finding
    assert ntp.fix == f"allow UDP {blocked.port} from the gateway to 127.0.0.1"
    [clock] = find(report, Check.TIME)
    assert clock.status is Status.PASS
    assert f"HTTPS Date of {HOST}" in clock.finding
    assert "NTP blocked" in clock.finding


async def test_no_time_source_names_the_real_cause(
    app: AppServer, dns_factory: Callable[..., DNSServer], test_ca: TestCA
) -> None:
    """No NTP in the manifest, DNS failing: the time verdict says so, not "allow NTP"."""
    dns = dns_factory({}, nxdomain=[HOST])
    manifest = own_manifest(app.port)
    assert manifest.time.fallback_ntp == ()
    report = await run_checks(manifest, options(dns, test_ca, endpoint_ids=("control",)))
    [clock] = find(report, Check.TIME)
    assert clock.status is Status.WARN
    assert "the manifest lists none" in clock.finding
    assert f"compared with the HTTPS Date header of {HOST}" in clock.finding
    assert "DNS failed" in clock.finding
    assert "NXDOMAIN" in clock.finding
    assert "NTP" not in clock.fix
    assert clock.fix.startswith("ask the DNS admins")
    assert "HTTPS answers" in clock.fix


async def test_no_time_source_with_ntp_blocked_names_both(
    app: AppServer,
    dns_factory: Callable[..., DNSServer],
    ntp_factory: Callable[..., NTPServer],
    test_ca: TestCA,
) -> None:
    blocked = ntp_factory(answer=False)
    dns = dns_factory({HOST: ["127.0.0.2"]})  # nothing listens there
    report = await run_checks(
        own_manifest(app.port),
        options(
            dns, test_ca, ntp_servers=(blocked.address,), endpoint_ids=("control",), timeout=1.0
        ),
    )
    [clock] = find(report, Check.TIME)
    assert clock.status is Status.WARN
    assert "NTP went unanswered" in clock.finding
    assert "TCP failed" in clock.finding
    assert f"allow outbound TCP {app.port} from the gateway to {HOST}" in clock.fix
    assert f"allow NTP (UDP 123) to 127.0.0.1:{blocked.port}" in clock.fix
    assert "the manifest lists" not in clock.fix


async def test_clock_before_build_time(
    app: AppServer,
    dns: DNSServer,
    ntp_factory: Callable[..., NTPServer],
    test_ca: TestCA,
) -> None:
    ntp = ntp_factory()
    stale = float(tether.BUILD_TIME - 90 * 86400)
    report = await run_checks(
        own_manifest(app.port),
        options(
            dns,
            test_ca,
            ntp_servers=(ntp.address,),
            endpoint_ids=("control",),
            clock=lambda: stale,
        ),
    )
    [clock] = find(report, Check.TIME)
    assert clock.status is Status.FAIL
    assert "before this software was built" in clock.finding
    # the certificate check sees the same wrong clock
    [tls] = find(report, Check.TLS, "control")
    assert tls.status is Status.FAIL
    assert "not valid before" in tls.finding


@pytest.mark.slow
async def test_idle_connections_cut_by_the_proxy(
    app: AppServer,
    dns: DNSServer,
    squid_factory: Callable[..., Squid],
    test_ca: TestCA,
) -> None:
    squid = squid_factory(hosts={HOST: "127.0.0.1"}, read_timeout=1)
    env: Mapping[str, str] = {"HTTPS_PROXY": squid.url}
    report = await run_checks(
        own_manifest(app.port),
        options(dns, test_ca, environ=env, endpoint_ids=("control",), idle_survival=4.0),
    )
    [idle] = find(report, Check.IDLE, "control")
    assert idle.status is Status.WARN
    assert "idle for 4 s was cut" in idle.finding
    assert "raise the idle timeout" in idle.fix

    direct = await run_checks(
        own_manifest(app.port),
        options(dns, test_ca, endpoint_ids=("control",), idle_survival=1.0),
    )
    assert statuses(find(direct, Check.IDLE, "control")) == {Status.PASS}


async def test_unpinned_run_learns_the_ca_from_est(
    app: AppServer, dns: DNSServer, test_ca: TestCA
) -> None:
    # No --ca and no digest in the manifest: the CA the cloud publishes is used, and said so.
    report = await run_checks(own_manifest(app.port), options(dns, test_ca, anchors=TrustAnchors()))
    tls = find(report, Check.TLS)
    assert statuses(tls) == {Status.PASS}
    assert all("EST cacerts" in r.finding for r in tls)


async def test_interception_detected_without_a_pinned_ca(
    app: AppServer,
    dns: DNSServer,
    squid_factory: Callable[..., Squid],
    mitm_factory: Callable[..., MitmProxy],
    test_ca: TestCA,
    ca_file: Path,
) -> None:
    upstream = squid_factory(hosts={HOST: "127.0.0.1"})
    mitm = mitm_factory(upstream=upstream.url, upstream_ca=ca_file)
    report = await run_checks(
        own_manifest(app.port),
        options(
            dns,
            test_ca,
            anchors=TrustAnchors(),
            environ={"HTTPS_PROXY": mitm.url},
            endpoint_ids=("control",),
        ),
    )
    [tls] = find(report, Check.TLS, "control")
    assert tls.status is Status.FAIL
    assert "issued by 'mitmproxy'" in tls.finding
    assert "Tether Test CA" in tls.finding  # the CA it should have ended at


async def test_captive_portal_advertised_by_dhcp(
    app: AppServer,
    dns: DNSServer,
    app_factory: Callable[..., AppServer],
    test_ca: TestCA,
    tmp_path: Path,
) -> None:
    login = "https://portal.site.test/login"
    portal = app_factory(["127.0.0.1"], portal=login)
    leases = tmp_path / "run/systemd/netif/leases"
    leases.mkdir(parents=True)
    (leases / "3").write_text(
        f"ADDRESS=192.0.2.10\nCAPTIVE_PORTAL=https://127.0.0.1:{portal.port}{CAPTIVE_API_PATH}\n"
    )
    report = await run_checks(
        own_manifest(app.port), options(dns, test_ca, lease_root=tmp_path, endpoint_ids=())
    )
    [captive] = find(report, Check.CAPTIVE)
    assert captive.status is Status.FAIL
    assert f"requires a login at {login}" in captive.finding
    assert "exempt the gateway" in captive.fix


async def test_portal_answering_for_the_service(
    dns_factory: Callable[..., DNSServer],
    app_factory: Callable[..., AppServer],
    test_ca: TestCA,
) -> None:
    # The name resolves to a portal that redirects everything to its login page.
    portal = app_factory([HOST], portal="http://portal.site.test/login")
    dns = dns_factory({HOST: ["127.0.0.1"]})
    report = await run_checks(
        own_manifest(portal.port), options(dns, test_ca, endpoint_ids=("updates",))
    )
    [app_result] = find(report, Check.APP, "updates")
    assert app_result.status is Status.FAIL
    assert "redirect to http://portal.site.test/login" in app_result.finding
    [captive] = find(report, Check.CAPTIVE)
    assert captive.status is Status.FAIL
    assert "portal or block page answers" in captive.finding


async def test_long_poll_held_as_long_as_asked_and_cut_by_a_proxy_timeout(
    app: AppServer, dns: DNSServer, squid_factory: Callable[..., Squid], test_ca: TestCA
) -> None:
    """A proxy that cuts held requests after 2 s passes a short hold and fails a longer one."""
    squid = squid_factory(hosts={HOST: "127.0.0.1"}, read_timeout=2)
    env = {"HTTPS_PROXY": squid.url}
    manifest = own_manifest(app.port)

    short = await run_checks(
        manifest, options(dns, test_ca, environ=env, endpoint_ids=("control",))
    )
    [ok] = find(short, Check.LONG_POLL, "control")
    assert ok.status is Status.PASS
    assert "held 0.5 s" in ok.finding

    held = await run_checks(
        manifest,
        options(dns, test_ca, environ=env, endpoint_ids=("control",), long_poll_wait=4.0),
    )
    [cut] = find(held, Check.LONG_POLL, "control")
    assert cut.status is Status.FAIL
    assert "to be held 4 s was cut after" in cut.finding
    assert "above 4 s" in cut.fix
    assert cut.firewall


async def test_a_dead_second_resolver_is_a_warning_naming_it(
    app: AppServer, dns: DNSServer, test_ca: TestCA
) -> None:
    dead = Resolver("127.0.0.1", _dead_port(), "dead one")
    base = options(dns, test_ca, endpoint_ids=("control",), timeout=1.0)
    resolvers = (*base.resolvers, dead) if base.resolvers else (dead,)
    report = await run_checks(
        own_manifest(app.port),
        options(dns, test_ca, endpoint_ids=("control",), resolvers=resolvers),
    )
    rows = find(report, Check.DNS, "control")
    assert [r.status for r in rows] == [Status.PASS, Status.WARN]
    assert "dead one" in rows[1].target
    assert "answered, so the gateway resolves through it" in rows[1].finding
    assert report.exit_code == 1


async def test_hosts_file_is_read_before_dns(
    app: AppServer, dns_factory: Callable[..., DNSServer], test_ca: TestCA, tmp_path: Path
) -> None:
    empty = dns_factory({}, nxdomain=[HOST])  # DNS does not know the name at all
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {HOST}\n")
    report = await run_checks(
        own_manifest(app.port),
        options(empty, test_ca, endpoint_ids=("control",), hosts_file=hosts),
    )
    [row] = find(report, Check.DNS, "control")
    assert row.status is Status.PASS
    assert str(hosts) in row.target
    assert statuses(find(report, Check.TLS, "control")) == {Status.PASS}
