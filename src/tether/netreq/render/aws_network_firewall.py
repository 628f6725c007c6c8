"""AWS Network Firewall stateful rule groups of type domain list (JSON for the AWS CLI).

Semantics encoded here, from the AWS Network Firewall API reference (``RulesSourceList``) and the
developer guide ("Stateful domain list rule groups"):

* ``Targets`` holds explicit names (``api.example.com`` matches only that name) and domain
  wildcards written with a leading dot (``.example.com`` matches example.com *and* every name
  under it). There is no subdomains-only form.
* HTTPS is matched on the TLS SNI and HTTP on the Host header (``TargetTypes``): connections that
  do not open with a plain TLS ClientHello (NTP, OpenVPN framing) cannot be admitted by a domain
  list and are reported as gaps (use a 5-tuple or Suricata rule group for them).
* A domain list does not look at ports.

For a subdomains-only endpoint whose apex nothing else needs, a second group with
``GeneratedRulesType = DENYLIST`` holds the apex; evaluate it before the allow list (strict rule
order, lower priority number) so the pair admits exactly the manifest's names.

Each file is input for ``aws network-firewall create-rule-group --cli-input-json file://…``.
"""

from __future__ import annotations

import json
from typing import Any

from tether.netreq.model import Manifest, MatchMode
from tether.netreq.render.plan import (
    Gap,
    GapKind,
    RuleOptions,
    RuleOutput,
    Target,
    plan,
    prefix_for,
)

__all__ = ["render"]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    prefix = prefix_for(m, options)
    gaps: list[Gap] = []
    usable: list[Target] = []
    for t in plan(m, options):
        if t.sni:
            usable.append(t)
        else:
            protocols = ", ".join(sorted({e.protocol.value for e in t.endpoints}))
            gaps.append(t.gap(GapKind.NOT_EXPRESSIBLE, f"{protocols} carries no TLS SNI"))
    wild = {t.host for t in usable if t.match is not MatchMode.EXACT}
    exact = {t.host for t in usable if t.match is not MatchMode.SUBDOMAINS}

    def covered(host: str, *, strict: bool) -> bool:
        return any(host.endswith("." + w) or (not strict and host == w) for w in wild)

    targets = [f".{w}" for w in wild if not covered(w, strict=True)]
    targets += [h for h in exact if not covered(h, strict=False)]
    deny = sorted(
        {
            t.host
            for t in usable
            if t.match is MatchMode.SUBDOMAINS
            and t.host not in exact
            and not covered(t.host, strict=True)
        },
        key=_order,
    )
    files = [
        (
            f"{prefix}-allow.json",
            _group(
                f"{prefix}-allow",
                "ALLOWLIST",
                sorted(targets, key=_order),
                f"Names the {m.product} needs (manifest {m.version}).",
            ),
        )
    ]
    if deny:
        files.append(
            (
                f"{prefix}-deny-apex.json",
                _group(
                    f"{prefix}-deny-apex",
                    "DENYLIST",
                    deny,
                    f"Apex names the {m.product} does not need; evaluate before {prefix}-allow.",
                ),
            )
        )
    return RuleOutput("aws-network-firewall", tuple(files), tuple(gaps))


def _group(name: str, kind: str, targets: list[str], description: str) -> str:
    body: dict[str, Any] = {
        "RuleGroupName": name,
        "Type": "STATEFUL",
        # Capacity counts rules; a domain list generates about one per target and target type.
        "Capacity": max(100, 4 * len(targets)),
        "Description": description[:512],
        "RuleGroup": {
            "RulesSource": {
                "RulesSourceList": {
                    "Targets": targets,
                    "TargetTypes": ["TLS_SNI", "HTTP_HOST"],
                    "GeneratedRulesType": kind,
                }
            }
        },
    }
    return json.dumps(body, indent=2) + "\n"


def _order(domain: str) -> tuple[str, ...]:
    return tuple(reversed(domain.lstrip(".").split(".")))
