"""Manifests and name generators shared by the network-requirements tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tether.netreq.catalog import REFERENCE_MANIFESTS, load_reference
from tether.netreq.model import (
    AppProtocol,
    Endpoint,
    Lifecycle,
    Manifest,
    MatchMode,
    Port,
    Probe,
    ProbeKind,
    Requirement,
    TimePolicy,
    TlsExpectation,
    Transport,
)
from tether.netreq.own import DeploymentSettings, build_own_manifest

TLS = TlsExpectation(min_version="1.3")


def endpoint(
    id: str,
    host: str,
    match: MatchMode = MatchMode.EXACT,
    *,
    ports: tuple[Port, ...] = (Port(port=443),),
    protocol: AppProtocol = AppProtocol.HTTPS,
    proxy_ok: bool = True,
    examples: tuple[str, ...] = (),
    lifecycle: Lifecycle = Lifecycle.CURRENT,
    requirement: Requirement = Requirement.REQUIRED,
) -> Endpoint:
    tls = None if protocol in (AppProtocol.NTP, AppProtocol.DNS) else TLS
    probe = Probe(kind=ProbeKind.NTP) if protocol is AppProtocol.NTP else Probe()
    return Endpoint(
        id=id,
        area="test",
        purpose=f"{id} purpose",
        host=host,
        match=match,
        ports=ports,
        protocol=protocol,
        tls=tls,
        proxy_ok=proxy_ok,
        probe=probe,
        examples=examples,
        lifecycle=lifecycle,
        requirement=requirement,
        if_blocked="things break",
    )


def tricky_manifest() -> Manifest:
    """Every match mode, overlaps across port sets, non-TLS protocols, legacy and optional."""
    udp123 = (Port(port=123, transport=Transport.UDP),)
    return Manifest(
        version="2026010101",
        publisher="Example Corp",
        product="Tricky gateway",
        endpoints=(
            endpoint("exact", "api.example.com"),
            endpoint("apex", "example.net", MatchMode.APEX_AND_SUBDOMAINS),
            endpoint(
                "subs", "cdn.example.org", MatchMode.SUBDOMAINS, examples=("a.cdn.example.org",)
            ),
            endpoint("subs-bare", "edge.example.io", MatchMode.SUBDOMAINS),
            # A wildcard parent and a child of it on another port set (dnsmasq longest match).
            endpoint("parent", "svc.example.com", MatchMode.APEX_AND_SUBDOMAINS),
            endpoint(
                "child-8443",
                "x.svc.example.com",
                ports=(Port(port=8443),),
            ),
            # Subdomains only, but the apex is wanted by another endpoint.
            endpoint("subs-with-apex", "data.example.com", MatchMode.SUBDOMAINS),
            endpoint("apex-exact", "data.example.com"),
            endpoint(
                "vpn",
                "vpn.example.com",
                protocol=AppProtocol.OPENVPN_TCP,
                proxy_ok=False,
            ),
            endpoint(
                "ntp",
                "ntp.example.com",
                ports=udp123,
                protocol=AppProtocol.NTP,
                proxy_ok=False,
                requirement=Requirement.OPTIONAL,
            ),
            endpoint("old", "old.example.com", lifecycle=Lifecycle.LEGACY),
            endpoint(
                "old-wild",
                "legacy.example.com",
                MatchMode.SUBDOMAINS,
                lifecycle=Lifecycle.LEGACY,
            ),
        ),
        time=TimePolicy(fallback_ntp=("ntp.example.com",)),
    )


def own_single() -> Manifest:
    return build_own_manifest(DeploymentSettings(hostname="tether.example.com"))


def own_split() -> Manifest:
    return build_own_manifest(
        DeploymentSettings(
            hostname="tether.example.com",
            area_hostnames={
                "ingest": "ingest.tether.example.com",
                "updates": "updates.example.net",
                "console": "console.tether.example.com",
            },
            ntp_pools=("0.pool.ntp.org", "1.pool.ntp.org"),
            ca_spki_sha256="ab" * 32,
        )
    )


def all_manifests() -> dict[str, Manifest]:
    out = {name: load_reference(name) for name in REFERENCE_MANIFESTS}
    out["tether-single"] = own_single()
    out["tether-split"] = own_split()
    out["tricky"] = tricky_manifest()
    return out


@dataclass(frozen=True)
class Probe_:
    name: str
    endpoint: Endpoint
    kind: str  # "member", "child", "apex", "lookalike", "sibling", "suffix"


def _parent(host: str) -> str:
    return host.split(".", 1)[1] if host.count(".") >= 2 else host


def candidate_names(ep: Endpoint) -> Iterator[Probe_]:
    """Names worth asking a matcher about for one endpoint, tagged by what they are."""
    h = ep.host
    if ep.match is not MatchMode.SUBDOMAINS:
        yield Probe_(h, ep, "member")
    if ep.match is not MatchMode.EXACT:
        yield Probe_(f"x.{h}", ep, "member")
        yield Probe_(f"a.b.{h}", ep, "member")
        for example in ep.examples:
            yield Probe_(example, ep, "example")
    if ep.match is MatchMode.EXACT:
        yield Probe_(f"x.{h}", ep, "child")
    if ep.match is MatchMode.SUBDOMAINS:
        yield Probe_(h, ep, "apex")
    yield Probe_(f"{h}.evil.com", ep, "lookalike")
    yield Probe_(f"evil{h}", ep, "lookalike")
    yield Probe_(f"evil-{h}", ep, "lookalike")
    yield Probe_(f"zz-sibling.{_parent(h)}", ep, "sibling")
