"""Network-requirements manifest types: what a gateway needs from the site network (no I/O).

A :class:`Manifest` is a versioned list of :class:`Endpoint` entries plus the DNS and time policy
and a change log. It is the single source of truth from which the human document, every firewall
format, the gateway's endpoint list and the preflight probes are generated.

Every endpoint describes a connection the gateway *opens* (outbound). Nothing in a manifest asks a
site to accept an inbound connection; a vendor that listens on a local port says so in ``notes``.

Reading guide for consumers (the preflight check in particular):

* **Which names to probe**: :attr:`Endpoint.host` with :attr:`Endpoint.match`. For
  ``MatchMode.EXACT`` and ``MatchMode.APEX_AND_SUBDOMAINS`` the host itself is a real name. For
  ``MatchMode.SUBDOMAINS`` the host is only a suffix; probe the concrete names listed in
  :attr:`Endpoint.examples` (empty means: nothing concrete is known, skip).
* **Which ports**: :attr:`Endpoint.ports`, each with its transport (tcp/udp).
* **What to speak**: :attr:`Endpoint.protocol` (https, wss, ntp, …) and :attr:`Endpoint.probe`
  (see :class:`Probe`: the kind of check, request path and acceptable HTTP statuses).
* **TLS expectations**: :attr:`Endpoint.tls` is ``None`` exactly when the protocol does not run over
  TLS (NTP, DNS). Otherwise :class:`TlsExpectation` says the minimum version, whether a client
  certificate is presented (``mutual``), what is pinned (``pin``: nothing, a CA or the server key,
  with SHA-256 digests of the DER SubjectPublicKeyInfo in ``pin_sha256``) and whether a
  TLS-intercepting middlebox is tolerated (``interception_tolerated``). A probe that sees an
  unexpected issuer on an endpoint that does not tolerate interception should report interception.
* **Proxies**: :attr:`Endpoint.proxy_ok` is true when the endpoint works through an HTTP proxy
  using CONNECT; false means the site must allow the connection directly.
* **Lifecycle**: only ``Lifecycle.CURRENT`` endpoints matter for a new gateway; ``LEGACY`` ones are
  for older gateways (see ``replaced_by`` and ``sunset``).

Types are frozen :mod:`msgspec` structs; semantic checks that go beyond field types live in
:func:`problems` (the loader calls it and turns problems into errors naming file, entry and field).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
from collections.abc import Iterator

import msgspec

__all__ = [
    "SCHEMA",
    "TLS_PROTOCOLS",
    "AppProtocol",
    "Change",
    "ChangeKind",
    "CustomerData",
    "Direction",
    "DnsPolicy",
    "Endpoint",
    "Lifecycle",
    "Manifest",
    "MatchMode",
    "PinKind",
    "Port",
    "Probe",
    "ProbeKind",
    "Problem",
    "Requirement",
    "TimePolicy",
    "TlsExpectation",
    "Transport",
    "host_matches",
    "is_valid_hostname",
    "is_valid_version",
    "problems",
    "unsafe_character",
]

SCHEMA = 1
"""Version of the manifest *format* (not of a manifest's content, see :attr:`Manifest.version`)."""


class MatchMode(enum.StrEnum):
    """Which names an endpoint's ``host`` stands for."""

    EXACT = "exact"  # the host and nothing else
    APEX_AND_SUBDOMAINS = "apex-and-subdomains"  # the host and every name under it, any depth
    SUBDOMAINS = "subdomains"  # every name under the host, any depth, but not the host itself


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class AppProtocol(enum.StrEnum):
    """What the gateway speaks on the connection."""

    HTTPS = "https"
    WSS = "wss"  # WebSocket over TLS (starts as an HTTPS request with Upgrade)
    GRPC = "grpc"  # gRPC over HTTP/2 over TLS
    MQTTS = "mqtts"
    # OpenVPN framing on TCP: its TLS runs inside, no plain ClientHello appears on the wire
    OPENVPN_TCP = "openvpn-tcp"
    NTP = "ntp"
    DNS = "dns"
    OTHER = "other"

    @property
    def sends_sni(self) -> bool:
        """True when the connection opens with a plain TLS ClientHello carrying SNI.

        Firewalls that filter by name on the wire (SNI, HTTP Host) can only admit these.
        """
        return self in _SNI_PROTOCOLS


_SNI_PROTOCOLS = frozenset(
    {AppProtocol.HTTPS, AppProtocol.WSS, AppProtocol.GRPC, AppProtocol.MQTTS}
)

TLS_PROTOCOLS = frozenset(
    {
        AppProtocol.HTTPS,
        AppProtocol.WSS,
        AppProtocol.GRPC,
        AppProtocol.MQTTS,
        AppProtocol.OPENVPN_TCP,
    }
)
"""Protocols that run over TLS: endpoints speaking them must state a :class:`TlsExpectation`."""


class Direction(enum.StrEnum):
    """Which way the data flows (the connection itself is always opened by the gateway)."""

    UPLOAD = "upload"  # gateway → remote
    DOWNLOAD = "download"  # remote → gateway
    BOTH = "both"


class CustomerData(enum.StrEnum):
    """What customer data crosses the connection."""

    NONE = "none"  # no customer data: software, configuration, device health
    METADATA = "metadata"  # names and descriptions of customer things (devices, points, logs)
    TELEMETRY = "telemetry"  # measured values from customer equipment


class Requirement(enum.StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"


class Lifecycle(enum.StrEnum):
    CURRENT = "current"
    LEGACY = "legacy"  # still used by older gateways or software; see replaced_by / sunset


class PinKind(enum.StrEnum):
    """What the gateway pins when it checks the server certificate."""

    NONE = "none"  # ordinary web PKI validation against the system trust store
    CA = "ca"  # a specific CA must be in the chain (pin_sha256: that CA's SPKI digest)
    SPKI = "spki"  # the server's own key is pinned (pin_sha256: the leaf's SPKI digest)


class ProbeKind(enum.StrEnum):
    """How a preflight check proves an endpoint reachable, from weakest to strongest."""

    NONE = "none"  # nothing safe to probe (e.g. a wildcard without a concrete name)
    DNS = "dns"  # the name resolves
    TCP = "tcp"  # a TCP connection opens on each port
    TLS = "tls"  # a TLS handshake completes; the issuer is checked against ``tls``
    HTTPS = "https"  # an HTTPS request to ``path`` gets a status in ``expect_status``
    WEBSOCKET = "websocket"  # a WebSocket upgrade on ``path`` is answered (101, or expect_status)
    NTP = "ntp"  # an NTP query on UDP 123 is answered


class Port(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One destination port and its transport."""

    port: int
    transport: Transport = Transport.TCP

    def __str__(self) -> str:
        return f"{self.transport.value.upper()} {self.port}"


class TlsExpectation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the gateway expects of the TLS session; what a probe must verify."""

    min_version: str = "1.2"  # "1.2" or "1.3"
    mutual: bool = False  # the gateway presents a client certificate
    pin: PinKind = PinKind.NONE
    # SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex (64 characters) per entry. For
    # ``pin = "ca"`` / ``"spki"`` an empty tuple means "pinned, digest published elsewhere".
    pin_sha256: tuple[str, ...] = ()
    # True: the gateway still works when a middlebox re-signs the session with a site CA.
    interception_tolerated: bool = False
    alpn: tuple[str, ...] = ()  # ALPN protocols offered, e.g. ("h2",) or ("http/1.1",)


class Probe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A hint for the preflight check: how to prove this endpoint works from the site."""

    kind: ProbeKind = ProbeKind.TLS
    path: str | None = None  # request path for https / websocket probes
    # HTTP statuses that prove the endpoint was reached (empty: any HTTP response does).
    expect_status: tuple[int, ...] = ()
    note: str = ""


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One name (or family of names) the gateway connects to, and everything a site should know."""

    id: str  # stable identifier, lowercase letters, digits, '-', '.'
    area: str  # service area, e.g. "control", "ingest", "updates"
    purpose: str  # what it is for, one sentence
    host: str  # lowercase DNS name without trailing dot and without wildcard characters
    match: MatchMode = MatchMode.EXACT
    ports: tuple[Port, ...] = (Port(port=443),)
    protocol: AppProtocol = AppProtocol.HTTPS
    direction: Direction = Direction.BOTH
    customer_data: CustomerData = CustomerData.NONE
    requirement: Requirement = Requirement.REQUIRED
    if_blocked: str = ""  # what stops working when a site blocks it
    lifecycle: Lifecycle = Lifecycle.CURRENT
    replaced_by: tuple[str, ...] = ()  # ids of the endpoints that take over from a legacy one
    sunset: dt.date | None = None  # after this date the endpoint is no longer used
    tls: TlsExpectation | None = None  # None exactly when the protocol is not TLS
    proxy_ok: bool = False  # works through an HTTP proxy using CONNECT
    probe: Probe = Probe()
    examples: tuple[str, ...] = ()  # concrete names under a wildcard (for probes and exact lists)
    notes: str = ""

    def admits(self, name: str) -> bool:
        """Whether ``name`` is one of the names this endpoint stands for."""
        return host_matches(self.host, self.match, name)

    @property
    def is_wildcard(self) -> bool:
        return self.match is not MatchMode.EXACT

    @property
    def pattern(self) -> str:
        """The host as people usually write it: ``*.example.com`` for subdomains, etc."""
        if self.match is MatchMode.SUBDOMAINS:
            return f"*.{self.host}"
        if self.match is MatchMode.APEX_AND_SUBDOMAINS:
            return f"{self.host}, *.{self.host}"
        return self.host


class DnsPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the gateway finds a resolver."""

    dhcp_options: tuple[int, ...] = (6,)  # DHCP options honoured (6: DNS servers, 119: search)
    fallback_resolvers: tuple[str, ...] = ()  # resolver addresses used when DHCP gives none
    notes: str = ""


class TimePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the gateway gets the time (certificate checks need it)."""

    dhcp_options: tuple[int, ...] = (42,)  # DHCP options honoured (42: NTP servers)
    fallback_ntp: tuple[str, ...] = ()  # NTP names tried when DHCP gives none (must be endpoints)
    https_date_fallback: bool = False  # time from the Date header of an HTTPS endpoint
    https_date_hosts: tuple[str, ...] = ()  # which hosts answer that (must be endpoints)
    notes: str = ""


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


class Change(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of the change log: what changed in which manifest version."""

    version: str  # the manifest version that carries the change
    effective: dt.date  # from when gateways behave this way
    kind: ChangeKind
    endpoint: str  # endpoint id, or "dns" / "time" / "manifest" for the other sections
    summary: str
    impact: str = ""  # what a site must do about it ("" means nothing)


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A versioned network-requirements document for one gateway product."""

    schema: int = SCHEMA
    version: str  # YYYYMMDDNN: date of the revision and a two-digit serial
    publisher: str  # who runs the endpoints
    product: str  # which gateway this describes
    description: str = ""
    endpoints: tuple[Endpoint, ...]
    dns: DnsPolicy = DnsPolicy()
    time: TimePolicy = TimePolicy()
    notes: tuple[str, ...] = ()
    changes: tuple[Change, ...] = ()

    def endpoint(self, endpoint_id: str) -> Endpoint:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        raise KeyError(endpoint_id)

    @property
    def current(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.lifecycle is Lifecycle.CURRENT)

    @property
    def legacy(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.lifecycle is Lifecycle.LEGACY)

    def admits(self, name: str) -> bool:
        """Whether any endpoint stands for ``name``."""
        return any(e.admits(name) for e in self.endpoints)

    def changes_since(self, version: str | None) -> tuple[Change, ...]:
        """Change-log entries newer than ``version`` (all of them for ``None``), newest first."""
        picked = [c for c in self.changes if version is None or c.version > version]
        return tuple(sorted(picked, key=lambda c: (c.version, c.effective), reverse=True))


# --- semantic checks --------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_VERSION = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TLS_VERSIONS = ("1.2", "1.3")


def is_valid_hostname(name: str) -> bool:
    """A lowercase DNS name (RFC 1123 labels), no trailing dot, no wildcard, not an IP address."""
    if not name or len(name) > 253 or name.endswith("."):
        return False
    labels = name.split(".")
    # A numeric last label is an IPv4 literal, never a real top-level domain.
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def is_valid_version(version: str) -> bool:
    """``YYYYMMDDNN`` where the first eight digits are a real calendar date."""
    m = _VERSION.match(version)
    if m is None:
        return False
    try:
        dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def host_matches(host: str, match: MatchMode, name: str) -> bool:
    """The manifest's own name semantics: label-boundary suffix matching, case-insensitive."""
    name = name.lower().rstrip(".")
    host = host.lower()
    if match is MatchMode.EXACT:
        return name == host
    under = name.endswith("." + host)
    if match is MatchMode.SUBDOMAINS:
        return under
    return under or name == host


class Problem(msgspec.Struct, frozen=True):
    """A semantic problem: which entry (``endpoint 'id'``, ``dns``, ``change 2``…) and field."""

    entry: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.entry}: field '{self.field}': {self.message}"


# Characters that end a line or change how text is shown: a newline in a product name would
# become a live command in a firewall configuration that quotes the name in a comment.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Name-like fields (publisher, product, area) appear in object names, comments and quoted
# strings of every firewall format: they hold none of the characters those syntaxes give meaning.
_NAME_UNSAFE = frozenset('"`\\<>{};|$')
_NAME_FIELDS = frozenset({"publisher", "product", "area"})


def unsafe_character(text: str, *, name_like: bool = False) -> str | None:
    """The first character of ``text`` a manifest may not hold, shown as ``U+000A``; else None.

    Every text field is one line without control, line-separator or bidirectional-override
    characters; ``name_like`` fields also exclude quotes, backslash, ``<>{};|$`` and backticks.
    """
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp") or ch in _BIDI or (name_like and ch in _NAME_UNSAFE):
            return f"U+{ord(ch):04X}" + (f" {ch!r}" if ch.isprintable() else "")
    return None


def _text_problems(entry: str, struct: msgspec.Struct, prefix: str = "") -> Iterator[Problem]:
    """Every string field of ``struct`` (nested structs and tuples too) checked for safety."""
    for name in struct.__struct_fields__:
        if prefix == "" and name in ("endpoints", "changes", "dns", "time"):
            continue  # each is checked as its own entry
        value = getattr(struct, name)
        path = f"{prefix}{name}"
        if isinstance(value, msgspec.Struct):
            yield from _text_problems(entry, value, f"{path}.")
            continue
        items = value if isinstance(value, tuple) else (value,)
        for j, item in enumerate(items):
            if not isinstance(item, str):
                continue
            bad = unsafe_character(item, name_like=prefix == "" and name in _NAME_FIELDS)
            if bad is not None:
                where = f"{path}[{j}]" if isinstance(value, tuple) else path
                yield Problem(entry, where, f"contains the character {bad}, not allowed here")


def problems(m: Manifest) -> list[Problem]:
    """Every semantic problem in ``m`` (empty when it is valid), in document order."""
    return list(_problems(m))


def _problems(m: Manifest) -> Iterator[Problem]:
    if m.schema != SCHEMA:
        yield Problem("manifest", "schema", f"unsupported schema {m.schema} (this is {SCHEMA})")
    yield from _text_problems("manifest", m)
    yield from _text_problems("dns", m.dns)
    yield from _text_problems("time", m.time)
    for i, ch in enumerate(m.changes):
        yield from _text_problems(f"change {i + 1}", ch)
    if not is_valid_version(m.version):
        yield Problem("manifest", "version", f"{m.version!r} is not YYYYMMDDNN")
    if not m.endpoints:
        yield Problem("manifest", "endpoints", "a manifest lists at least one endpoint")
    ids: set[str] = set()
    for i, ep in enumerate(m.endpoints):
        entry = _endpoint_entry(i, ep)
        if ep.id in ids:
            yield Problem(entry, "id", "duplicate endpoint id")
        ids.add(ep.id)
        yield from _endpoint_problems(entry, ep)
    for i, ep in enumerate(m.endpoints):
        entry = _endpoint_entry(i, ep)
        for ref in ep.replaced_by:
            if ref not in ids:
                yield Problem(entry, "replaced_by", f"no endpoint with id {ref!r}")
    for i, resolver in enumerate(m.dns.fallback_resolvers):
        if not resolver:
            yield Problem("dns", f"fallback_resolvers[{i}]", "empty resolver address")
    for i, name in enumerate(m.time.fallback_ntp):
        if not any(e.admits(name) and _has_port(e, 123, Transport.UDP) for e in m.endpoints):
            yield Problem(
                "time", f"fallback_ntp[{i}]", f"{name!r} is not covered by an endpoint on UDP 123"
            )
    for i, name in enumerate(m.time.https_date_hosts):
        if not any(e.admits(name) and e.tls is not None for e in m.endpoints):
            yield Problem(
                "time", f"https_date_hosts[{i}]", f"{name!r} is not covered by a TLS endpoint"
            )
    if m.time.https_date_hosts and not m.time.https_date_fallback:
        yield Problem("time", "https_date_hosts", "listed but https_date_fallback is false")
    known_sections = ids | {"dns", "time", "manifest"}
    for i, ch in enumerate(m.changes):
        entry = f"change {i + 1}"
        if not is_valid_version(ch.version):
            yield Problem(entry, "version", f"{ch.version!r} is not YYYYMMDDNN")
        elif ch.version > m.version:
            yield Problem(entry, "version", f"{ch.version} is newer than the manifest {m.version}")
        if ch.kind is not ChangeKind.REMOVED and ch.endpoint not in known_sections:
            yield Problem(entry, "endpoint", f"no endpoint with id {ch.endpoint!r}")
        if not ch.summary:
            yield Problem(entry, "summary", "empty")


def _endpoint_entry(index: int, ep: Endpoint) -> str:
    return f"endpoint {ep.id!r}" if ep.id else f"endpoint #{index + 1}"


def _has_port(ep: Endpoint, number: int, transport: Transport) -> bool:
    return any(p.port == number and p.transport is transport for p in ep.ports)


def _endpoint_problems(entry: str, ep: Endpoint) -> Iterator[Problem]:
    yield from _text_problems(entry, ep)
    if not _ID.match(ep.id):
        yield Problem(entry, "id", "use lowercase letters, digits, '-' and '.' (max 63)")
    if not ep.area:
        yield Problem(entry, "area", "empty")
    if not ep.purpose:
        yield Problem(entry, "purpose", "empty")
    if not is_valid_hostname(ep.host):
        hint = " (express wildcards with 'match')" if "*" in ep.host else ""
        yield Problem(entry, "host", f"{ep.host!r} is not a lowercase DNS name{hint}")
    if not ep.ports:
        yield Problem(entry, "ports", "at least one port")
    for j, p in enumerate(ep.ports):
        if not 1 <= p.port <= 65535:
            yield Problem(entry, f"ports[{j}].port", f"{p.port} is not in 1..65535")
    if ep.protocol in TLS_PROTOCOLS and ep.tls is None:
        yield Problem(entry, "tls", f"{ep.protocol.value} runs over TLS: state its expectations")
    if ep.protocol not in TLS_PROTOCOLS and ep.protocol is not AppProtocol.OTHER and ep.tls:
        yield Problem(entry, "tls", f"{ep.protocol.value} does not run over TLS")
    if ep.protocol is AppProtocol.NTP and not _has_port(ep, 123, Transport.UDP):
        yield Problem(entry, "ports", "NTP needs UDP 123")
    if ep.proxy_ok and any(p.transport is Transport.UDP for p in ep.ports):
        yield Problem(entry, "proxy_ok", "UDP cannot pass an HTTP proxy")
    if ep.tls is not None:
        if ep.tls.min_version not in _TLS_VERSIONS:
            yield Problem(entry, "tls.min_version", f"{ep.tls.min_version!r} is not 1.2 or 1.3")
        for j, digest in enumerate(ep.tls.pin_sha256):
            if not _HEX64.match(digest):
                yield Problem(entry, f"tls.pin_sha256[{j}]", "not 64 lowercase hex digits")
        if ep.tls.pin_sha256 and ep.tls.pin is PinKind.NONE:
            yield Problem(entry, "tls.pin", "digests given but pin is 'none'")
        if ep.tls.pin is not PinKind.NONE and ep.tls.interception_tolerated:
            yield Problem(
                entry, "tls.interception_tolerated", "a pinned endpoint cannot tolerate it"
            )
    if ep.lifecycle is Lifecycle.CURRENT and (ep.replaced_by or ep.sunset):
        field = "replaced_by" if ep.replaced_by else "sunset"
        yield Problem(entry, field, "only legacy endpoints are replaced or sunset")
    if ep.id in ep.replaced_by:
        yield Problem(entry, "replaced_by", "an endpoint cannot replace itself")
    for j, example in enumerate(ep.examples):
        if not ep.admits(example) or not is_valid_hostname(example):
            yield Problem(entry, f"examples[{j}]", f"{example!r} is not a name under {ep.host}")
    if ep.probe.kind in (ProbeKind.HTTPS, ProbeKind.WEBSOCKET):
        if ep.tls is None:
            yield Problem(entry, "probe.kind", f"{ep.probe.kind.value} probe needs TLS")
        if not (ep.probe.path or "").startswith("/"):
            yield Problem(entry, "probe.path", "an HTTP probe needs a path starting with '/'")
    if ep.probe.kind is ProbeKind.NTP and ep.protocol is not AppProtocol.NTP:
        yield Problem(entry, "probe.kind", "ntp probe on a non-NTP endpoint")
    if ep.probe.kind is ProbeKind.TLS and ep.tls is None and ep.protocol not in TLS_PROTOCOLS:
        yield Problem(entry, "probe.kind", "tls probe on a non-TLS endpoint")
    for j, status in enumerate(ep.probe.expect_status):
        if not 100 <= status <= 599:
            yield Problem(entry, f"probe.expect_status[{j}]", f"{status} is not an HTTP status")
