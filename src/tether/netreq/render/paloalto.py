"""Palo Alto Networks external dynamic list of type URL List (PAN-OS).

Semantics encoded here, from Palo Alto's "Guidelines for URL Category Exceptions" (Advanced URL
Filtering / PAN-OS 10.2+) and "Wildcard Guidelines for URL Category Exception Lists" (PAN-OS 7.1+):

* Entries are matched token by token; ``. / ? & = ; +`` separate tokens. ``*`` stands for one or
  more tokens, ``^`` for exactly one, and a wildcard must be a whole token.
* ``*.example.com/`` needs at least one subdomain: it matches ``news.example.com`` and
  ``a.b.example.com`` but not ``example.com``. The apex therefore gets its own ``example.com/``.
* A trailing slash limits an entry to that host (and its paths). Without it, releases before 10.2
  (or with the automatic slash disabled) match the entry as a prefix, so ``example.com`` would
  also admit ``example.com.evil.com``. Every entry here ends with ``/``, so both behaviours agree.
* A URL list decides on HTTP Host or TLS SNI, so only endpoints whose connection opens with a
  plain TLS ClientHello (https, wss, grpc, mqtts) can be admitted by it. Others (NTP, OpenVPN
  framing) need a security rule with an FQDN address object; they are reported as gaps.

The list carries no comments: PAN-OS treats every line as an entry.
"""

from __future__ import annotations

from tether.netreq.model import Manifest, MatchMode
from tether.netreq.render.plan import Gap, GapKind, RuleOptions, RuleOutput, plan

__all__ = ["render"]


def render(m: Manifest, options: RuleOptions) -> RuleOutput:
    entries: list[str] = []
    gaps: list[Gap] = []
    for t in plan(m, options):
        if not t.sni:
            protocols = ", ".join(sorted({e.protocol.value for e in t.endpoints}))
            gaps.append(
                t.gap(
                    GapKind.NOT_EXPRESSIBLE,
                    f"{protocols} is not filtered by URL; allow it with an FQDN address object",
                )
            )
            continue
        if t.match in (MatchMode.EXACT, MatchMode.APEX_AND_SUBDOMAINS):
            entries.append(f"{t.host}/")
        if t.match in (MatchMode.SUBDOMAINS, MatchMode.APEX_AND_SUBDOMAINS):
            entries.append(f"*.{t.host}/")
    text = "".join(f"{e}\n" for e in dict.fromkeys(entries))
    return RuleOutput("paloalto-edl", (("url-list.txt", text),), tuple(gaps))
