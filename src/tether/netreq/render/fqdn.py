"""Plain name lists: ``fqdn`` (exact names and ``*.`` wildcards) and ``fqdn-exact`` (names only).

Semantics of the ``fqdn`` list (tether's own convention, stated in the file's header): a line is
either an exact name or ``*.`` followed by a domain, which stands for every name *under* that
domain at any depth and never for the domain itself; an endpoint that needs the domain too gets a
second, exact line. This is the reading most firewalls that take wildcard names apply (Azure
Firewall target FQDNs, PAN-OS, FortiOS), so the list can be pasted into them as a starting point.

``fqdn-exact`` is for devices that resolve each name to addresses and accept no wildcard: a
wildcard endpoint contributes only the concrete names the manifest knows for it (``examples``).
"""

from __future__ import annotations

from tether.netreq.model import Manifest, MatchMode
from tether.netreq.render.plan import Gap, GapKind, RuleOptions, RuleOutput, header, plan

__all__ = ["render_exact", "render_fqdn"]

_SEMANTICS = [
    "One name per line. '*.example.com' stands for every name under example.com, at any depth,",
    "but not example.com itself, which has its own line when it is needed.",
    "Ports and protocols are not part of this list: see the manifest or the document.",
]

_SEMANTICS_EXACT = [
    "One exact name per line; no wildcards (for devices that resolve each name to addresses).",
    "Ports and protocols are not part of this list: see the manifest or the document.",
]


def render_fqdn(m: Manifest, options: RuleOptions) -> RuleOutput:
    lines: list[str] = []
    for t in plan(m, options):
        if t.match in (MatchMode.EXACT, MatchMode.APEX_AND_SUBDOMAINS):
            lines.append(t.host)
        if t.match in (MatchMode.SUBDOMAINS, MatchMode.APEX_AND_SUBDOMAINS):
            lines.append(f"*.{t.host}")
    body = _unique(lines)
    text = _comment(header(m, "Allowed names", _SEMANTICS, ())) + "\n".join(body) + "\n"
    return RuleOutput("fqdn", (("allowlist.txt", text),))


def render_exact(m: Manifest, options: RuleOptions) -> RuleOutput:
    lines: list[str] = []
    gaps: list[Gap] = []
    for t in plan(m, options):
        if t.match is not MatchMode.SUBDOMAINS:
            lines.append(t.host)
        if t.match is MatchMode.EXACT:
            continue
        if t.examples:
            lines.extend(t.examples)
            gaps.append(t.gap(GapKind.EXAMPLES_ONLY, "wildcard listed as its known names only"))
        else:
            gaps.append(t.gap(GapKind.NOT_EXPRESSIBLE, "wildcard without known names"))
    body = _unique(lines)
    text = _comment(header(m, "Allowed names", _SEMANTICS_EXACT, gaps)) + "\n".join(body) + "\n"
    return RuleOutput("fqdn-exact", (("allowlist-exact.txt", text),), tuple(gaps))


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)
