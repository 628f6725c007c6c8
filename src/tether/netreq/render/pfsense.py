"""pfSense / OPNsense host aliases (config.xml ``<aliases>`` fragment) and port aliases.

Semantics encoded here, from the pfSense documentation on aliases ("Using Hostnames in Aliases")
and OPNsense's alias documentation ("Host(s)" type):

* A Host(s) alias entry that is a name is resolved periodically (by filterdns on pfSense) and
  replaced by its current addresses. It is one exact name: no wildcard is accepted, and a domain
  does not cover its subdomains.
* A wildcard endpoint can only be approximated by the names the manifest knows for it
  (``examples``); without them it is reported as a gap.

Alias names may hold letters, digits and underscores, at most 31 characters. On OPNsense create
Host(s) aliases with the same names and contents (Firewall > Aliases), or restore the fragment.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from tether.netreq.model import Manifest
from tether.netreq.render.cisco_asa import exact_names
from tether.netreq.render.plan import (
    Gap,
    RuleOptions,
    RuleOutput,
    group_by_ports,
    header,
    one_line,
    plan,
    prefix_for,
)

__all__ = ["render"]

_SEMANTICS = [
    "Host(s) aliases: every entry is one exact name, resolved periodically by the firewall.",
    "No wildcards; a domain does not cover its subdomains.",
    "Use <name> as the destination and <name>_ports as the destination port of a pass rule.",
]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options, sep="_", limit=12)
    gaps: list[Gap] = []
    out = ['<?xml version="1.0"?>']
    head = header(m, "pfSense/OPNsense aliases", _SEMANTICS, [])
    out.append("<!--")
    out += [f"  {escape(line).replace('--', '- -')}".rstrip() for line in head]
    out.append("-->")
    out.append("<aliases>")
    for key, group in group_by_ports(plan(m, options)).items():
        names: list[str] = []
        details: list[str] = []
        for t in group:
            hosts, gap = exact_names(t)
            if gap is not None:
                gaps.append(gap)
            for host in hosts:
                if host not in names:
                    names.append(host)
                    details.append(", ".join(t.ids) + (" (legacy)" if t.legacy else ""))
        if not names:
            continue
        alias = f"{prefix}_{key.replace('-', '_')}"[:25]
        ports = sorted({p.port for p in group[0].ports})
        out += _alias(alias, "host", names, details, f"{m.product} endpoints, {key}")
        out += _alias(
            f"{alias}_ports",
            "port",
            [str(p) for p in ports],
            [key] * len(ports),
            f"{m.product} ports, {key}",
        )
    out.append("</aliases>")
    if gaps:
        out.append("<!--")
        out.append("  Not expressed exactly in this format:")
        out += [f"  - {escape(str(g)).replace('--', '- -')}" for g in gaps]
        out.append("-->")
    return RuleOutput("pfsense", (("aliases.xml", "\n".join(out) + "\n"),), tuple(gaps))


def _alias(name: str, kind: str, entries: list[str], details: list[str], descr: str) -> list[str]:
    return [
        "\t<alias>",
        f"\t\t<name>{escape(name)}</name>",
        f"\t\t<type>{kind}</type>",
        f"\t\t<address>{escape(' '.join(entries))}</address>",
        f"\t\t<descr>{escape(one_line(descr))}</descr>",
        f"\t\t<detail>{escape(one_line('||'.join(details)))}</detail>",
        "\t</alias>",
    ]
