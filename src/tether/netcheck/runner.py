"""Run the preflight: every probe for every endpoint of a manifest, bounded and concurrent.

:func:`run_checks` is the one entry point, shared by ``tether net check`` and the gateway agent
(which runs it when its link cannot reach the best tier and uploads the :class:`CheckReport`).

For each endpoint name and port the probes run in the order a connection needs them, and stop
at the first that fails (a TLS verdict after a refused TCP connect would say nothing):

    DNS (every resolver) → route (IPv4, IPv6) → TCP or proxy CONNECT → TLS → application answer
    → WebSocket upgrade → long-poll → idle survival

Around them: the proxy configuration, captive-portal signs and the clock (NTP, HTTPS ``Date``,
build time). Each probe is bounded by ``CheckOptions.timeout``; at most
``CheckOptions.concurrency`` endpoint probes run at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

import tether
from tether.netcheck import captive as captive_mod
from tether.netcheck import dhcp
from tether.netcheck.dns import (
    Answer,
    Outcome,
    Resolver,
    dedupe,
    hosts_file_addresses,
    parse_resolver,
    resolve,
)
from tether.netcheck.dns import system_resolvers as read_resolv_conf
from tether.netcheck.http import (
    HELLO_PATH,
    HELLO_SERVICE,
    PROBE_QUERY,
    WEBSOCKET_PATH,
    HttpProtocolError,
    HttpResponse,
    WebSocketClosed,
    hello_service,
    host_header,
    long_poll,
    request,
    websocket_close_frame,
    websocket_ping,
    websocket_upgrade,
)
from tether.netcheck.mqtt import CONNACK_CODES, MqttError, mqtt_connect
from tether.netcheck.proxy import (
    ProxyAuthRequired,
    ProxyError,
    ProxyRefused,
    ProxySettings,
    ProxyUpstreamFailed,
    ProxyURL,
)
from tether.netcheck.report import Check, CheckReport, CheckResult, Status
from tether.netcheck.route import family, route_source
from tether.netcheck.tcp import ConnectError, Connection, classify, close, describe, open_path
from tether.netcheck.timecheck import MAX_OFFSET, NtpAnswer, NtpError, parse_http_date, sntp_query
from tether.netcheck.tls import (
    TlsError,
    TlsSession,
    TrustAnchors,
    evaluate,
    issuer_label,
    spki_sha256,
    start_tls,
)
from tether.netreq.model import (
    AppProtocol,
    Endpoint,
    Lifecycle,
    Manifest,
    MatchMode,
    PinKind,
    ProbeKind,
    Requirement,
    Transport,
)

__all__ = ["EST_CACERTS_PATH", "LONG_POLL_HOLD", "CheckOptions", "ProgressEvent", "run_checks"]

EST_CACERTS_PATH = "/.well-known/est/cacerts"  # RFC 7030 §4.1, served without authentication

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")

LONG_POLL_HOLD = 25.0
"""How long the agent holds a long-poll (its ``longpoll_wait`` setting's default)."""


@dataclass(frozen=True)
class ProgressEvent:
    label: str  # what just finished
    completed: int
    total: int


@dataclass(frozen=True)
class CheckOptions:
    """How to run the checks. The defaults discover everything from this machine."""

    # Resolvers to ask; None: resolv.conf, then DHCP-advertised ones, then the manifest's.
    resolvers: tuple[Resolver, ...] | None = None
    # Extra NTP servers ("host[:port]") besides those DHCP advertised and the manifest lists.
    ntp_servers: tuple[str, ...] = ()
    anchors: TrustAnchors = field(default_factory=TrustAnchors)  # pinned CA certificates (--ca)
    proxy: ProxySettings | None = None  # None: from the environment (HTTPS_PROXY, NO_PROXY)
    environ: Mapping[str, str] | None = None  # the environment to read; None: os.environ
    timeout: float = 5.0  # seconds per probe
    concurrency: int = 8
    idle_survival: float = 0.0  # seconds to hold an idle link open; 0: skip
    # Seconds the long-poll probe asks the server to hold: as long as the agent holds its
    # long-polls by default, so a proxy or firewall that cuts held requests sooner is caught.
    long_poll_wait: float = LONG_POLL_HOLD
    include_legacy: bool = False
    include_optional: bool = True
    endpoint_ids: tuple[str, ...] | None = None  # only these endpoints
    lease_root: Path = Path("/")  # where DHCP lease files are looked for
    resolv_conf: Path = Path("/etc/resolv.conf")
    hosts_file: Path = Path("/etc/hosts")  # read before DNS, as the agent's getaddrinfo does
    build_time: int = tether.BUILD_TIME
    clock: Callable[[], float] = time.time
    progress: Callable[[ProgressEvent], None] | None = None


async def run_checks(manifest: Manifest, options: CheckOptions | None = None) -> CheckReport:
    """Probe every in-scope endpoint of ``manifest`` from here and report what was found."""
    return await _Run(manifest, options or CheckOptions()).execute()


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 1)


def _is_tether_service(ep: Endpoint) -> bool:
    """Endpoints served by a tether cloud, which answer the documented probe paths."""
    path = ep.probe.path or ""
    return path == HELLO_PATH or path.split("?", 1)[0] == WEBSOCKET_PATH


def _is_link(ep: Endpoint) -> bool:
    return ep.probe.kind is ProbeKind.WEBSOCKET and _is_tether_service(ep)


@dataclass
class _Unit:
    """One (name, port, transport) and the endpoints served there, probed once for all of them.

    DNS, route, TCP (or the proxy's CONNECT) and TLS are the same for every endpoint on a name
    and port: they run once and their results name all those endpoints. What differs between
    endpoints (the application answer, the WebSocket upgrade, the long-poll) runs once per
    distinct request.
    """

    endpoints: list[Endpoint]
    name: str
    port: int
    transport: Transport
    results: list[CheckResult] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        """The first endpoint: the group shares its proxy route (the grouping key)."""
        return self.endpoints[0]

    @property
    def ids(self) -> str:
        return ", ".join(ep.id for ep in self.endpoints)

    @property
    def label(self) -> str:
        return f"{self.ids}: {self.name} {self.transport.value.upper()} {self.port}"

    def add(
        self,
        check: Check,
        status: Status,
        finding: str,
        fix: str = "",
        *,
        target: str | None = None,
        firewall: bool = False,
        details: Mapping[str, str] | None = None,
        started: float | None = None,
        endpoints: Sequence[Endpoint] | None = None,
    ) -> CheckResult:
        """Record a result about ``endpoints`` (default: every endpoint of the unit)."""
        about = tuple(ep.id for ep in (endpoints or self.endpoints))
        result = CheckResult(
            check=check,
            target=target or _authority(self.name, self.port),
            status=status,
            finding=finding,
            fix=fix,
            endpoint=about[0],
            endpoints=about,
            firewall=firewall,
            details=dict(details or {}),
            elapsed_ms=_ms(started) if started is not None else 0.0,
        )
        self.results.append(result)
        return result

    def first_failure(self) -> CheckResult | None:
        return next((r for r in self.results if r.status is Status.FAIL), None)


def _grouped(items: Sequence[_V], key: Callable[[_V], _K]) -> dict[_K, list[_V]]:
    """``items`` by ``key``, in the order each key first appears."""
    groups: dict[_K, list[_V]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _alpn(ep: Endpoint) -> tuple[str, ...]:
    if ep.protocol is AppProtocol.MQTTS and not (ep.tls and ep.tls.alpn):
        return ()
    return ep.tls.alpn if ep.tls and ep.tls.alpn else ("http/1.1",)


def _tls_policy(ep: Endpoint) -> tuple[object, ...]:
    """What a TLS verdict is judged by (``tls.evaluate``): one verdict per distinct policy.

    ``mutual`` is not part of it: the probe presents no client certificate either way.
    """
    if ep.tls is None:
        return ()
    t = ep.tls
    return (t.min_version, t.pin, frozenset(t.pin_sha256), t.interception_tolerated)


def _app_request(ep: Endpoint) -> tuple[str, str, tuple[int, ...]] | None:
    """What the application-answer probe sends for ``ep``: (kind, path, expected statuses).

    Endpoints with the same request on the same name and port get one probe between them.
    """
    if ep.protocol is AppProtocol.MQTTS:
        return ("mqtt", "", ())
    if ep.protocol not in (AppProtocol.HTTPS, AppProtocol.WSS):
        return None
    if _is_tether_service(ep):
        return ("tether", HELLO_PATH, (200,))
    if ep.probe.kind is ProbeKind.HTTPS and ep.probe.path:
        return ("https", ep.probe.path, ep.probe.expect_status)
    if ep.probe.kind is ProbeKind.WEBSOCKET:
        return None  # the upgrade itself is the application answer
    return ("https", "/", ())


class _Stop(Exception):
    """A probe failed; later probes of the same unit would only repeat it."""


class _Run:
    def __init__(self, manifest: Manifest, options: CheckOptions) -> None:
        self.manifest = manifest
        self.options = options
        self.started_at = dt.datetime.now(dt.UTC)
        self.leases = dhcp.read_leases(options.lease_root)
        self.proxy_error: str | None = None
        environ = options.environ if options.environ is not None else os.environ
        if options.proxy is not None:
            self.proxy = options.proxy
        else:
            try:
                self.proxy = ProxySettings.from_environ(environ)
            except ValueError as exc:
                self.proxy = ProxySettings()
                self.proxy_error = str(exc)
        self.resolvers = self._discover_resolvers()
        self.https_dates: list[tuple[str, dt.datetime, float]] = []  # (host, Date, local time)
        self.ntp_answers: list[NtpAnswer] = []
        self.ntp_failures: list[str] = []
        self.portal_signs: list[str] = []
        self._learned_ca: asyncio.Task[tuple[x509.Certificate, ...]] | None = None
        self.completed = 0
        self.total = 0

    # --- discovery ---------------------------------------------------------------------------

    def _discover_resolvers(self) -> list[Resolver]:
        if self.options.resolvers is not None:
            return list(self.options.resolvers)
        found = read_resolv_conf(self.options.resolv_conf)
        if 6 in self.manifest.dns.dhcp_options:
            for lease in self.leases:
                label = f"dhcp {lease.interface}".strip()
                found += [Resolver(a, 53, label) for a in lease.dns_servers]
        for text in self.manifest.dns.fallback_resolvers:
            with contextlib.suppress(ValueError):
                found.append(parse_resolver(text, source="manifest fallback"))
        return dedupe(found)

    def _units(self) -> list[_Unit]:
        """One unit per (name, port, transport, proxy route), naming every endpoint served there."""
        units: list[_Unit] = []
        shared: dict[tuple[str, int, Transport, ProxyURL | None], _Unit] = {}
        for ep in self.manifest.endpoints:
            if self.options.endpoint_ids is not None and ep.id not in self.options.endpoint_ids:
                continue
            if ep.lifecycle is Lifecycle.LEGACY and not self.options.include_legacy:
                continue
            if ep.requirement is Requirement.OPTIONAL and not self.options.include_optional:
                continue
            names = list(ep.examples) if ep.match is MatchMode.SUBDOMAINS else [ep.host]
            if not names or ep.probe.kind is ProbeKind.NONE:
                unit = _Unit([ep], ep.pattern, ep.ports[0].port, ep.ports[0].transport)
                unit.add(
                    Check.DNS,
                    Status.SKIP,
                    "nothing concrete to probe (a wildcard without example names)"
                    if not names
                    else "the manifest asks for no probe of this endpoint",
                    target=ep.pattern,
                )
                units.append(unit)
                continue
            for name in names:
                for port in ep.ports:
                    # Endpoints that reach this name and port by different routes (one through
                    # the proxy, one direct) are different paths: probed apart.
                    proxy = self.proxy.proxy_for(name, port.port) if ep.proxy_ok else None
                    key = (name, port.port, port.transport, proxy)
                    if key in shared:
                        shared[key].endpoints.append(ep)
                    else:
                        shared[key] = _Unit([ep], name, port.port, port.transport)
                        units.append(shared[key])
        return units

    def _tick(self, label: str) -> None:
        self.completed += 1
        if self.options.progress is not None:
            self.options.progress(ProgressEvent(label, self.completed, self.total))

    # --- the run -----------------------------------------------------------------------------

    async def execute(self) -> CheckReport:
        units = self._units()
        extra_ntp = self._extra_ntp_servers()
        self.total = len(units) + len(extra_ntp) + 2  # + proxy, + captive-portal API
        semaphore = asyncio.Semaphore(max(1, self.options.concurrency))

        async def bounded_unit(unit: _Unit) -> None:
            async with semaphore:
                if not unit.results:  # SKIP units come pre-filled
                    try:
                        await self._probe_unit(unit)
                    except Exception as exc:  # a defect in one probe must not hide the others
                        log.exception("probe of %s failed", unit.label)
                        unit.add(
                            Check.APP,
                            Status.FAIL,
                            f"the check itself failed ({type(exc).__name__}: {exc}); please "
                            "report this",
                        )
            self._tick(unit.label)

        async def bounded_ntp(server: tuple[str, int, str]) -> CheckResult:
            async with semaphore:
                result = await self._probe_ntp_server(*server)
            self._tick(f"NTP {server[0]}")
            return result

        proxy_users = [u.label for u in units if not u.results and self._proxy_for(u)]
        proxy_task = asyncio.create_task(self._check_proxy(proxy_users))
        captive_task = asyncio.create_task(self._check_captive_api())
        ntp_tasks = [asyncio.create_task(bounded_ntp(s)) for s in extra_ntp]
        await asyncio.gather(*(bounded_unit(u) for u in units))
        proxy_results = await proxy_task
        self._tick("proxy")
        captive_results = await captive_task
        self._tick("captive portal")
        ntp_results = list(await asyncio.gather(*ntp_tasks))

        results: list[CheckResult] = [*self._anchors_agree(units), *proxy_results]
        for unit in units:
            results += unit.results
        results += self._captive_summary(captive_results)
        results += ntp_results
        results.append(self._time_verdict(units))
        proxy = self.proxy.https_proxy
        return CheckReport(
            manifest_product=self.manifest.product,
            manifest_version=self.manifest.version,
            manifest_publisher=self.manifest.publisher,
            started_at=self.started_at,
            finished_at=dt.datetime.now(dt.UTC),
            host=socket.gethostname(),
            proxy=proxy.redacted() if proxy else None,
            resolvers=tuple(r.label for r in self.resolvers),
            results=tuple(results),
        )

    # --- pinned CA ---------------------------------------------------------------------------

    def _anchors_agree(self, units: Sequence[_Unit]) -> list[CheckResult]:
        """``--ca`` and the manifest's pins must name the same CA; a mismatch is a failure.

        Chains are judged against both (either may be the one a site has right), so without
        this row a wrong ``--ca`` would go unnoticed whenever the pins match.
        """
        cas = self.options.anchors.cas
        pins = {
            digest
            for u in units
            for ep in u.endpoints
            if ep.tls is not None and ep.tls.pin is PinKind.CA
            for digest in ep.tls.pin_sha256
        }
        if not cas or not pins:
            return []
        digests = {spki_sha256(c): c for c in cas}
        if digests.keys() & pins:
            return []
        given = ", ".join(f"'{issuer_label(c.subject)}' ({d[:16]}…)" for d, c in digests.items())
        return [
            CheckResult(
                check=Check.TLS,
                target="--ca",
                status=Status.FAIL,
                finding=f"the CA given with --ca, {given}, is not the CA the manifest pins "
                f"(SPKI SHA-256 {', '.join(sorted(p[:16] + '…' for p in pins))}): one of the "
                "two is wrong",
                fix="pass the platform CA of this deployment with --ca (its key digest is the "
                "manifest's pin), or use the manifest this deployment serves",
            )
        ]

    # --- proxy -------------------------------------------------------------------------------

    async def _check_proxy(self, users: Sequence[str]) -> list[CheckResult]:
        """The proxy itself, when some endpoint would use it (``users``: their labels)."""
        if self.proxy_error is not None:
            return [
                CheckResult(
                    check=Check.PROXY,
                    target="HTTPS_PROXY",
                    status=Status.FAIL,
                    finding=f"the proxy setting cannot be used: {self.proxy_error}",
                    fix="set HTTPS_PROXY to http://[user:password@]proxy-host:port",
                )
            ]
        if self.proxy.ignored:
            return [
                CheckResult(
                    check=Check.PROXY,
                    target="HTTPS_PROXY",
                    status=Status.WARN,
                    finding=self.proxy.ignored,
                    fix="to use that proxy, set HTTPS_PROXY to http://proxy-host:port (the "
                    "agent opens CONNECT tunnels to it in plain HTTP); else unset it",
                )
            ]
        proxy = self.proxy.https_proxy
        if proxy is None:
            return [
                CheckResult(
                    check=Check.PROXY,
                    target="HTTPS_PROXY",
                    status=Status.SKIP,
                    finding="no HTTPS proxy configured: connections go direct",
                )
            ]
        started = time.monotonic()
        target = proxy.redacted()
        details = {"no_proxy": self.proxy.no_proxy} if self.proxy.no_proxy else {}
        if not users:
            why = f"NO_PROXY={self.proxy.no_proxy}" if self.proxy.no_proxy else "no endpoint"
            return [
                CheckResult(
                    check=Check.PROXY,
                    target=target,
                    status=Status.SKIP,
                    finding=f"no endpoint uses the proxy ({why} or not proxy-capable): "
                    "connections go direct, so the proxy was not checked",
                    details=details,
                )
            ]
        details["used_for"] = ", ".join(users)
        try:
            async with asyncio.timeout(self.options.timeout):
                _, writer = await asyncio.open_connection(proxy.host, proxy.port)
        except (OSError, TimeoutError) as exc:
            kind = classify(exc)
            return [
                CheckResult(
                    check=Check.PROXY,
                    target=target,
                    status=Status.FAIL,
                    finding=describe(kind, f"the proxy {target}", timeout=self.options.timeout),
                    fix="check HTTPS_PROXY (host and port) and that this machine may reach the "
                    "proxy",
                    details=details,
                    elapsed_ms=_ms(started),
                )
            ]
        await close(writer)
        return [
            CheckResult(
                check=Check.PROXY,
                target=target,
                status=Status.PASS,
                finding=f"proxy {target} accepts connections"
                + (f"; NO_PROXY={self.proxy.no_proxy}" if self.proxy.no_proxy else ""),
                details=details,
                elapsed_ms=_ms(started),
            )
        ]

    # --- one endpoint ------------------------------------------------------------------------

    async def _probe_unit(self, unit: _Unit) -> None:
        try:
            if unit.transport is Transport.UDP:
                await self._probe_udp(unit)
            else:
                await self._probe_tcp(unit)
        except _Stop:
            pass

    async def _resolve_all(self, unit: _Unit, *, proxied: bool) -> list[str]:
        """DNS through every resolver; returns the addresses the gateway would use."""
        pinned = hosts_file_addresses(unit.name, self.options.hosts_file)
        if pinned:
            unit.add(
                Check.DNS,
                Status.PASS,
                f"{unit.name} → {', '.join(pinned)} from {self.options.hosts_file}, which the "
                "gateway's resolver reads before asking DNS",
                target=f"{unit.name} @ {self.options.hosts_file}",
                details={"addresses": " ".join(pinned)},
            )
            return list(pinned)
        if not self.resolvers:
            unit.add(
                Check.DNS,
                Status.WARN if proxied else Status.FAIL,
                "no resolver configured (resolv.conf empty, none advertised by DHCP)",
                "advertise a DNS server by DHCP (option 6) or configure one on the gateway",
                target=unit.name,
            )
            return []

        async def one(resolver: Resolver) -> tuple[Answer, float]:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.options.timeout):
                    answer = await resolve(unit.name, resolver)
            except TimeoutError:
                answer = Answer(unit.name, resolver, Outcome.TIMEOUT)
            return answer, started

        answers = await asyncio.gather(*(one(r) for r in self.resolvers))
        working = [a.resolver.label for a, _ in answers if a.outcome is Outcome.OK]
        chosen: list[str] = []
        for answer, started in answers:
            status, finding, fix = _judge_dns(answer, self.options.timeout)
            if status is Status.FAIL and working and answer.outcome in _NEXT_SERVER:
                # The resolver library moves on to the next server: slower, not broken.
                status = Status.WARN
                finding += (
                    f"; {working[0]} answered, so the gateway resolves through it after a delay"
                )
            if proxied and status is Status.FAIL:
                status = Status.WARN
                finding += " (the proxy resolves names for proxied connections)"
            unit.add(
                Check.DNS,
                status,
                finding,
                fix,
                target=f"{unit.name} @ {answer.resolver.label}",
                details={"addresses": " ".join(answer.addresses)} if answer.addresses else None,
                started=started,
            )
            if answer.outcome is Outcome.OK and not chosen:
                chosen = list(answer.addresses)
        return chosen

    def _routes(
        self, unit: _Unit, addresses: Sequence[str], eps: Sequence[Endpoint]
    ) -> dict[int, list[str]]:
        """Route rows per IP family; returns the addresses per family that have a route."""
        routed: dict[int, list[str]] = {}
        for fam in (4, 6):
            of_family = [a for a in addresses if family(a) == fam]
            if not of_family:
                continue
            source = route_source(of_family[0])
            target = f"{unit.name} (IPv{fam})"
            if source is None:
                if fam == 6:
                    unit.add(
                        Check.ROUTE,
                        Status.SKIP,
                        "no IPv6 route on this machine: IPv6 is not used here",
                        target=target,
                        endpoints=eps,
                    )
                else:
                    unit.add(
                        Check.ROUTE,
                        Status.FAIL,
                        f"no IPv4 route to {of_family[0]}",
                        "give the gateway a default route (DHCP option 3, router)",
                        target=target,
                        endpoints=eps,
                    )
                continue
            unit.add(
                Check.ROUTE,
                Status.PASS,
                f"route to {of_family[0]} from {source}",
                target=target,
                endpoints=eps,
            )
            routed[fam] = of_family
        return routed

    async def _connect(
        self, unit: _Unit, address: str | None, proxy: ProxyURL | None
    ) -> Connection:
        return await open_path(
            unit.name, unit.port, address=address, proxy=proxy, timeout=self.options.timeout
        )

    async def _open_direct(
        self, unit: _Unit, routed: dict[int, list[str]], eps: Sequence[Endpoint]
    ) -> Connection:
        """TCP per family with a route; returns a working connection (IPv6 preferred)."""
        opened: dict[int, Connection] = {}
        for fam in sorted(routed, reverse=True):
            started = time.monotonic()
            failures: list[ConnectError] = []
            for address in routed[fam][:2]:
                try:
                    opened[fam] = await self._connect(unit, address, None)
                    break
                except ConnectError as exc:
                    failures.append(exc)
            target = f"{unit.name}:{unit.port} (IPv{fam})"
            if fam in opened:
                address = opened[fam].address or ""
                unit.add(
                    Check.TCP,
                    Status.PASS,
                    f"TCP {unit.port} to {address} open",
                    target=target,
                    endpoints=eps,
                    started=started,
                )
                continue
            failure = failures[-1]
            what = f"TCP {unit.port} to {routed[fam][0]}"
            finding = describe(failure.kind, what, timeout=self.options.timeout)
            direct_only = [ep.id for ep in eps if not ep.proxy_ok]
            if self.proxy.https_proxy is not None and direct_only:
                finding += (
                    f" ({', '.join(direct_only)} cannot use the proxy: it must be allowed directly)"
                )
            unit.add(
                Check.TCP,
                Status.FAIL,
                finding,
                f"allow outbound TCP {unit.port} from the gateway to {unit.name}",
                target=target,
                endpoints=eps,
                firewall=True,
                details={"kind": failure.kind.value, "error": failure.detail},
                started=started,
            )
        if not opened:
            raise _Stop
        best = max(opened)
        for fam, conn in opened.items():
            if fam != best:
                await conn.close()
        if 6 in routed and 6 not in opened and 4 in opened:
            # The IPv6 failure is only a warning when IPv4 works: rewrite it as such.
            for i, result in enumerate(unit.results):
                if result.check is Check.TCP and result.target.endswith("(IPv6)"):
                    unit.results[i] = _replace(
                        result,
                        status=Status.WARN,
                        finding=result.finding + "; IPv4 works, so the gateway falls back late",
                        fix=f"allow outbound TCP {unit.port} over IPv6 to {unit.name} too, or "
                        "remove the IPv6 default route",
                    )
        return opened[best]

    async def _open_proxied(
        self, unit: _Unit, proxy: ProxyURL, eps: Sequence[Endpoint]
    ) -> Connection:
        started = time.monotonic()
        target = f"{unit.name}:{unit.port} via {proxy.redacted()}"
        try:
            conn = await self._connect(unit, None, proxy)
        except ConnectError as exc:
            unit.add(
                Check.PROXY,
                Status.FAIL,
                describe(exc.kind, f"the proxy {proxy.redacted()}", timeout=self.options.timeout),
                "check HTTPS_PROXY (host and port) and that the gateway may reach the proxy",
                target=target,
                endpoints=eps,
                started=started,
            )
            raise _Stop from None
        except ProxyError as exc:
            finding, fix, firewall = _judge_proxy_error(exc, proxy, unit.name, unit.port)
            unit.add(
                Check.PROXY,
                Status.FAIL,
                finding,
                fix,
                target=target,
                endpoints=eps,
                firewall=firewall,
                details={"status": str(exc.status)},
                started=started,
            )
            raise _Stop from None
        unit.add(
            Check.PROXY,
            Status.PASS,
            f"the proxy opened a tunnel (CONNECT {_authority(unit.name, unit.port)})",
            target=target,
            endpoints=eps,
            started=started,
        )
        return conn

    def _proxy_for(self, unit: _Unit) -> ProxyURL | None:
        if not unit.endpoint.proxy_ok:
            return None
        return self.proxy.proxy_for(unit.name, unit.port)

    async def _probe_tcp(self, unit: _Unit) -> None:
        proxy = self._proxy_for(unit)
        addresses = await self._resolve_all(unit, proxied=proxy is not None)
        reaching = [ep for ep in unit.endpoints if ep.probe.kind is not ProbeKind.DNS]
        if not reaching:
            return
        if proxy is None:
            if not addresses:
                raise _Stop
            routed = self._routes(unit, addresses, reaching)
            conn = await self._open_direct(unit, routed, reaching)
        else:
            conn = await self._open_proxied(unit, proxy, reaching)
        address = conn.address
        secured = [ep for ep in reaching if ep.probe.kind is not ProbeKind.TCP and ep.tls]
        openvpn = [
            ep for ep in reaching if ep.protocol is AppProtocol.OPENVPN_TCP and ep not in secured
        ]
        if openvpn:
            unit.add(
                Check.TLS,
                Status.SKIP,
                "OpenVPN framing: TLS runs inside it and cannot be probed with a plain "
                "handshake; DPI firewalls that identify applications often block it",
                target=_authority(unit.name, unit.port),
                endpoints=openvpn,
            )
        answered: list[Endpoint] = []
        spare: Connection | None = conn  # the path's connection, for the first handshake
        try:
            for alpn, eps in _grouped(secured, _alpn).items():
                answered += await self._secured(unit, eps, alpn, proxy, address, spare)
                spare = None
        finally:
            if spare is not None:
                await spare.close()
        upgrading = [ep for ep in answered if ep.probe.kind is ProbeKind.WEBSOCKET]
        for same in _grouped(upgrading, lambda ep: (self._ws_path(ep), _is_link(ep))).values():
            await self._upgrade(unit, same, proxy, address)

    async def _secured(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        alpn: tuple[str, ...],
        proxy: ProxyURL | None,
        address: str | None,
        conn: Connection | None,
    ) -> list[Endpoint]:
        """TLS once, judged per TLS policy, then each distinct application answer once.

        ``conn`` is the path's open connection, or None to open one. Returns the endpoints
        whose TLS and application answer passed (the ones a WebSocket probe may follow).
        """
        if conn is None:
            started = time.monotonic()
            try:
                conn = await self._connect(unit, address, proxy)
            except (ConnectError, ProxyError) as exc:
                unit.add(
                    Check.TLS,
                    Status.FAIL,
                    f"a connection for the TLS handshake failed: {_reason(exc)}",
                    started=started,
                    endpoints=eps,
                )
                return []
        spare: Connection | None = conn  # after the handshake: for the first request
        try:
            handshake = await self._tls(unit, conn, eps, alpn)
            if handshake is None:
                return []
            session, trusted = handshake
            answered: list[Endpoint] = []
            for request_kind, same in _grouped(trusted, _app_request).items():
                if request_kind is None:
                    answered += same
                    continue
                if spare is not None:
                    use, spare = spare, None
                    try:
                        ok = await self._app_answer(unit, use, session, same)
                    finally:
                        await use.close()
                else:
                    ok = await self._app_answer_fresh(unit, same, alpn, proxy, address)
                if ok:
                    answered += same
            return answered
        finally:
            if spare is not None:
                await spare.close()

    async def _app_answer_fresh(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        alpn: tuple[str, ...],
        proxy: ProxyURL | None,
        address: str | None,
    ) -> bool:
        started = time.monotonic()
        try:
            conn, session = await self._fresh(unit, proxy, address, alpn)
        except (ConnectError, ProxyError, TlsError, OSError, TimeoutError) as exc:
            unit.add(
                Check.APP,
                Status.FAIL,
                f"a further connection for the application answer failed: {_reason(exc)}",
                started=started,
                endpoints=eps,
            )
            return False
        try:
            return await self._app_answer(unit, conn, session, eps)
        finally:
            await conn.close()

    async def _upgrade(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        proxy: ProxyURL | None,
        address: str | None,
    ) -> None:
        """WebSocket upgrade, then the long-poll fallback for the link, then idle survival."""
        link = _is_link(eps[0])
        ws = await self._websocket(unit, eps, proxy, address)
        poll_ok = await self._long_poll(unit, eps, proxy, address) if link else None
        if ws.status is Status.FAIL and poll_ok:
            unit.results[unit.results.index(ws)] = _replace(
                ws,
                status=Status.WARN,
                finding=ws.finding + "; the long-poll fallback works (slower)",
            )
        ws_ok = ws.status is Status.PASS
        if ws_ok and self.options.idle_survival > 0:
            await self._idle(unit, eps, proxy, address)

    async def _tls(
        self, unit: _Unit, conn: Connection, eps: Sequence[Endpoint], alpn: tuple[str, ...]
    ) -> tuple[TlsSession, list[Endpoint]] | None:
        """One handshake, one verdict per TLS policy among ``eps``.

        Returns the session and the endpoints whose verdict did not fail; None when the
        handshake itself failed.
        """
        started = time.monotonic()
        target = _authority(unit.name, unit.port)
        try:
            async with asyncio.timeout(self.options.timeout):
                session = await start_tls(conn.writer, unit.name, alpn=alpn)
        except (TlsError, TimeoutError) as exc:
            kind = exc.kind if isinstance(exc, TlsError) else "timeout"
            detail = exc.detail if isinstance(exc, TlsError) else ""
            finding = {
                "reset": f"TLS handshake with {unit.name} reset: a DPI or SNI filter blocks "
                "the name",
                "timeout": f"TLS handshake with {unit.name} stalled for "
                f"{self.options.timeout:g} s: a middlebox holds it",
                "closed": f"TLS handshake with {unit.name} closed by the peer: a filter drops "
                "the name, or the server does not speak TLS on this port",
            }.get(kind, f"TLS handshake with {unit.name} failed: {detail}")
            unit.add(
                Check.TLS,
                Status.FAIL,
                finding,
                f"allow TLS to {unit.name} on TCP {unit.port} in the firewall's URL/SNI filter "
                "(and exempt it from TLS inspection)",
                target=target,
                firewall=True,
                details={"kind": kind, "error": detail},
                started=started,
                endpoints=eps,
            )
            return None
        now = dt.datetime.fromtimestamp(self.options.clock(), dt.UTC)
        trusted: list[Endpoint] = []
        for same in _grouped(eps, _tls_policy).values():
            expectation = same[0].tls
            anchors, learned = self.options.anchors, False
            if (
                expectation is not None
                and expectation.pin is PinKind.CA
                and not expectation.pin_sha256
                and not anchors.cas
            ):
                cas = await self._learned_anchors()
                if cas:
                    anchors, learned = TrustAnchors(cas), True
            verdict = evaluate(session, unit.name, expectation, anchors, now=now)
            finding = verdict.finding
            if learned and verdict.status is Status.PASS:
                finding += " (the CA the cloud publishes at EST cacerts; pass --ca to pin it)"
            unit.add(
                Check.TLS,
                verdict.status,
                finding,
                verdict.fix,
                target=target,
                firewall=verdict.interception,
                details=verdict.details,
                started=started,
                endpoints=same,
            )
            if verdict.status is not Status.FAIL:
                trusted += same
        return session, trusted

    async def _learned_anchors(self) -> tuple[x509.Certificate, ...]:
        """The platform CA as the cloud publishes it (EST ``cacerts``), fetched once per run.

        Used only when the manifest pins a CA without publishing its digest and no ``--ca`` was
        given. An intercepting middlebox re-signs the TLS session but passes the body through,
        so a chain that does not end at this CA is still recognised as interception.
        """
        if self._learned_ca is None:
            self._learned_ca = asyncio.create_task(self._fetch_est_cacerts())
        return await asyncio.shield(self._learned_ca)

    async def _fetch_est_cacerts(self) -> tuple[x509.Certificate, ...]:
        ep = next(
            (e for e in self.manifest.endpoints if (e.probe.path or "") == EST_CACERTS_PATH),
            None,
        )
        if ep is None or ep.match is MatchMode.SUBDOMAINS:
            return ()
        port = next((p.port for p in ep.ports if p.transport is Transport.TCP), None)
        if port is None:
            return ()
        unit = _Unit([ep], ep.host, port, Transport.TCP)
        proxy = self._proxy_for(unit)
        address: str | None = None
        if proxy is None:
            for resolver in self.resolvers:
                try:
                    async with asyncio.timeout(self.options.timeout):
                        answer = await resolve(ep.host, resolver)
                except TimeoutError:
                    continue
                if answer.addresses:
                    address = answer.addresses[0]
                    break
            if address is None:
                return ()
        try:
            conn, _ = await self._fresh(unit, proxy, address)
        except (ConnectError, ProxyError, TlsError, OSError, TimeoutError):
            return ()
        try:
            async with asyncio.timeout(self.options.timeout):
                response = await request(
                    conn.reader,
                    conn.writer,
                    "GET",
                    host_header(ep.host, port),
                    EST_CACERTS_PATH,
                    headers={"Accept": "application/pkcs7-mime"},
                )
        except (HttpProtocolError, OSError, TimeoutError):
            return ()
        finally:
            await conn.close()
        if response.status != 200:
            return ()
        try:
            der = base64.b64decode(b"".join(response.body.split()), validate=True)
            return tuple(pkcs7.load_der_pkcs7_certificates(der))
        except ValueError:  # bad base64 (binascii.Error) or not PKCS#7
            return ()

    async def _app_answer(
        self, unit: _Unit, conn: Connection, session: TlsSession, eps: Sequence[Endpoint]
    ) -> bool:
        """The application answer ``eps`` share (one request), over ``conn``; True if it came."""
        ep = eps[0]
        host = host_header(unit.name, unit.port)
        target = _authority(unit.name, unit.port)
        started = time.monotonic()
        if ep.protocol is AppProtocol.MQTTS:
            try:
                async with asyncio.timeout(self.options.timeout):
                    code = await mqtt_connect(conn.reader, conn.writer)
            except (MqttError, OSError, TimeoutError) as exc:
                unit.add(
                    Check.APP,
                    Status.FAIL,
                    f"no MQTT answer from {unit.name}: {_reason(exc)}",
                    "check that the firewall passes MQTT over TLS to this name unaltered",
                    target=target,
                    firewall=True,
                    started=started,
                    endpoints=eps,
                )
                return False
            meaning = CONNACK_CODES.get(code, f"code {code}")
            unit.add(
                Check.APP,
                Status.PASS,
                f"an MQTT broker answered (CONNACK: {meaning})",
                target=target,
                started=started,
                endpoints=eps,
            )
            return True
        if ep.protocol not in (AppProtocol.HTTPS, AppProtocol.WSS):
            return True
        if session.alpn not in (None, "http/1.1"):
            unit.add(
                Check.APP,
                Status.PASS,
                f"the server selected ALPN {session.alpn}",
                target=target,
                started=started,
                endpoints=eps,
            )
            return True
        tether_service = _is_tether_service(ep)
        path: str
        expect: tuple[int, ...]
        if tether_service:
            path, expect = HELLO_PATH, (200,)
        elif ep.probe.kind is ProbeKind.HTTPS and ep.probe.path:
            path, expect = ep.probe.path, ep.probe.expect_status
        elif ep.probe.kind is ProbeKind.WEBSOCKET:
            return True  # the upgrade itself is the application answer
        else:
            path, expect = "/", ()
        try:
            async with asyncio.timeout(self.options.timeout):
                response = await request(conn.reader, conn.writer, "GET", host, path)
        except (HttpProtocolError, OSError, TimeoutError) as exc:
            unit.add(
                Check.APP,
                Status.FAIL,
                f"no HTTP answer from {unit.name}{path}: {_reason(exc)} (a middlebox answers "
                "the handshake but not the service)",
                f"check that nothing between the gateway and {unit.name} terminates or filters "
                "its HTTPS traffic",
                target=target,
                firewall=True,
                started=started,
                endpoints=eps,
            )
            return False
        self._note_date(unit.name, response)
        portal = captive_mod.looks_like_portal(response, unit.name)
        if portal is not None:
            self.portal_signs.append(f"{unit.name}: {portal}")
        details = {"status": str(response.status), "path": path}
        if tether_service:
            service = hello_service(response)
            if response.status == 200 and service == HELLO_SERVICE:
                unit.add(
                    Check.APP,
                    Status.PASS,
                    f"the tether service answered {path}",
                    target=target,
                    details=details,
                    started=started,
                    endpoints=eps,
                )
                return True
            finding = portal or (
                f"{path} answered {response.status_line}"
                + (f" from service {service!r}" if service else "")
                + ", not the tether service"
            )
            unit.add(
                Check.APP,
                Status.FAIL,
                finding,
                f"check that {unit.name} points at the tether cloud and that no proxy or portal "
                "answers in its place",
                target=target,
                details=details,
                started=started,
                endpoints=eps,
            )
            return False
        if portal is None and (not expect or response.status in expect):
            unit.add(
                Check.APP,
                Status.PASS,
                f"the service answered {path} with {response.status_line}",
                target=target,
                details=details,
                started=started,
                endpoints=eps,
            )
            return True
        unit.add(
            Check.APP,
            Status.FAIL,
            portal
            or f"{path} answered {response.status_line}, expected "
            + " or ".join(str(s) for s in expect),
            f"check that {unit.name} reaches the vendor's service and nothing answers in its place",
            target=target,
            details=details,
            started=started,
            endpoints=eps,
        )
        return False

    def _note_date(self, host: str, response: HttpResponse) -> None:
        date = parse_http_date(response.headers.get("date"))
        if date is not None:
            self.https_dates.append((host, date, self.options.clock()))

    async def _fresh(
        self,
        unit: _Unit,
        proxy: ProxyURL | None,
        address: str | None,
        alpn: tuple[str, ...] = ("http/1.1",),
    ) -> tuple[Connection, TlsSession]:
        conn = await self._connect(unit, address, proxy)
        try:
            async with asyncio.timeout(self.options.timeout):
                session = await start_tls(conn.writer, unit.name, alpn=alpn)
        except BaseException:
            await conn.close()
            raise
        return conn, session

    def _ws_path(self, ep: Endpoint) -> str:
        path = ep.probe.path or WEBSOCKET_PATH
        if _is_tether_service(ep):
            path += ("&" if "?" in path else "?") + PROBE_QUERY
        return path

    async def _websocket(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        proxy: ProxyURL | None,
        address: str | None,
    ) -> CheckResult:
        """The WebSocket upgrade ``eps`` share; its result row."""
        ep = eps[0]
        path = self._ws_path(ep)
        target = f"{_authority(unit.name, unit.port)}{path}"
        started = time.monotonic()
        host = host_header(unit.name, unit.port)
        check = Check.WEBSOCKET if _is_tether_service(ep) else Check.APP
        try:
            conn, _ = await self._fresh(unit, proxy, address)
        except (ConnectError, ProxyError, TlsError, OSError, TimeoutError) as exc:
            return unit.add(
                check,
                Status.FAIL,
                f"a second connection for the WebSocket failed: {_reason(exc)}",
                target=target,
                endpoints=eps,
                started=started,
            )
        try:
            async with asyncio.timeout(self.options.timeout):
                response = await websocket_upgrade(conn.reader, conn.writer, host, path)
                if response.status == 101:
                    await websocket_ping(conn.reader, conn.writer)
                    conn.writer.write(websocket_close_frame())
        except (HttpProtocolError, WebSocketClosed, OSError, TimeoutError) as exc:
            return unit.add(
                check,
                Status.FAIL,
                f"the WebSocket upgrade on {path} failed: {_reason(exc)}",
                f"allow WebSocket upgrades to {unit.name} (the proxy or firewall must pass "
                "'Upgrade: websocket' and the frames after it)",
                target=target,
                endpoints=eps,
                firewall=True,
                started=started,
            )
        finally:
            await conn.close()
        if response.status == 101:
            return unit.add(
                check,
                Status.PASS,
                "WebSocket upgrade answered 101 and a ping came back",
                target=target,
                endpoints=eps,
                started=started,
            )
        expected = [s for s in ep.probe.expect_status if s != 101]
        if response.status in expected:
            status = Status.WARN if _is_tether_service(ep) else Status.PASS
            return unit.add(
                check,
                status,
                f"the upgrade request reached the service ({response.status_line}) but did not "
                "switch protocols, so WebSocket frames are not proven",
                "update the cloud so it answers the WebSocket probe (GET /link?probe=1) with 101"
                if status is Status.WARN
                else "",
                target=target,
                endpoints=eps,
                started=started,
            )
        return unit.add(
            check,
            Status.FAIL,
            f"WebSocket upgrade refused: {response.status_line} instead of 101 Switching "
            "Protocols (a proxy or load balancer drops the Upgrade header)",
            f"allow WebSocket upgrades to {unit.name}: the proxy/load balancer must forward "
            "'Upgrade: websocket' and 'Connection: Upgrade'",
            target=target,
            endpoints=eps,
            firewall=True,
            details={"status": str(response.status)},
            started=started,
        )

    async def _long_poll(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        proxy: ProxyURL | None,
        address: str | None,
    ) -> bool:
        wait = self.options.long_poll_wait
        target = f"{_authority(unit.name, unit.port)}/link/poll"
        started = time.monotonic()
        host = host_header(unit.name, unit.port)
        try:
            conn, _ = await self._fresh(unit, proxy, address)
        except (ConnectError, ProxyError, TlsError, OSError, TimeoutError) as exc:
            unit.add(
                Check.LONG_POLL,
                Status.FAIL,
                f"a connection for the long-poll failed: {_reason(exc)}",
                target=target,
                endpoints=eps,
                started=started,
            )
            return False
        sent = time.monotonic()
        try:
            async with asyncio.timeout(wait + self.options.timeout):
                response = await long_poll(conn.reader, conn.writer, host, wait=wait)
        except (HttpProtocolError, OSError, TimeoutError) as exc:
            unit.add(
                Check.LONG_POLL,
                Status.FAIL,
                f"a request to be held {wait:g} s was cut after {time.monotonic() - sent:.1f} s: "
                f"{_reason(exc)}",
                f"raise the proxy/firewall response (read/idle) timeout for {unit.name} above "
                f"{wait:g} s: the agent holds its long-polls that long",
                target=target,
                endpoints=eps,
                firewall=True,
                started=started,
                details={"asked_s": f"{wait:g}"},
            )
            return False
        finally:
            await conn.close()
        held = time.monotonic() - sent
        details = {"asked_s": f"{wait:g}", "held_s": f"{held:.1f}"}
        if not 200 <= response.status < 300:
            unit.add(
                Check.LONG_POLL,
                Status.FAIL,
                f"the long-poll answered {response.status_line}",
                f"check that requests to {unit.name}/link/poll reach the tether cloud",
                target=target,
                endpoints=eps,
                started=started,
                details=details,
            )
            return False
        if held < wait - 1:
            # The server answered early (the cloud caps how long it holds the probe): paths
            # that cut held requests between the two durations are not proven either way.
            unit.add(
                Check.LONG_POLL,
                Status.WARN,
                f"a request held {held:.1f} s was answered ({response.status_line}), but the "
                f"server answered before the {wait:g} s asked for, so holds up to {wait:g} s "
                "(the agent's) are not proven",
                "update the cloud so its long-poll probe holds as long as asked, or shorten the "
                "agent's longpoll_wait (and --long-poll-hold) to what was proven",
                target=target,
                endpoints=eps,
                started=started,
                details=details,
            )
            return True
        unit.add(
            Check.LONG_POLL,
            Status.PASS,
            f"a request held {held:.1f} s was answered ({response.status_line})",
            target=target,
            endpoints=eps,
            started=started,
            details=details,
        )
        return True

    async def _idle(
        self,
        unit: _Unit,
        eps: Sequence[Endpoint],
        proxy: ProxyURL | None,
        address: str | None,
    ) -> None:
        idle = self.options.idle_survival
        path = self._ws_path(eps[0])
        target = f"{_authority(unit.name, unit.port)} idle {idle:g} s"
        started = time.monotonic()
        host = host_header(unit.name, unit.port)
        try:
            conn, _ = await self._fresh(unit, proxy, address)
        except (ConnectError, ProxyError, TlsError, OSError, TimeoutError) as exc:
            unit.add(
                Check.IDLE,
                Status.WARN,
                f"could not open the idle probe: {_reason(exc)}",
                target=target,
                endpoints=eps,
            )
            return
        try:
            async with asyncio.timeout(self.options.timeout):
                response = await websocket_upgrade(conn.reader, conn.writer, host, path)
            if response.status != 101:
                unit.add(
                    Check.IDLE,
                    Status.SKIP,
                    f"no WebSocket to hold idle ({response.status_line})",
                    target=target,
                    endpoints=eps,
                )
                return
            await asyncio.sleep(idle)
            async with asyncio.timeout(self.options.timeout):
                await websocket_ping(conn.reader, conn.writer)
                conn.writer.write(websocket_close_frame())
        except (HttpProtocolError, WebSocketClosed, OSError, TimeoutError) as exc:
            unit.add(
                Check.IDLE,
                Status.WARN,
                f"a link idle for {idle:g} s was cut ({_reason(exc)}): the path drops idle "
                "connections sooner",
                f"raise the idle timeout for TCP {unit.port} to {unit.name} on the firewall or "
                f"proxy above {idle:g} s, or keep the agent's heartbeat interval below it",
                target=target,
                endpoints=eps,
                firewall=True,
                started=started,
            )
            return
        finally:
            await conn.close()
        unit.add(
            Check.IDLE,
            Status.PASS,
            f"a link idle for {idle:g} s survived (a ping came back)",
            target=target,
            endpoints=eps,
            started=started,
        )

    async def _probe_udp(self, unit: _Unit) -> None:
        addresses = await self._resolve_all(unit, proxied=False)
        reaching = [ep for ep in unit.endpoints if ep.probe.kind is not ProbeKind.DNS]
        if not reaching or not addresses:
            return
        routed = self._routes(unit, addresses, reaching)
        ntp = [ep for ep in reaching if ep.protocol is AppProtocol.NTP]
        for protocol, same in _grouped(
            [ep for ep in reaching if ep.protocol is not AppProtocol.NTP], lambda ep: ep.protocol
        ).items():
            unit.add(
                Check.TCP,
                Status.SKIP,
                f"UDP {unit.port} cannot be proven without speaking {protocol.value}",
                target=_authority(unit.name, unit.port),
                endpoints=same,
            )
        if not ntp:
            return
        for fam in sorted(routed):
            address = routed[fam][0]
            result = await self._ntp_result(
                address, unit.port, f"{unit.name} (IPv{fam})", endpoints=tuple(e.id for e in ntp)
            )
            unit.results.append(result)

    # --- time --------------------------------------------------------------------------------

    def _extra_ntp_servers(self) -> list[tuple[str, int, str]]:
        servers: list[tuple[str, int, str]] = []
        if 42 in self.manifest.time.dhcp_options:
            for lease in self.leases:
                servers += [(a, 123, "DHCP") for a in lease.ntp_servers]
        for text in self.options.ntp_servers:
            host, port = text, 123
            if text.count(":") == 1:
                host, _, port_text = text.partition(":")
                port = int(port_text)
            servers.append((host, port, "configured"))
        return list(dict.fromkeys(servers))

    async def _probe_ntp_server(self, host: str, port: int, source: str) -> CheckResult:
        return await self._ntp_result(host, port, f"{_authority(host, port)} ({source})")

    async def _ntp_result(
        self, address: str, port: int, target: str, *, endpoints: tuple[str, ...] = ()
    ) -> CheckResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.options.timeout):
                answer = await sntp_query(address, port)
        except (NtpError, OSError, TimeoutError) as exc:
            self.ntp_failures.append(target)
            reason = (
                f"no answer in {self.options.timeout:g} s (UDP 123 dropped)"
                if isinstance(exc, TimeoutError)
                else _reason(exc)
            )
            return CheckResult(
                check=Check.NTP,
                target=target,
                status=Status.WARN,
                finding=f"NTP to {_authority(address, port)}: {reason}; time must come from "
                "another source",
                fix=f"allow UDP {port} from the gateway to {address}",
                endpoint=endpoints[0] if endpoints else None,
                endpoints=endpoints,
                firewall=bool(endpoints),
                elapsed_ms=_ms(started),
            )
        self.ntp_answers.append(answer)
        return CheckResult(
            check=Check.NTP,
            target=target,
            status=Status.PASS,
            finding=f"NTP answers: clock offset {answer.offset:+.3f} s, stratum {answer.stratum}",
            endpoint=endpoints[0] if endpoints else None,
            endpoints=endpoints,
            details={"offset": f"{answer.offset:.6f}", "delay": f"{answer.delay:.6f}"},
            elapsed_ms=_ms(started),
        )

    def _time_verdict(self, units: Sequence[_Unit]) -> CheckResult:
        local = self.options.clock()
        local_text = dt.datetime.fromtimestamp(local, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        build = dt.datetime.fromtimestamp(self.options.build_time, dt.UTC)
        if local < self.options.build_time:
            return CheckResult(
                check=Check.TIME,
                target="clock",
                status=Status.FAIL,
                finding=f"the clock reads {local_text}, before this software was built "
                f"({build:%Y-%m-%d}): certificate checks will fail",
                fix="set the clock, and allow NTP (UDP 123) or HTTPS to the cloud so the gateway "
                "can keep it right",
            )
        source = ""
        offset: float | None = None
        if self.ntp_answers:
            best = min(self.ntp_answers, key=lambda a: a.delay)
            offset, source = best.offset, f"NTP {best.server}"
        elif self.https_dates and self.manifest.time.https_date_fallback:
            allowed = self.manifest.time.https_date_hosts
            dated = [d for d in self.https_dates if not allowed or d[0] in allowed]
            if dated:
                host, date, seen = dated[0]
                offset, source = date.timestamp() - seen, f"the HTTPS Date of {host}"
        if offset is None:
            finding, fix = self._no_time_source(units)
            return CheckResult(
                check=Check.TIME,
                target="clock",
                status=Status.WARN,
                finding=f"{finding}; the clock reads {local_text} and cannot be verified",
                fix=fix,
            )
        note = " (NTP blocked)" if self.ntp_failures and not self.ntp_answers else ""
        if abs(offset) > MAX_OFFSET:
            return CheckResult(
                check=Check.TIME,
                target="clock",
                status=Status.WARN,
                finding=f"the clock is off by {offset:+.0f} s according to {source}{note}",
                fix="the gateway steps its clock from that source; on this machine, enable time "
                "synchronisation",
                details={"offset": f"{offset:.3f}", "source": source},
            )
        # An HTTP Date has one-second resolution: do not claim more.
        within = f"{abs(offset):.3f} s" if self.ntp_answers else f"{max(1, round(abs(offset)))} s"
        return CheckResult(
            check=Check.TIME,
            target="clock",
            status=Status.PASS,
            finding=f"clock within {within} of {source}{note}",
            details={"offset": f"{offset:.3f}", "source": source},
        )

    def _no_time_source(self, units: Sequence[_Unit]) -> tuple[str, str]:
        """(finding, fix) when no time source answered: which sources there were, and why not.

        The sources are the NTP servers asked (DHCP's, the manifest's, ``--ntp``) and, when the
        manifest allows it, the ``Date`` header of its HTTPS answers; the fix names the one
        that failed, not one that does not exist.
        """
        time_policy = self.manifest.time
        if self.ntp_failures:
            ntp = f"NTP went unanswered ({', '.join(self.ntp_failures)})"
            ntp_fix = "allow NTP (UDP 123) to " + ", ".join(
                dict.fromkeys(t.split(" ")[0] for t in self.ntp_failures)
            )
        elif ntp_units := [
            u for u in units if any(ep.protocol is AppProtocol.NTP for ep in u.endpoints)
        ]:
            names = ", ".join(dict.fromkeys(u.name for u in ntp_units))
            failed = next((f for u in ntp_units if (f := u.first_failure())), None)
            ntp = f"the NTP servers the manifest lists ({names}) were not asked" + (
                f" ({_STEP_NAMES.get(failed.check, failed.check.value)} failed)" if failed else ""
            )
            ntp_fix = failed.fix if failed else ""
        else:
            ntp = (
                "no NTP server to ask (the manifest lists none"
                + (", DHCP advertised none" if 42 in time_policy.dhcp_options else "")
                + ")"
            )
            ntp_fix = ""
        if not time_policy.https_date_fallback:
            return (
                f"{ntp}, and the manifest does not take the time from an HTTPS Date header",
                ntp_fix or "give the gateway an NTP server (DHCP option 42)",
            )
        allowed = time_policy.https_date_hosts
        dating = [
            u
            for u in units
            if (u.name in allowed if allowed else any(ep.tls for ep in u.endpoints))
        ]
        hosts = ", ".join(dict.fromkeys(u.name for u in dating)) or ", ".join(allowed)
        failures = [f for u in dating if (f := u.first_failure()) is not None]
        compared = f"the clock could only be compared with the HTTPS Date header of {hosts}"
        if failures:
            first = failures[0]
            why = _STEP_NAMES.get(first.check, first.check.value)
            fix = first.fix or f"make {first.target} reachable"
            also = f"; or {ntp_fix}" if ntp_fix else ""
            return (
                f"{ntp}: {compared}, and no HTTPS answer came ({why} failed: {first.finding})",
                f"{fix} (the gateway reads the time from its HTTPS answers){also}",
            )
        return (
            f"{ntp}: {compared}, and no HTTPS answer carried a Date header",
            ntp_fix or "give the gateway an NTP server (DHCP option 42)",
        )

    # --- captive portal ----------------------------------------------------------------------

    async def _check_captive_api(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        for url in dict.fromkeys(lease.captive_portal for lease in self.leases):
            if url:
                results.append(await self._captive_api(url))
        return results

    async def _captive_api(self, url: str) -> CheckResult:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.options.timeout):
                conn = await open_path(
                    host, port, address=None, proxy=None, timeout=self.options.timeout
                )
                try:
                    if parts.scheme == "https":
                        await start_tls(conn.writer, host, alpn=("http/1.1",))
                    response = await request(
                        conn.reader,
                        conn.writer,
                        "GET",
                        host_header(host, port),
                        path,
                        headers={"Accept": "application/captive+json"},
                    )
                finally:
                    await conn.close()
        except (ConnectError, TlsError, HttpProtocolError, OSError, TimeoutError, ssl.SSLError):
            return CheckResult(
                check=Check.CAPTIVE,
                target=url,
                status=Status.WARN,
                finding=f"DHCP advertises a captive-portal API at {url} (option 114) that does "
                "not answer",
                fix="ask the network team whether this network needs a portal login",
                elapsed_ms=_ms(started),
            )
        state = captive_mod.parse_captive_api(response.body)
        if state.captive:
            portal = state.user_portal_url or url
            return CheckResult(
                check=Check.CAPTIVE,
                target=url,
                status=Status.FAIL,
                finding=f"captive portal: the network requires a login at {portal}",
                fix="ask the network team to exempt the gateway (by MAC address) from the portal",
                elapsed_ms=_ms(started),
            )
        return CheckResult(
            check=Check.CAPTIVE,
            target=url,
            status=Status.PASS if state.captive is False else Status.WARN,
            finding="the captive-portal API says this network is open"
            if state.captive is False
            else f"the captive-portal API at {url} gave an answer that is not RFC 8908 JSON",
            elapsed_ms=_ms(started),
        )

    def _captive_summary(self, api_results: list[CheckResult]) -> list[CheckResult]:
        results = list(api_results)
        if self.portal_signs:
            results.append(
                CheckResult(
                    check=Check.CAPTIVE,
                    target="answers",
                    status=Status.FAIL,
                    finding="a portal or block page answers in the service's place: "
                    + "; ".join(self.portal_signs),
                    fix="log in to the portal or ask the network team to exempt the gateway "
                    "(by MAC address) from it",
                )
            )
        elif not results:
            results.append(
                CheckResult(
                    check=Check.CAPTIVE,
                    target="network",
                    status=Status.PASS,
                    finding="no captive portal: none advertised by DHCP and no portal answered "
                    "in a service's place",
                )
            )
        return results


_STEP_NAMES = {
    Check.DNS: "DNS",
    Check.ROUTE: "the route",
    Check.PROXY: "the proxy",
    Check.TCP: "TCP",
    Check.TLS: "TLS",
    Check.APP: "the application answer",
}


def _replace(result: CheckResult, **changes: object) -> CheckResult:
    return msgspec.structs.replace(result, **changes)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, TlsError):
        return f"TLS {exc.kind}: {exc.detail}"
    text = str(exc)
    return text or type(exc).__name__


# Outcomes after which the system resolver asks the next configured server (glibc: no answer,
# SERVFAIL, REFUSED); NXDOMAIN and NODATA are answers and end the lookup.
_NEXT_SERVER = frozenset({Outcome.TIMEOUT, Outcome.ERROR, Outcome.SERVFAIL, Outcome.REFUSED})


def _judge_dns(answer: Answer, timeout: float) -> tuple[Status, str, str]:
    name, resolver = answer.name, answer.resolver.label
    if answer.outcome is Outcome.OK:
        note = f" ({answer.detail})" if answer.detail else ""
        return Status.PASS, f"{name} → {', '.join(answer.addresses)}{note}", ""
    if answer.outcome is Outcome.NXDOMAIN:
        return (
            Status.FAIL,
            f"{resolver} says {name} does not exist (NXDOMAIN)",
            f"ask the DNS admins why {resolver} answers NXDOMAIN for {name} (DNS filtering or "
            "split horizon): it must resolve to its public address",
        )
    if answer.outcome is Outcome.NODATA:
        return (
            Status.FAIL,
            f"{resolver} knows {name} but returns no address (no A/AAAA)",
            f"ask the DNS admins to let {resolver} resolve {name}",
        )
    if answer.outcome is Outcome.TIMEOUT:
        detail = f": {answer.detail}" if answer.detail else ""
        return (
            Status.FAIL,
            f"{resolver} does not answer within {timeout:g} s{detail}",
            f"allow DNS (UDP and TCP 53) from the gateway to {answer.resolver.address}, or have "
            "DHCP advertise a working resolver",
        )
    if answer.outcome is Outcome.SERVFAIL:
        return (
            Status.FAIL,
            f"{resolver} fails to resolve {name} (SERVFAIL): it cannot reach the authoritative "
            "servers",
            f"ask the DNS admins to fix recursion/forwarding on {answer.resolver.address}",
        )
    if answer.outcome is Outcome.REFUSED:
        return (
            Status.FAIL,
            f"{resolver} refuses to resolve for this machine (REFUSED)",
            "have DHCP advertise a resolver that serves this network",
        )
    return (
        Status.FAIL,
        f"{resolver}: {answer.detail or 'DNS error'}",
        f"check the resolver {answer.resolver.address}",
    )


def _judge_proxy_error(
    exc: ProxyError, proxy: ProxyURL, host: str, port: int
) -> tuple[str, str, bool]:
    """(finding, fix, firewall) for a CONNECT the proxy did not grant."""
    target = _authority(host, port)
    if isinstance(exc, ProxyAuthRequired):
        if proxy.username is None:
            return (
                f"proxy requires authentication ({exc})",
                "proxy requires authentication: set credentials in HTTPS_PROXY "
                "(http://user:pass@proxy:port)",
                False,
            )
        return (
            f"the proxy rejected the credentials of user '{proxy.username}' ({exc})",
            "check the user name and password in HTTPS_PROXY (http://user:pass@proxy:port)",
            False,
        )
    if isinstance(exc, ProxyRefused):
        return (
            f"proxy refuses CONNECT to {target} ({exc})",
            f"proxy refuses CONNECT to {target}: ask the proxy admins to allow it",
            True,
        )
    if isinstance(exc, ProxyUpstreamFailed):
        return (
            f"the proxy could not reach {target} itself ({exc})",
            f"ask the proxy admins to let the proxy reach {host} on TCP {port} (its own "
            "firewall or DNS blocks it)",
            True,
        )
    return (
        f"the proxy did not open a tunnel to {target} ({exc})",
        "check that HTTPS_PROXY points at an HTTP proxy that supports CONNECT",
        False,
    )
