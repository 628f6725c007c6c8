"""Azure Firewall policy rule collection group: application rules, plus network rules by FQDN.

Semantics encoded here, from the Azure Firewall FAQ ("How do wildcards work in target URLs and
target FQDNs in application rules?") and the network-rule FQDN filtering documentation:

* In an application rule, a target FQDN ``api.example.com`` matches that name only;
  ``*.example.com`` matches every name under example.com (the ``*`` stands for anything to its
  left, so any depth) but *not* example.com, which must be listed on its own. ``*example.com``
  (no dot) would also match look-alikes such as ``evilexample.com``; it is never generated.
* Application rules read TLS SNI (Https) or the Host header (Http), so only endpoints whose
  connection opens with a plain TLS ClientHello can be admitted by them. Other TCP/UDP endpoints
  get network rules with destination FQDNs, which take exact names only and need the firewall's
  DNS proxy enabled; wildcards there fall back to the manifest's known names, or are gaps.

The file is the ``properties`` of a ``Microsoft.Network/firewallPolicies/ruleCollectionGroups``
resource; replace the ``*`` source addresses by the gateways' subnet.
"""

from __future__ import annotations

import json
from typing import Any

from tether.netreq.model import Manifest, MatchMode, Transport
from tether.netreq.render.cisco_asa import exact_names
from tether.netreq.render.plan import (
    Gap,
    RuleOptions,
    RuleOutput,
    group_by_ports,
    plan,
    prefix_for,
)

__all__ = ["render"]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options)
    gaps: list[Gap] = []
    targets = plan(m, options)
    app_rules: list[dict[str, Any]] = []
    net_rules: list[dict[str, Any]] = []
    for key, group in group_by_ports([t for t in targets if t.sni]).items():
        fqdns: list[str] = []
        for t in group:
            if t.match in (MatchMode.EXACT, MatchMode.APEX_AND_SUBDOMAINS):
                fqdns.append(t.host)
            if t.match in (MatchMode.SUBDOMAINS, MatchMode.APEX_AND_SUBDOMAINS):
                fqdns.append(f"*.{t.host}")
        app_rules.append(
            {
                "ruleType": "ApplicationRule",
                "name": f"{prefix}-{key}",
                "description": f"{m.product}, manifest {m.version}",
                "sourceAddresses": ["*"],
                "protocols": [
                    {"protocolType": "Https", "port": p.port}
                    for p in group[0].ports
                    if p.transport is Transport.TCP
                ],
                "targetFqdns": list(dict.fromkeys(fqdns)),
            }
        )
    for key, group in group_by_ports([t for t in targets if not t.sni]).items():
        names: list[str] = []
        for t in group:
            hosts, gap = exact_names(t)
            if gap is not None:
                gaps.append(gap)
            names.extend(h for h in hosts if h not in names)
        if not names:
            continue
        net_rules.append(
            {
                "ruleType": "NetworkRule",
                "name": f"{prefix}-{key}",
                "description": f"{m.product}, manifest {m.version} (needs DNS proxy)",
                "sourceAddresses": ["*"],
                "ipProtocols": sorted({p.transport.value.upper() for p in group[0].ports}),
                "destinationFqdns": names,
                "destinationPorts": [str(p) for p in sorted({p.port for p in group[0].ports})],
            }
        )
    collections: list[dict[str, Any]] = []
    if net_rules:
        collections.append(_collection(f"{prefix}-network", 200, net_rules))
    if app_rules:
        collections.append(_collection(f"{prefix}-application", 300, app_rules))
    body = {"properties": {"priority": 500, "ruleCollections": collections}}
    text = json.dumps(body, indent=2) + "\n"
    return RuleOutput("azure-firewall", (("rule-collection-group.json", text),), tuple(gaps))


def _collection(name: str, priority: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ruleCollectionType": "FirewallPolicyFilterRuleCollection",
        "name": name,
        "priority": priority,
        "action": {"type": "Allow"},
        "rules": rules,
    }
