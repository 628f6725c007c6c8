"""Everything generated from a manifest: the human document and the firewall configurations.

Documents (:data:`DOCUMENT_FORMATS`): ``md`` and ``html`` (the familiar table), ``csv`` and
``json``. Firewall formats (:data:`RULE_FORMATS`), one module each, every one encoding its vendor's
name-matching semantics (documented, with sources, in the module):

==========================  ====================================================================
``fqdn``                    plain list, exact names and ``*.`` wildcards
``fqdn-exact``              plain list of exact names only
``paloalto-edl``            PAN-OS external dynamic list, type URL List
``fortigate``               FortiOS CLI: FQDN address objects, groups, services
``squid``                   Squid ``dstdomain`` ACLs and ``http_access`` lines
``cisco-asa``               Cisco ASA / FTD FQDN network objects, groups, access-list
``pfsense``                 pfSense / OPNsense host and port aliases (config.xml fragment)
``nftables``                nftables sets fed by dnsmasq ``nftset``, and the forward chain
``aws-network-firewall``    AWS Network Firewall domain-list rule group(s), JSON
``azure-firewall``          Azure Firewall policy rule collection group, JSON
==========================  ====================================================================

:func:`build_rules` returns a :class:`~tether.netreq.render.plan.RuleOutput` (files and gaps);
:func:`render_rules` just the text. :func:`tether.netreq.render.semantics.matcher` gives, per
format, a matcher that reads the generated rules back with the vendor's semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tether.netreq.diff import ManifestDiff, diff_manifests, render_diff
from tether.netreq.loader import manifest_to_json
from tether.netreq.model import Manifest
from tether.netreq.render import (
    aws_network_firewall,
    azure_firewall,
    cisco_asa,
    csv_table,
    fortigate,
    fqdn,
    html,
    markdown,
    nftables,
    paloalto,
    pfsense,
    squid,
)
from tether.netreq.render.plan import Gap, GapKind, RuleOptions, RuleOutput

__all__ = [
    "DOCUMENT_FORMATS",
    "RULE_FORMATS",
    "Gap",
    "GapKind",
    "ManifestDiff",
    "RuleOptions",
    "RuleOutput",
    "UnknownFormat",
    "build_rules",
    "diff_manifests",
    "render_diff",
    "render_document",
    "render_rules",
]


class UnknownFormat(ValueError):
    """A format name that is not one of the known ones; the message lists them."""


_DOCUMENTS: Mapping[str, Callable[[Manifest], str]] = {
    "md": markdown.render,
    "html": html.render,
    "csv": csv_table.render,
    "json": lambda m: manifest_to_json(m).decode(),
}

_RULES: Mapping[str, Callable[[Manifest, RuleOptions], RuleOutput]] = {
    "fqdn": fqdn.render_fqdn,
    "fqdn-exact": fqdn.render_exact,
    "paloalto-edl": paloalto.render,
    "fortigate": fortigate.render,
    "squid": squid.render,
    "cisco-asa": cisco_asa.render,
    "pfsense": pfsense.render,
    "nftables": nftables.render,
    "aws-network-firewall": aws_network_firewall.render,
    "azure-firewall": azure_firewall.render,
}

DOCUMENT_FORMATS: tuple[str, ...] = tuple(_DOCUMENTS)
RULE_FORMATS: tuple[str, ...] = tuple(_RULES)


def render_document(m: Manifest, fmt: str) -> str:
    """The human document (``md``, ``html``), a CSV table or the manifest's JSON."""
    try:
        renderer = _DOCUMENTS[fmt]
    except KeyError:
        raise UnknownFormat(
            f"unknown document format {fmt!r} (one of {', '.join(DOCUMENT_FORMATS)})"
        ) from None
    return renderer(m)


def build_rules(m: Manifest, fmt: str, options: RuleOptions | None = None) -> RuleOutput:
    """Firewall configuration in ``fmt``: its files and the gaps the format cannot close."""
    try:
        renderer = _RULES[fmt]
    except KeyError:
        raise UnknownFormat(
            f"unknown rule format {fmt!r} (one of {', '.join(RULE_FORMATS)})"
        ) from None
    return renderer(m, options or RuleOptions())


def render_rules(m: Manifest, fmt: str, options: RuleOptions | None = None) -> str:
    """Firewall configuration in ``fmt`` as text (several files are shown one after another)."""
    return build_rules(m, fmt, options).text
