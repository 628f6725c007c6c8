"""tether's own network-requirements manifest, generated from the cloud's deployment settings.

The deployment names one hostname (every service area behind it) or one hostname per area, so a
site can, for instance, block customer-data flows (``ingest``) separately from software updates.
:func:`build_own_manifest` turns those settings into a :class:`~tether.netreq.model.Manifest`:
one endpoint per gateway-facing area, optional NTP pools, the DNS/time policy and the change log
shipped with the software (``reference/tether-changes.toml``). Same settings, same manifest: the
version is the newest change-log version, or the deployment's own ``revision`` when newer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from tether.netreq.loader import parse_changes
from tether.netreq.model import (
    AppProtocol,
    Change,
    CustomerData,
    Direction,
    DnsPolicy,
    Endpoint,
    Manifest,
    PinKind,
    Port,
    Probe,
    ProbeKind,
    Requirement,
    TimePolicy,
    TlsExpectation,
    Transport,
    is_valid_hostname,
    is_valid_version,
    problems,
)

__all__ = [
    "AREAS",
    "DEFAULT_HOSTNAME",
    "GATEWAY_AREAS",
    "HELLO_PATH",
    "LINK_PATH",
    "DeploymentSettings",
    "SettingsError",
    "build_own_manifest",
    "own_changes",
]

DEFAULT_HOSTNAME = "tether.example.com"
LINK_PATH = "/link"  # the cloud's WebSocket link endpoint
HELLO_PATH = "/.well-known/tether/hello"  # unauthenticated; answers 200 with a small JSON body
EST_CACERTS_PATH = "/.well-known/est/cacerts"  # RFC 7030 §4.1: unauthenticated CA distribution

GATEWAY_AREAS = ("control", "enrollment", "ingest", "updates", "logs", "support")
"""Areas a gateway connects to, in document order."""

AREAS = (*GATEWAY_AREAS, "console")
"""Every area a deployment may give its own hostname (the console is for people, not gateways)."""


class SettingsError(ValueError):
    """Deployment settings that cannot describe a deployment; the message names the setting."""


@dataclass(frozen=True)
class DeploymentSettings:
    """The part of the cloud's settings that decides what gateways need from a site network."""

    hostname: str = DEFAULT_HOSTNAME
    port: int = 443
    area_hostnames: Mapping[str, str] = field(default_factory=dict)  # area -> hostname
    ntp_pools: tuple[str, ...] = ()  # NTP names a gateway may use when DHCP advertises none
    ca_spki_sha256: str | None = None  # platform CA key digest, lowercase hex
    publisher: str = "tether"
    revision: str | None = None  # YYYYMMDDNN set by the operator when they change hostnames

    def __post_init__(self) -> None:
        if not is_valid_hostname(self.hostname):
            raise SettingsError(f"hostname: {self.hostname!r} is not a lowercase DNS name")
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port: {self.port} is not in 1..65535")
        for area, host in self.area_hostnames.items():
            if area not in AREAS:
                raise SettingsError(f"hostnames.{area}: unknown area (one of {', '.join(AREAS)})")
            if not is_valid_hostname(host):
                raise SettingsError(f"hostnames.{area}: {host!r} is not a lowercase DNS name")
        for name in self.ntp_pools:
            if not is_valid_hostname(name):
                raise SettingsError(f"ntp_pools: {name!r} is not a lowercase DNS name")
        if self.ca_spki_sha256 is not None:
            digest = self.ca_spki_sha256
            if len(digest) != 64 or digest.strip("0123456789abcdef"):
                raise SettingsError("ca_spki_sha256: not 64 lowercase hex digits")
        if self.revision is not None and not is_valid_version(self.revision):
            raise SettingsError(f"revision: {self.revision!r} is not YYYYMMDDNN")
        # Freeze the mapping so the settings really are immutable.
        object.__setattr__(self, "area_hostnames", MappingProxyType(dict(self.area_hostnames)))

    def host_for(self, area: str) -> str:
        return self.area_hostnames.get(area, self.hostname)


@dataclass(frozen=True)
class _Area:
    purpose: str
    protocol: AppProtocol
    direction: Direction
    customer_data: CustomerData
    requirement: Requirement
    if_blocked: str
    mutual: bool = True


_AREA_FACTS: Mapping[str, _Area] = {
    "control": _Area(
        purpose="The gateway link: commands, results, configuration, metrics and health over one "
        "WebSocket, falling back to HTTPS long-poll and then periodic polling.",
        protocol=AppProtocol.WSS,
        direction=Direction.BOTH,
        customer_data=CustomerData.METADATA,
        requirement=Requirement.REQUIRED,
        if_blocked="The gateway is offline: no commands, configuration or health reports on any "
        "tier.",
    ),
    "enrollment": _Area(
        purpose="Certificate enrollment and renewal (EST, RFC 7030) with a one-time token.",
        protocol=AppProtocol.HTTPS,
        direction=Direction.BOTH,
        customer_data=CustomerData.NONE,
        requirement=Requirement.REQUIRED,
        if_blocked="New gateways cannot enroll; enrolled ones cannot renew and go offline when "
        "their certificate expires.",
        mutual=False,
    ),
    "ingest": _Area(
        purpose="Telemetry upload: observations from field devices, acknowledged in batches.",
        protocol=AppProtocol.HTTPS,
        direction=Direction.UPLOAD,
        customer_data=CustomerData.TELEMETRY,
        requirement=Requirement.REQUIRED,
        if_blocked="Observations stay in the gateway's bounded spool; the oldest are dropped "
        "(and counted) once it is full.",
    ),
    "updates": _Area(
        purpose="Software updates: signed metadata and full or delta artifacts.",
        protocol=AppProtocol.HTTPS,
        direction=Direction.DOWNLOAD,
        customer_data=CustomerData.NONE,
        requirement=Requirement.REQUIRED,
        if_blocked="The gateway keeps running its current version and receives no fixes.",
    ),
    "logs": _Area(
        purpose="Gateway log shipping for troubleshooting.",
        protocol=AppProtocol.HTTPS,
        direction=Direction.UPLOAD,
        customer_data=CustomerData.METADATA,
        requirement=Requirement.OPTIONAL,
        if_blocked="Logs stay on the gateway; remote troubleshooting is slower.",
    ),
    "support": _Area(
        purpose="Support sessions the customer granted (scoped, time-limited, recorded).",
        protocol=AppProtocol.WSS,
        direction=Direction.BOTH,
        customer_data=CustomerData.METADATA,
        requirement=Requirement.OPTIONAL,
        if_blocked="Support staff cannot open remote sessions; everything else works.",
    ),
}


def build_own_manifest(settings: DeploymentSettings) -> Manifest:
    """tether's manifest for a deployment. Pure and deterministic."""
    changes = own_changes()
    version = max(c.version for c in changes)
    if settings.revision is not None and settings.revision > version:
        version = settings.revision
    pin = (settings.ca_spki_sha256,) if settings.ca_spki_sha256 else ()
    endpoints = [_area_endpoint(area, settings, pin) for area in GATEWAY_AREAS]
    endpoints += [
        Endpoint(
            id=f"ntp-{i}",
            area="time",
            purpose="NTP server used when the site's DHCP server advertises none.",
            host=name,
            ports=(Port(port=123, transport=Transport.UDP),),
            protocol=AppProtocol.NTP,
            direction=Direction.BOTH,
            requirement=Requirement.OPTIONAL,
            if_blocked="None while the cloud is reachable: time then comes from its HTTPS Date "
            "header.",
            probe=Probe(kind=ProbeKind.NTP),
        )
        for i, name in enumerate(settings.ntp_pools, start=1)
    ]
    hosts = sorted({settings.host_for(a) for a in GATEWAY_AREAS})
    notes = [
        "Every connection is opened by the gateway; no inbound port is needed.",
        "Mutual TLS cannot pass a TLS-inspecting proxy: exempt the hostnames above from "
        "decryption. The gateway pins the platform CA and reports interception by name.",
        "The gateway honours the HTTPS proxy the site configures (HTTP CONNECT); a direct route "
        "is not required. Proxy authentication: Basic only (credentials in the proxy URL); "
        "NTLM, Kerberos and Negotiate are not supported.",
        "IPv4 and IPv6 are both used when the site offers them: the gateway connects to the "
        "addresses DNS returns (AAAA and A), so allow both or give the gateway no IPv6 route.",
        "Place the gateway in a segment whose outbound traffic passes the firewall or proxy "
        "configured from this document; it needs DHCP (or static settings), DNS and the "
        "connections listed here, and nothing inbound.",
        "Long-lived connections: the WebSocket link stays open for hours and carries a "
        "heartbeat every 30 s; the HTTPS long-poll fallback holds each request up to 25 s. "
        "Firewall and proxy idle and response timeouts for these names must exceed 30 s "
        "(60 s or more recommended); shorter ones cut the link and force slower tiers.",
    ]
    if len(hosts) == 1:
        notes.append(
            "All areas share one hostname, so they are allowed or blocked together; a deployment "
            "can give areas their own hostnames to let sites block them separately."
        )
    console = settings.area_hostnames.get("console")
    if console:
        notes.append(
            f"The web console ({console}) is for operators' browsers; gateways never connect to it."
        )
    manifest = Manifest(
        version=version,
        publisher=settings.publisher,
        product="tether gateway",
        description=(
            "Everything the gateway does is HTTPS or WebSocket over TLS 1.3 to TCP "
            f"{settings.port} on {_join_hosts(hosts)}. NTP is optional: without it the gateway "
            "takes the time from the cloud's HTTPS Date header."
        ),
        endpoints=tuple(endpoints),
        dns=DnsPolicy(
            dhcp_options=(6,),
            notes="Uses the resolvers the site's DHCP server advertises, or the system resolver.",
        ),
        time=TimePolicy(
            dhcp_options=(42,),
            fallback_ntp=settings.ntp_pools,
            https_date_fallback=True,
            https_date_hosts=(settings.host_for("control"),),
            notes="The build time of the software is a floor for the clock before any "
            "certificate check.",
        ),
        notes=tuple(notes),
        changes=changes,
    )
    found = problems(manifest)
    if found:  # a bug in this module, not in the settings (those were validated above)
        raise SettingsError(f"generated manifest is invalid: {found[0]}")
    return manifest


def _area_endpoint(area: str, settings: DeploymentSettings, pin: tuple[str, ...]) -> Endpoint:
    facts = _AREA_FACTS[area]
    host = settings.host_for(area)
    if area == "control":
        probe = Probe(
            kind=ProbeKind.WEBSOCKET,
            path=LINK_PATH,
            expect_status=(101, 401, 403),
            note="401/403 without a client certificate still proves the upgrade reached the cloud.",
        )
    elif area == "enrollment":
        probe = Probe(kind=ProbeKind.HTTPS, path=EST_CACERTS_PATH, expect_status=(200,))
    elif host == settings.hostname:
        probe = Probe(kind=ProbeKind.HTTPS, path=HELLO_PATH, expect_status=(200,))
    else:
        probe = Probe(kind=ProbeKind.TLS)
    alpn = ("http/1.1",)
    return Endpoint(
        id=area,
        area=area,
        purpose=facts.purpose,
        host=host,
        ports=(Port(port=settings.port),),
        protocol=facts.protocol,
        direction=facts.direction,
        customer_data=facts.customer_data,
        requirement=facts.requirement,
        if_blocked=facts.if_blocked,
        tls=TlsExpectation(
            min_version="1.3",
            mutual=facts.mutual,
            pin=PinKind.CA,
            pin_sha256=pin,
            interception_tolerated=False,
            alpn=alpn,
        ),
        proxy_ok=True,
        probe=probe,
    )


def _join_hosts(hosts: list[str]) -> str:
    if len(hosts) == 1:
        return hosts[0]
    return ", ".join(hosts[:-1]) + " and " + hosts[-1]


@functools.cache
def own_changes() -> tuple[Change, ...]:
    """The change log shipped with the software (``reference/tether-changes.toml``)."""
    source = "tether/netreq/reference/tether-changes.toml"
    data = resources.files("tether.netreq").joinpath("reference/tether-changes.toml").read_bytes()
    return parse_changes(data, source=source, fmt="toml")
