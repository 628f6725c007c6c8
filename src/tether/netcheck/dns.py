"""DNS: resolve each endpoint's name through every resolver the gateway may use, one by one.

A gateway uses whatever resolver DHCP gave it, while the engineer's laptop may use another, so a
name that resolves "here" proves little. Each resolver is asked directly (dnspython, UDP with a
TCP retry on truncation) and its answer judged on its own.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from tether.netcheck.dhcp import ip_addresses

__all__ = [
    "Answer",
    "Outcome",
    "Resolver",
    "hosts_file_addresses",
    "parse_resolver",
    "resolve",
    "system_resolvers",
]


@dataclass(frozen=True)
class Resolver:
    """A DNS server the gateway may ask, and where we learnt of it."""

    address: str
    port: int = 53
    source: str = "user"  # "user", "system" (resolv.conf), "dhcp (<lease>)", "manifest"

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        where = f"{host}:{self.port}" if self.port != 53 else self.address
        return f"{where} ({self.source})"

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


def parse_resolver(text: str, *, source: str = "user") -> Resolver:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
    value = text.strip()
    port = 53
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad resolver {text!r}: expected [IPv6]:PORT")
            port = int(rest[1:])
    elif value.count(":") == 1:
        address, _, port_text = value.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad resolver port in {text!r}")
        port = int(port_text)
    else:
        address = value
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"bad resolver {text!r}: not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad resolver port in {text!r}")
    return Resolver(address=address, port=port, source=source)


def system_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[Resolver]:
    """The ``nameserver`` lines of resolv.conf (port 53)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            address = parts[1].split("%", 1)[0]  # drop an IPv6 zone
            try:
                found.append(parse_resolver(address, source="system"))
            except ValueError:
                continue
    return found


def dedupe(resolvers: Iterable[Resolver]) -> list[Resolver]:
    """First occurrence wins; later sources of the same server are merged into its label."""
    merged: dict[tuple[str, int], Resolver] = {}
    for r in resolvers:
        seen = merged.get(r.key)
        if seen is None:
            merged[r.key] = r
        elif r.source not in seen.source:
            merged[r.key] = Resolver(seen.address, seen.port, f"{seen.source}, {r.source}")
    return list(merged.values())


class Outcome(enum.StrEnum):
    OK = "ok"
    NXDOMAIN = "nxdomain"  # the name does not exist (for this resolver)
    NODATA = "nodata"  # the name exists without A/AAAA records
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TIMEOUT = "timeout"  # no answer at all
    ERROR = "error"


@dataclass(frozen=True)
class Answer:
    name: str
    resolver: Resolver
    outcome: Outcome
    addresses: tuple[str, ...] = ()
    detail: str = ""
    cname: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 4)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 6)


async def _query(name: str, rdtype: str, resolver: Resolver) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.flags |= dns.flags.RD
    response = await dns.asyncquery.udp(
        query, resolver.address, port=resolver.port, ignore_unexpected=True
    )
    if response.flags & dns.flags.TC:
        response = await dns.asyncquery.tcp(query, resolver.address, port=resolver.port)
    return response


def _addresses(response: dns.message.Message, rdtype: str) -> tuple[list[str], list[str]]:
    wanted = dns.rdatatype.from_text(rdtype)
    found: list[str] = []
    aliases: list[str] = []
    for rrset in response.answer:
        if rrset.rdtype == wanted:
            found.extend(r.to_text() for r in rrset)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            aliases.extend(r.to_text().rstrip(".") for r in rrset)
    return found, aliases


_RCODES = {
    dns.rcode.NXDOMAIN: Outcome.NXDOMAIN,
    dns.rcode.SERVFAIL: Outcome.SERVFAIL,
    dns.rcode.REFUSED: Outcome.REFUSED,
}


async def resolve(name: str, resolver: Resolver) -> Answer:
    """Ask ``resolver`` for A and AAAA of ``name``. Bound it with ``asyncio.timeout``."""
    try:
        responses = await asyncio.gather(
            _query(name, "A", resolver), _query(name, "AAAA", resolver)
        )
    except (dns.exception.DNSException, OSError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            return Answer(name, resolver, Outcome.TIMEOUT, detail="port unreachable (refused)")
        return Answer(name, resolver, Outcome.ERROR, detail=str(exc) or type(exc).__name__)
    addresses: list[str] = []
    aliases: list[str] = []
    failed: Answer | None = None  # the first query that got an error code
    notes: list[str] = []
    for response, rdtype in zip(responses, ("A", "AAAA"), strict=True):
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            text = dns.rcode.to_text(rcode)
            notes.append(f"{rdtype} query: {text}")
            if failed is None:
                failed = Answer(name, resolver, _RCODES.get(rcode, Outcome.ERROR), detail=text)
            continue
        found, cnames = _addresses(response, rdtype)
        addresses += found
        aliases += [c for c in cnames if c not in aliases]
    if addresses:
        # One family answered: the gateway uses it (getaddrinfo keeps what it got).
        detail = "; ".join(notes)
        return Answer(name, resolver, Outcome.OK, tuple(addresses), detail, cname=tuple(aliases))
    if failed is not None:
        return failed
    return Answer(name, resolver, Outcome.NODATA, cname=tuple(aliases))


def hosts_file_addresses(name: str, path: Path = Path("/etc/hosts")) -> tuple[str, ...]:
    """The addresses ``path`` (the hosts file getaddrinfo reads before DNS) gives ``name``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    wanted = name.lower().rstrip(".")
    given: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and wanted in (f.lower().rstrip(".") for f in fields[1:]):
            given.append(fields[0].split("%", 1)[0])  # without an IPv6 zone
    return ip_addresses(given)
