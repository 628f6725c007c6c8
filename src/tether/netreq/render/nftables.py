"""Linux firewall: nftables sets filled by dnsmasq (``nftset``), and the rules that use them.

Two files: an nftables ruleset (``nft -f``) with one IPv4 and one IPv6 set per port set and a
forward-hook chain that lets the gateways' addresses reach only those sets, and a dnsmasq
configuration that adds every address it resolves for a listed domain to the matching sets.

Semantics encoded here, from the dnsmasq manual (``--nftset``, ``--ipset``, ``--server``) and its
source (the set lookup in ``forward.c``, "similar algorithm to search_servers"):

* ``nftset=/example.com/…`` matches example.com and every name under it, on whole labels (never
  ``evilexample.com`` or ``example.com.evil.com``); leading dots are ignored and the ``*`` of
  ``--server`` patterns has no meaning here.
* For a name, only the entry with the *longest* matching domain applies. So an entry for a name
  under another listed domain also carries that domain's sets (or its names would lose them).
* There is no exact-only and no subdomains-only form: an exact endpoint admits the names under it
  too, and a subdomains-only endpoint admits its apex. Both are reported as gaps.
* An address enters a set only when a gateway resolves the name through this dnsmasq: point the
  gateways' DNS at it (DHCP option 6). Set elements time out and are refreshed by new lookups.

Reloading is safe: the file never deletes or flushes the table or its sets, so the gateway
addresses the site put into ``gateways4`` / ``gateways6`` (and the addresses dnsmasq learnt)
survive ``nft -f``; only the forward chain's rules are flushed and written again, in the same
transaction, so there is no moment in which a listed gateway is unrestricted. With
``RuleOptions.additive`` (the preflight's fixes) nothing is flushed at all: the sets are declared
if missing and the allow rules are inserted ahead of the existing drop rules.
"""

from __future__ import annotations

from tether.netreq.model import Manifest, MatchMode, Transport
from tether.netreq.render.plan import (
    Gap,
    GapKind,
    RuleOptions,
    RuleOutput,
    group_by_ports,
    header,
    plan,
    prefix_for,
)

__all__ = ["render"]

_SEMANTICS = [
    "dnsmasq adds the addresses it resolves for each listed domain (and every name under it) to",
    "the sets below; the forward chain lets the gateways' addresses reach only those sets.",
    "Add the gateways' addresses to the 'gateways4'/'gateways6' sets and point their DNS at",
    "this dnsmasq. Load with 'nft -f'. Reloading keeps the sets' elements (the gateways you",
    "added stay restricted); only the forward chain's rules are replaced, atomically.",
]

_SEMANTICS_ADDITIVE = [
    "Additional allow rules: they add sets and insert accept rules ahead of the existing",
    "drop rules, and change nothing else. Load with 'nft -f' on a firewall that already runs",
    "the full ruleset from 'tether net rules -f nftables'.",
]

_TIMEOUT = "1h"


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    table = prefix_for(m, options, sep="_")
    targets = plan(m, options)
    gaps: list[Gap] = []
    for t in targets:
        if t.match is MatchMode.EXACT:
            gaps.append(
                t.gap(GapKind.OVER_ADMITS_CHILDREN, "dnsmasq also admits names under this host")
            )
        elif t.match is MatchMode.SUBDOMAINS:
            gaps.append(t.gap(GapKind.OVER_ADMITS_APEX, "dnsmasq also admits the domain itself"))
    groups = group_by_ports(targets)
    semantics = _SEMANTICS_ADDITIVE if options.additive else _SEMANTICS
    nft = [f"# {line}".rstrip() for line in header(m, "nftables ruleset", semantics, gaps)]
    # Declaring a table, set or chain that exists changes nothing and keeps its elements.
    declarations = [
        "\tset gateways4 {",
        "\t\ttype ipv4_addr",
        "\t\tflags interval",
        '\t\tcomment "gateway addresses, e.g. elements = { 192.0.2.0/24 }"',
        "\t}",
        "\tset gateways6 {",
        "\t\ttype ipv6_addr",
        "\t\tflags interval",
        '\t\tcomment "gateway addresses, e.g. elements = { 2001:db8::/64 }"',
        "\t}",
    ]
    rules: list[str] = []
    sets_of: dict[str, tuple[str, ...]] = {}
    wildcard_sets: dict[str, tuple[str, ...]] = {}
    for key, group in groups.items():
        name = key.replace("-", "_")
        for family, kind in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
            declarations += [
                f"\tset {name}_v{family} {{",
                f"\t\ttype {kind}",
                "\t\tflags timeout",
                f"\t\ttimeout {_TIMEOUT}",
                f'\t\tcomment "filled by dnsmasq: {key}"',
                "\t}",
            ]
        for p in group[0].ports:
            l4 = "tcp" if p.transport is Transport.TCP else "udp"
            rules.append(f"ip saddr @gateways4 ip daddr @{name}_v4 {l4} dport {p.port} accept")
            rules.append(f"ip6 saddr @gateways6 ip6 daddr @{name}_v6 {l4} dport {p.port} accept")
        for t in group:
            sets_of[t.host] = (*sets_of.get(t.host, ()), name)
            if t.match is not MatchMode.EXACT:
                wildcard_sets[t.host] = (*wildcard_sets.get(t.host, ()), name)
    chain = "\t\ttype filter hook forward priority filter; policy accept;"
    nft += ["", f"table inet {table} {{", *declarations, "\tchain forward {", chain, "\t}", "}"]
    if options.additive:
        # 'insert' puts each rule at the head of the chain, before the drop rules.
        nft += [f"insert rule inet {table} forward {rule}" for rule in reversed(rules)]
    else:
        nft += [
            f"flush chain inet {table} forward",
            f"table inet {table} {{",
            "\tchain forward {",
            chain,
            "\t\tct state established,related accept",
            *(f"\t\t{rule}" for rule in rules),
            "\t\tip saddr @gateways4 drop",
            "\t\tip6 saddr @gateways6 drop",
            "\t}",
            "}",
        ]
    dns = [f"# {line}".rstrip() for line in header(m, "dnsmasq nftset lines", [], ())]
    dns.append(f"# Sets live in table 'inet {table}' (see the nftables file).")
    for host in sorted(sets_of, key=lambda h: tuple(reversed(h.split(".")))):
        names = _inherited(host, sets_of, wildcard_sets)
        specs = ",".join(f"{fam}#inet#{table}#{n}_v{fam}" for n in names for fam in ("4", "6"))
        dns.append(f"nftset=/{host}/{specs}")
    files = (
        (f"{table}.nft", "\n".join(nft) + "\n"),
        (f"{table}-dnsmasq.conf", "\n".join(dns) + "\n"),
    )
    return RuleOutput("nftables", files, tuple(gaps))


def _inherited(
    host: str, sets_of: dict[str, tuple[str, ...]], wildcard_sets: dict[str, tuple[str, ...]]
) -> list[str]:
    """Sets for ``host``'s line: its own plus those of every wildcard domain above it.

    dnsmasq applies only the longest matching entry, so without this a name under both a
    wildcard ``example.com`` and ``api.example.com`` would get the latter's sets only.
    """
    names = list(sets_of[host])
    for other, sets in wildcard_sets.items():
        if host.endswith("." + other):
            names.extend(sets)
    return sorted(set(names))
