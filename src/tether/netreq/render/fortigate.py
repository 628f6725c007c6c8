"""FortiGate (FortiOS) CLI: FQDN address objects, address groups per port set, services.

Semantics encoded here, from Fortinet's "Using wildcard FQDN addresses in firewall policies"
(FortiOS 6.2.2 and later) and "FQDN address firewall object type":

* ``set type fqdn`` with a plain name is resolved by the FortiGate's own DNS and matches that
  name's addresses only.
* ``set type fqdn`` with ``*.example.com`` is a wildcard FQDN: a glob in which ``*`` stands for
  any run of characters, so it matches names under example.com at any depth and not example.com
  itself (the pattern needs the ``.``). An endpoint that needs the apex gets a second, exact object.
* A wildcard object learns addresses by watching DNS answers that cross the FortiGate, so the
  gateways' DNS traffic must pass through it (and DNS over HTTPS defeats it).

Objects are grouped by destination ports, one ``addrgrp`` and one custom service per port set,
ready for a policy from the gateways' interface (an example policy is given as a comment).
"""

from __future__ import annotations

import hashlib

from tether.netreq.model import Manifest, MatchMode, Transport
from tether.netreq.render.plan import (
    RuleOptions,
    RuleOutput,
    Target,
    group_by_ports,
    header,
    one_line,
    plan,
    prefix_for,
)

__all__ = ["render"]

_NAME_MAX = 79  # FortiOS address object names

_SEMANTICS = [
    "'*.example.com' is a wildcard FQDN (FortiOS 6.2.2+): every name under example.com, at any",
    "depth, never example.com itself (which has its own object when needed). Wildcard objects",
    "learn addresses from DNS answers crossing the FortiGate: route the gateways' DNS through it.",
]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options)
    targets = plan(m, options)
    groups = group_by_ports(targets)
    out = [f"# {line}".rstrip() for line in header(m, "FortiGate objects", _SEMANTICS, ())]
    out.append("")
    out.append("config firewall address")
    members: dict[str, list[str]] = {}
    for key, group in groups.items():
        for t in group:
            for name, fqdn in _objects(prefix, t):
                members.setdefault(key, []).append(name)
                out += [
                    f'    edit "{name}"',
                    "        set type fqdn",
                    f'        set fqdn "{fqdn}"',
                    f'        set comment "{_comment(t)}"',
                    "    next",
                ]
    out.append("end")
    out.append("config firewall addrgrp")
    for key, names in members.items():
        out += [
            f'    edit "{prefix}-{key}"',
            "        set member " + " ".join(f'"{n}"' for n in dict.fromkeys(names)),
            "    next",
        ]
    out.append("end")
    out.append("config firewall service custom")
    for key, group in groups.items():
        out.append(f'    edit "{prefix}-{key}"')
        for transport in (Transport.TCP, Transport.UDP):
            ports = sorted({p.port for p in group[0].ports if p.transport is transport})
            if ports:
                out.append(f"        set {transport.value}-portrange {' '.join(map(str, ports))}")
        out.append("    next")
    out.append("end")
    out.append("")
    out.append("# Example policy (adjust interfaces and source addresses):")
    for key in groups:
        out += [
            "# config firewall policy",
            "#     edit 0",
            f'#         set name "{prefix}-{key}"',
            '#         set srcintf "iot"',
            '#         set dstintf "wan1"',
            '#         set srcaddr "all"',
            f'#         set dstaddr "{prefix}-{key}"',
            f'#         set service "{prefix}-{key}"',
            "#         set action accept",
            '#         set schedule "always"',
            "#         set nat enable",
            "#     next",
            "# end",
        ]
    return RuleOutput("fortigate", (("fortigate.conf", "\n".join(out) + "\n"),))


def _objects(prefix: str, t: Target) -> list[tuple[str, str]]:
    out = []
    if t.match in (MatchMode.EXACT, MatchMode.APEX_AND_SUBDOMAINS):
        out.append((_name(f"{prefix}-{t.host}"), t.host))
    if t.match in (MatchMode.SUBDOMAINS, MatchMode.APEX_AND_SUBDOMAINS):
        out.append((_name(f"{prefix}-wild-{t.host}"), f"*.{t.host}"))
    return out


def _name(name: str) -> str:
    if len(name) <= _NAME_MAX:
        return name
    tag = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _NAME_MAX - 9]}-{tag}"


def _comment(t: Target) -> str:
    text = ", ".join(t.ids) + (" (legacy)" if t.legacy else "")
    return one_line(text).replace("\\", "/").replace('"', "'")[:255]
