"""Squid forward-proxy ACLs (``dstdomain``) for gateways that reach the Internet through Squid.

Semantics encoded here, from Squid's ``acl`` directive documentation and its domain comparison
(``matchDomainName`` in src/acl/DomainData.cc):

* ``dstdomain example.com`` matches exactly that host; ``dstdomain .example.com`` (leading dot)
  matches example.com *and* every name under it. Matching is on whole labels and case-insensitive,
  so neither form admits ``example.com.evil.com`` or ``evilexample.com``.
* There is no "subdomains only" form: for such an endpoint the rules add ``.example.com`` and an
  exclusion ACL holding the exact ``example.com``, used negated in the ``http_access`` line.
* Squid warns about (and drops) entries of one ACL that another entry already covers, so covered
  entries are left out.
* A proxy only carries what the gateway sends through it: UDP and endpoints that do not work
  through an HTTP proxy (``proxy_ok = false``) are reported as gaps.

Gateways use HTTPS through the proxy, so each line allows ``CONNECT`` to the listed names on the
listed ports (Squid 5 and later predefine the ``CONNECT`` ACL; older default configurations define
it as ``acl CONNECT method CONNECT``). Place the lines before your ``http_access deny all``.
"""

from __future__ import annotations

from tether.netreq.model import Manifest, MatchMode, Transport
from tether.netreq.render.plan import (
    Gap,
    GapKind,
    RuleOptions,
    RuleOutput,
    Target,
    group_by_ports,
    header,
    plan,
    prefix_for,
)

__all__ = ["render"]

_SEMANTICS = [
    "dstdomain 'example.com' is that host only; '.example.com' is example.com and every name",
    "under it. Endpoints that need subdomains only are allowed with '.example.com' minus an",
    "exclusion ACL for 'example.com'. Put these lines before 'http_access deny all'.",
]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options, sep="_")
    gaps: list[Gap] = []
    usable: list[Target] = []
    for t in plan(m, options):
        if any(p.transport is Transport.UDP for p in t.ports):
            gaps.append(t.gap(GapKind.NOT_EXPRESSIBLE, "UDP does not pass an HTTP proxy"))
        elif not t.proxy_ok:
            gaps.append(
                t.gap(
                    GapKind.NOT_EXPRESSIBLE,
                    "not stated to work through an HTTP proxy; allow it directly",
                )
            )
        else:
            usable.append(t)
    lines = [f"# {line}".rstrip() for line in header(m, "Squid ACLs", _SEMANTICS, gaps)]
    access: list[str] = []
    for key, group in group_by_ports(usable).items():
        name = f"{prefix}_{key.replace('-', '_')}"
        domains, exclusions = _domains(group)
        lines.append(f"acl {name}_dst dstdomain {' '.join(domains)}")
        if exclusions:
            lines.append(f"acl {name}_not dstdomain {' '.join(exclusions)}")
        ports = sorted({p.port for p in group[0].ports})
        lines.append(f"acl {name}_ports port {' '.join(map(str, ports))}")
        rule = f"http_access allow CONNECT {name}_dst {name}_ports"
        if exclusions:
            rule += f" !{name}_not"
        access.append(rule)
    text = "\n".join(lines + access) + "\n"
    return RuleOutput("squid", (("squid-acl.conf", text),), tuple(gaps))


def _domains(group: list[Target]) -> tuple[list[str], list[str]]:
    """``dstdomain`` entries with covered ones removed, and apex names to exclude."""
    wild = {t.host for t in group if t.match is not MatchMode.EXACT}
    exact = {t.host for t in group if t.match is not MatchMode.SUBDOMAINS}

    def covered(host: str, *, strict: bool) -> bool:
        return any(host.endswith("." + w) or (not strict and host == w) for w in wild)

    entries = [f".{w}" for w in wild if not covered(w, strict=True)]
    entries += [h for h in exact if not covered(h, strict=False)]
    # Subdomain-only hosts whose apex nothing else admits: admitted by '.host', so exclude it.
    exclusions = [
        t.host
        for t in group
        if t.match is MatchMode.SUBDOMAINS
        and t.host not in exact
        and not covered(t.host, strict=True)
    ]
    order = lambda d: tuple(reversed(d.lstrip(".").split(".")))  # noqa: E731
    return sorted(entries, key=order), sorted(set(exclusions), key=order)
