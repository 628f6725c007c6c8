"""The human document's content (sections, tables, lists) for the Markdown and HTML renderers.

It is the familiar allowlist table sites receive from gateway vendors, generated instead of typed:
one table per service area with port, protocol, direction, customer data and use, then TLS and
proxy expectations, the legacy names, DNS and time, notes and the change log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.netreq.model import (
    AppProtocol,
    CustomerData,
    Direction,
    Endpoint,
    Lifecycle,
    Manifest,
    PinKind,
    Port,
    Requirement,
)

__all__ = ["Document", "Section", "Table", "build_document", "ports_text", "protocol_text"]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)
    bullets: list[str] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]


_DIRECTION = {
    Direction.UPLOAD: "↑ upload",
    Direction.DOWNLOAD: "↓ download",
    Direction.BOTH: "↕ both",
}
_DATA = {
    CustomerData.NONE: "none",
    CustomerData.METADATA: "yes: metadata",
    CustomerData.TELEMETRY: "yes: telemetry",
}
_PROTOCOL = {
    AppProtocol.HTTPS: "HTTPS",
    AppProtocol.WSS: "WebSocket",
    AppProtocol.GRPC: "gRPC",
    AppProtocol.MQTTS: "MQTT",
    AppProtocol.OPENVPN_TCP: "OpenVPN over TCP",
    AppProtocol.NTP: "NTP",
    AppProtocol.DNS: "DNS",
    AppProtocol.OTHER: "other",
}


def protocol_text(ep: Endpoint) -> str:
    name = _PROTOCOL[ep.protocol]
    return f"{name} (TLS {ep.tls.min_version}+)" if ep.tls is not None else name


def ports_text(ports: tuple[Port, ...]) -> str:
    return ", ".join(str(p) for p in ports)


def _host(ep: Endpoint) -> str:
    return ep.pattern


def build_document(m: Manifest) -> Document:
    sections: list[Section] = []
    ports = sorted({str(p) for e in m.endpoints for p in e.ports})
    overview = Section("Overview")
    if m.description:
        overview.paragraphs.append(m.description.strip())
    overview.bullets = [
        f"{len(m.current)} current endpoint{'s' if len(m.current) != 1 else ''}"
        + (f" and {len(m.legacy)} legacy" if m.legacy else "")
        + f"; ports used: {', '.join(ports)}.",
        "Every connection is opened by the gateway (outbound); no inbound rule is needed.",
        "Direction is the way data flows: ↑ from the gateway, ↓ to it, ↕ both.",
    ]
    sections.append(overview)

    endpoints = Section("Endpoints")
    areas: dict[str, list[Endpoint]] = {}
    for ep in m.current:
        areas.setdefault(ep.area, []).append(ep)
    for area, eps in areas.items():
        rows = tuple(
            (
                _host(e),
                ports_text(e.ports),
                protocol_text(e),
                _DIRECTION[e.direction],
                _DATA[e.customer_data],
                "required" if e.requirement is Requirement.REQUIRED else "optional",
                e.purpose,
                e.if_blocked,
            )
            for e in eps
        )
        headers = (
            "Hostname",
            "Port",
            "Protocol",
            "Direction",
            "Customer data",
            "Needed",
            "Use",
            "If blocked",
        )
        endpoints.tables.append((area[:1].upper() + area[1:], Table(headers, rows)))
    sections.append(endpoints)

    tls = Section("TLS and proxies")
    tls.paragraphs.append(
        "What the gateway expects of each TLS session. Where interception is not tolerated, "
        "exempt the name from TLS inspection; where a proxy is not supported, allow the "
        "connection directly."
    )
    tls_rows = tuple(
        (
            e.area,
            _host(e),
            f"{e.tls.min_version}+" if e.tls else "no TLS",
            ("yes" if e.tls.mutual else "no") if e.tls else "",
            _pin_text(e),
            ("tolerated" if e.tls.interception_tolerated else "not tolerated") if e.tls else "",
            "yes" if e.proxy_ok else "no",
        )
        for e in m.endpoints
        if e.lifecycle is Lifecycle.CURRENT
    )
    tls.tables.append(
        (
            "",
            Table(
                (
                    "Area",
                    "Hostname",
                    "TLS",
                    "Client certificate",
                    "Pinning",
                    "TLS interception",
                    "HTTP proxy",
                ),
                tls_rows,
            ),
        )
    )
    sections.append(tls)

    if m.legacy:
        legacy = Section("Legacy endpoints")
        legacy.paragraphs.append(
            "Used only by older gateways or software; remove them once none remain on site."
        )
        legacy_rows = tuple(
            (
                _host(e),
                ports_text(e.ports),
                e.purpose,
                ", ".join(_replacement(m, r) for r in e.replaced_by) or "—",
                e.sunset.isoformat() if e.sunset else "—",
            )
            for e in m.legacy
        )
        legacy.tables.append(
            ("", Table(("Hostname", "Port", "Use", "Replaced by", "Sunset"), legacy_rows))
        )
        sections.append(legacy)

    dns_time = Section("DNS and time")
    dns_parts = [_dhcp(m.dns.dhcp_options)]
    dns_parts.append(
        f"fallback resolvers {', '.join(m.dns.fallback_resolvers)}"
        if m.dns.fallback_resolvers
        else "no fallback resolvers"
    )
    dns_time.bullets.append(_sentence("DNS", dns_parts, m.dns.notes))
    time_parts = [_dhcp(m.time.dhcp_options)]
    if m.time.fallback_ntp:
        time_parts.append(f"fallback NTP {', '.join(m.time.fallback_ntp)} (UDP 123)")
    if m.time.https_date_fallback:
        hosts = ", ".join(m.time.https_date_hosts) or "its HTTPS endpoints"
        time_parts.append(f"without NTP, time comes from the HTTPS Date header of {hosts}")
    dns_time.bullets.append(_sentence("Time", time_parts, m.time.notes))
    sections.append(dns_time)

    if m.notes:
        sections.append(Section("Notes", bullets=list(m.notes)))

    changes = Section("Change log")
    if m.changes:
        change_rows = tuple(
            (c.version, c.effective.isoformat(), c.kind.value, c.endpoint, c.summary, c.impact)
            for c in m.changes_since(None)
        )
        changes.tables.append(
            (
                "",
                Table(
                    ("Version", "Effective", "Change", "Entry", "Summary", "What to do"),
                    change_rows,
                ),
            )
        )
    else:
        changes.paragraphs.append("No changes recorded.")
    sections.append(changes)

    return Document(
        title=f"Network requirements: {m.product}",
        subtitle=f"{m.publisher} · manifest version {m.version}",
        sections=sections,
    )


def _pin_text(ep: Endpoint) -> str:
    if ep.tls is None:
        return ""
    if ep.tls.pin is PinKind.NONE:
        return "web PKI"
    what = "platform CA" if ep.tls.pin is PinKind.CA else "server key"
    if ep.tls.pin_sha256:
        what += " (SPKI SHA-256 " + ", ".join(d[:16] + "…" for d in ep.tls.pin_sha256) + ")"
    return what


def _replacement(m: Manifest, endpoint_id: str) -> str:
    try:
        return m.endpoint(endpoint_id).pattern
    except KeyError:
        return endpoint_id


def _dhcp(options: tuple[int, ...]) -> str:
    if not options:
        return "DHCP options not stated"
    plural = "s" if len(options) > 1 else ""
    return f"DHCP option{plural} {', '.join(str(o) for o in options)} honoured"


def _sentence(label: str, parts: list[str], notes: str) -> str:
    return f"{label}: {'; '.join(parts)}." + (f" {notes}" if notes else "")
