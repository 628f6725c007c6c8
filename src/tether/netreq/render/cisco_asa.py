"""Cisco ASA (and FTD through FlexConfig or the same objects in FMC): FQDN network objects.

Semantics encoded here, from Cisco's ASA command reference (``fqdn`` in network object
configuration mode) and its FTD note "Troubleshoot FQDN objects with base domains":

* An FQDN object holds exactly one name, which the ASA resolves through its configured DNS server
  and replaces by the returned addresses. It matches that name only: no wildcard is accepted and
  a base domain does not cover its subdomains.
* A wildcard endpoint can only be approximated by the concrete names the manifest knows for it
  (``examples``); without them it is reported as a gap (use URL filtering on FTD instead).

* ``fqdn v4`` resolves A records only and ``fqdn v6`` AAAA records only: every name gets one
  object of each, so IPv6 is admitted exactly as the other formats admit it.

Objects are grouped into one ``object-group network`` per port set and permitted by an
``access-list`` to apply on the interface facing the gateways. An access-list ends in an implicit
deny, so it also permits what the gateway needs besides the manifest's names: DNS (TCP and UDP 53)
and, when the manifest honours DHCP-advertised NTP servers (option 42), NTP (UDP 123) to
``any``, whose addresses the manifest cannot know; narrow ``any`` to the site's own servers.
"""

from __future__ import annotations

import hashlib

from tether.netreq.model import Manifest, MatchMode, Transport
from tether.netreq.render.plan import (
    Gap,
    GapKind,
    RuleOptions,
    RuleOutput,
    Target,
    group_by_ports,
    header,
    one_line,
    plan,
    prefix_for,
)

__all__ = ["exact_names", "render"]

_NAME_MAX = 64  # ASA object names

_SEMANTICS = [
    "Each FQDN object is one exact name, resolved by the ASA's DNS server; ASA and FTD FQDN",
    "objects take no wildcards and a domain does not cover its subdomains. Configure",
    "'dns domain-lookup' and a 'dns server-group' first, then apply the access-list to the",
    "interface facing the gateways (access-group ... in interface <name>). 'fqdn v4' and",
    "'fqdn v6' objects admit each name over IPv4 and IPv6. The access-list ends in an implicit",
    "deny, so it also permits DNS (and NTP from DHCP) to 'any': narrow it to your own servers.",
]


def exact_names(t: Target) -> tuple[list[str], Gap | None]:
    """The exact names a names-only format can hold for ``t``, and the gap it leaves."""
    names = [] if t.match is MatchMode.SUBDOMAINS else [t.host]
    if t.match is MatchMode.EXACT:
        return names, None
    if t.examples:
        gap = t.gap(GapKind.EXAMPLES_ONLY, "no wildcards: only the known names are listed")
        return names + list(t.examples), gap
    return names, t.gap(GapKind.NOT_EXPRESSIBLE, "no wildcards and no known names")


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options)
    gaps: list[Gap] = []
    objects: list[str] = []
    groups: list[str] = []
    acl: list[str] = []
    for key, group in group_by_ports(plan(m, options)).items():
        members: list[str] = []
        for t in group:
            names, gap = exact_names(t)
            if gap is not None:
                gaps.append(gap)
            for host in names:
                for family in ("v4", "v6"):
                    obj = _name(f"{prefix}-{host}-{family}")
                    if obj not in members:
                        members.append(obj)
                        objects += [
                            f"object network {obj}",
                            f" fqdn {family} {host}",
                            f" description {_describe(t)}",
                        ]
        if not members:
            continue
        group_name = _name(f"{prefix}-{key}")
        groups.append(f"object-group network {group_name}")
        groups += [f" network-object object {obj}" for obj in members]
        for p in group[0].ports:
            proto = "tcp" if p.transport is Transport.TCP else "udp"
            acl.append(
                f"access-list {prefix}-out extended permit {proto} any "
                f"object-group {group_name} eq {p.port}"
            )
    acl += _site_services(m, f"{prefix}-out")
    lines = [f"! {line}".rstrip() for line in header(m, "Cisco ASA objects", _SEMANTICS, gaps)]
    text = "\n".join(lines + objects + groups + acl) + "\n"
    return RuleOutput("cisco-asa", (("asa.conf", text),), tuple(gaps))


def _site_services(m: Manifest, acl: str) -> list[str]:
    """Permits for the site services the gateway needs whose addresses no manifest can name."""
    out = [
        f"access-list {acl} remark DNS: the gateway resolves every name above; narrow 'any' "
        "to the site's resolvers",
        f"access-list {acl} extended permit udp any any eq domain",
        f"access-list {acl} extended permit tcp any any eq domain",
    ]
    if 42 in m.time.dhcp_options:
        out += [
            f"access-list {acl} remark NTP: servers the site's DHCP advertises (option 42); "
            "narrow 'any' to them",
            f"access-list {acl} extended permit udp any any eq ntp",
        ]
    return out


def _name(name: str) -> str:
    if len(name) <= _NAME_MAX:
        return name
    tag = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _NAME_MAX - 9]}-{tag}"


def _describe(t: Target) -> str:
    return one_line(", ".join(t.ids) + (" (legacy)" if t.legacy else ""))[:200]
