"""What every firewall format renders from: the manifest's names grouped into targets, and gaps.

A :class:`Target` is one (host, match mode) pair with the union of the ports its endpoints use. A
renderer turns targets into vendor syntax and reports a :class:`Gap` wherever the vendor cannot say
exactly what the manifest says (a wildcard on a firewall that only takes exact names, a non-TLS
protocol on a filter that reads TLS SNI, a DNS-fed set that cannot exclude subdomains…). The tests
hold each renderer to that contract: the rules admit exactly the manifest's names, except where a
gap says otherwise.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tether.netreq.model import Endpoint, Lifecycle, Manifest, MatchMode, Port, Requirement

__all__ = [
    "Gap",
    "GapKind",
    "RuleOptions",
    "RuleOutput",
    "Target",
    "header",
    "one_line",
    "plan",
    "port_key",
    "slug",
]


class GapKind(enum.StrEnum):
    NOT_EXPRESSIBLE = "not-expressible"  # nothing for this target is in the rules
    EXAMPLES_ONLY = "examples-only"  # a wildcard became its known concrete names
    OVER_ADMITS_CHILDREN = "over-admits-children"  # names under an exact host are admitted too
    OVER_ADMITS_APEX = "over-admits-apex"  # the host itself is admitted for a subdomains-only match


@dataclass(frozen=True)
class Gap:
    """Where a format cannot express a target exactly; shown to the user and checked by tests."""

    kind: GapKind
    host: str
    endpoint_ids: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return f"{self.host} ({', '.join(self.endpoint_ids)}): {self.message}"


@dataclass(frozen=True)
class RuleOptions:
    include_legacy: bool = True
    include_optional: bool = True
    prefix: str | None = None  # object-name prefix; default: derived from the publisher
    # Rules to add to a firewall that already runs the full set (the preflight's fixes): a
    # format that replaces what it manages on reload (nftables) then only adds.
    additive: bool = False


@dataclass(frozen=True)
class RuleOutput:
    """Rendered rules: one or more files, and the gaps the format could not close."""

    format: str
    files: tuple[tuple[str, str], ...]  # (file name, content)
    gaps: tuple[Gap, ...] = ()

    @property
    def text(self) -> str:
        """The single file's content, or every file behind a ``==> name <==`` line."""
        if len(self.files) == 1:
            return self.files[0][1]
        return "\n".join(f"==> {name} <==\n{content}" for name, content in self.files)

    def file(self, name_suffix: str) -> str:
        for name, content in self.files:
            if name.endswith(name_suffix):
                return content
        raise KeyError(name_suffix)


@dataclass(frozen=True)
class Target:
    """One (host, match) pair of the manifest with every port its endpoints use."""

    host: str
    match: MatchMode
    ports: tuple[Port, ...]
    endpoints: tuple[Endpoint, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.endpoints)

    @property
    def legacy(self) -> bool:
        return all(e.lifecycle is Lifecycle.LEGACY for e in self.endpoints)

    @property
    def sni(self) -> bool:
        """Every endpoint opens with a plain TLS ClientHello carrying SNI."""
        return all(e.protocol.sends_sni for e in self.endpoints)

    @property
    def proxy_ok(self) -> bool:
        return all(e.proxy_ok for e in self.endpoints)

    @property
    def examples(self) -> tuple[str, ...]:
        return tuple(sorted({x for e in self.endpoints for x in e.examples}))

    @property
    def pattern(self) -> str:
        return {
            MatchMode.EXACT: self.host,
            MatchMode.SUBDOMAINS: f"*.{self.host}",
            MatchMode.APEX_AND_SUBDOMAINS: f"{self.host} and *.{self.host}",
        }[self.match]

    def gap(self, kind: GapKind, message: str) -> Gap:
        return Gap(kind, self.pattern, self.ids, message)


def plan(m: Manifest, options: RuleOptions = RuleOptions()) -> list[Target]:
    """The manifest's endpoints in scope, grouped by (host, match); current before legacy."""
    picked: dict[tuple[str, MatchMode], list[Endpoint]] = {}
    for ep in m.endpoints:
        if ep.lifecycle is Lifecycle.LEGACY and not options.include_legacy:
            continue
        if ep.requirement is Requirement.OPTIONAL and not options.include_optional:
            continue
        picked.setdefault((ep.host, ep.match), []).append(ep)
    targets = [
        Target(
            host=host,
            match=match,
            ports=tuple(sorted({p for e in eps for p in e.ports}, key=_port_order)),
            endpoints=tuple(eps),
        )
        for (host, match), eps in picked.items()
    ]
    return sorted(targets, key=lambda t: (t.legacy, _dns_order(t.host), t.match.value))


def _port_order(p: Port) -> tuple[str, int]:
    return (p.transport.value, p.port)


def _dns_order(host: str) -> tuple[str, ...]:
    """Sort key grouping names by their parent domains (com.example.api)."""
    return tuple(reversed(host.split(".")))


def port_key(ports: Iterable[Port]) -> str:
    """A short name for a set of ports: ``tcp443``, ``udp123``, ``tcp443-tcp8443``."""
    return "-".join(f"{p.transport.value}{p.port}" for p in sorted(ports, key=_port_order))


def group_by_ports(targets: Sequence[Target]) -> dict[str, list[Target]]:
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(port_key(t.ports), []).append(t)
    return dict(sorted(groups.items()))


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str, sep: str = "-", limit: int = 20) -> str:
    """A short lowercase identifier for object names: ``Mapped Inc.`` → ``mapped-inc``."""
    out = _SLUG.sub(sep, text.lower()).strip(sep)[:limit].strip(sep)
    return out or "netreq"


def prefix_for(m: Manifest, options: RuleOptions, sep: str = "-", limit: int = 16) -> str:
    return slug(options.prefix or m.publisher, sep, limit)


def one_line(text: str) -> str:
    """``text`` with every control, line-break and format character replaced by a space.

    The loader already refuses such characters; this keeps a manifest built in code (or a
    future field) from ending a comment line and starting a live command in a configuration.
    """
    return "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )


def header(m: Manifest, title: str, semantics: Sequence[str], gaps: Sequence[Gap]) -> list[str]:
    """Comment lines (without the comment marker) that open every text format, one line each."""
    return [one_line(line) for line in _header(m, title, semantics, gaps)]


def _header(m: Manifest, title: str, semantics: Sequence[str], gaps: Sequence[Gap]) -> list[str]:
    lines = [
        f"{title} for {m.product} ({m.publisher}), manifest version {m.version}.",
        "Generated by tether from the network-requirements manifest; do not edit by hand,",
        "regenerate with `tether net rules` when the manifest changes.",
    ]
    if semantics:
        lines.append("")
        lines.extend(semantics)
    if gaps:
        lines.append("")
        lines.append("Not expressed exactly in this format:")
        lines.extend(f"  - {g}" for g in gaps)
    return lines
