"""DHCP lease readers: which resolvers, NTP servers and captive portal the network advertised.

Three lease formats cover the usual gateway operating systems:

* systemd-networkd: ``/run/systemd/netif/leases/<ifindex>``, ``KEY=value`` lines (``DNS=``,
  ``NTP=``, ``CAPTIVE_PORTAL=``); NetworkManager's internal client writes the same format to
  ``/var/lib/NetworkManager/internal-<uuid>-<iface>.lease``;
* ISC dhclient: ``lease { … }`` blocks in ``/var/lib/dhcp/dhclient*.leases`` (also used by
  NetworkManager as ``/var/lib/NetworkManager/dhclient-*.lease``); the newest block per
  interface wins.

DHCP options: 6 (DNS servers), 42 (NTP servers), 114 (captive-portal API, RFC 8910).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEASE_GLOBS",
    "Lease",
    "ip_addresses",
    "parse_dhclient",
    "parse_networkd",
    "read_leases",
]


@dataclass(frozen=True)
class Lease:
    source: str  # the file it came from
    interface: str = ""
    address: str = ""
    routers: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    ntp_servers: tuple[str, ...] = ()
    captive_portal: str | None = None
    domain: str = ""


# (glob relative to the root, format)
LEASE_GLOBS: tuple[tuple[str, str], ...] = (
    ("run/systemd/netif/leases/*", "networkd"),
    ("var/lib/NetworkManager/internal-*.lease", "networkd"),
    ("var/lib/NetworkManager/dhclient-*.lease", "dhclient"),
    ("var/lib/dhcp/dhclient*.leases", "dhclient"),
    ("var/lib/dhclient/*.lease*", "dhclient"),
)


def ip_addresses(values: Iterable[str]) -> tuple[str, ...]:
    """The *values* that are IP addresses, each once, in the order first seen; others dropped."""
    found: dict[str, None] = {}
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            continue
        found.setdefault(value)
    return tuple(found)


def _ips(values: Iterable[str]) -> tuple[str, ...]:
    """The addresses a lease lists (its values may be quoted or padded)."""
    return ip_addresses(value.strip().strip('"') for value in values)


def parse_networkd(text: str, *, source: str = "", interface: str = "") -> Lease:
    """A systemd-networkd (or NetworkManager internal) lease file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return Lease(
        source=source,
        interface=interface,
        address=values.get("ADDRESS", ""),
        routers=_ips(values.get("ROUTER", "").split()),
        dns_servers=_ips(values.get("DNS", "").split()),
        ntp_servers=_ips(values.get("NTP", "").split()),
        captive_portal=values.get("CAPTIVE_PORTAL") or None,
        domain=values.get("DOMAINNAME", ""),
    )


_BLOCK = re.compile(r"lease6?\s*\{(.*?)\n\s*\}", re.S)
_OPTION = re.compile(r"^\s*option\s+([\w-]+)\s+(.*?);\s*$", re.M)
_INTERFACE = re.compile(r'^\s*interface\s+"([^"]+)"\s*;', re.M)
_FIXED = re.compile(r"^\s*fixed-address\s+([^;]+);", re.M)
_CAPTIVE_OPTIONS = ("v4-captive-portal", "captive-portal", "unknown-114")


def _option_text(value: str) -> str:
    value = value.strip()
    if value.startswith('"') and value.endswith('"'):
        return value[1:-1]
    if re.fullmatch(r"([0-9a-fA-F]{1,2}:)+[0-9a-fA-F]{1,2}", value):  # dhclient hex form
        return bytes(int(b, 16) for b in value.split(":")).decode("utf-8", errors="replace")
    return value


def parse_dhclient(text: str, *, source: str = "") -> list[Lease]:
    """An ISC dhclient lease file: the last lease block per interface."""
    latest: dict[str, Lease] = {}
    for block in _BLOCK.findall(text):
        options = {name: value for name, value in _OPTION.findall(block)}
        iface_match = _INTERFACE.search(block)
        fixed = _FIXED.search(block)
        captive = next((options[o] for o in _CAPTIVE_OPTIONS if o in options), None)
        interface = iface_match.group(1) if iface_match else ""
        latest[interface] = Lease(
            source=source,
            interface=interface,
            address=fixed.group(1).strip() if fixed else "",
            routers=_ips(options.get("routers", "").split(",")),
            dns_servers=_ips(options.get("domain-name-servers", "").split(",")),
            ntp_servers=_ips(options.get("ntp-servers", "").split(",")),
            captive_portal=_option_text(captive) if captive else None,
            domain=_option_text(options.get("domain-name", "")),
        )
    return list(latest.values())


def _interface_name(ifindex: str, root: Path) -> str:
    if not ifindex.isdigit():
        return ""
    for dev in (root / "sys/class/net").glob("*/ifindex"):
        try:
            if dev.read_text().strip() == ifindex:
                return dev.parent.name
        except OSError:
            continue
    return ""


def read_leases(root: Path = Path("/")) -> list[Lease]:
    """Every current lease found under ``root`` (the file system root by default)."""
    leases: list[Lease] = []
    for pattern, fmt in LEASE_GLOBS:
        for path in sorted(root.glob(pattern)):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if fmt == "networkd":
                iface = _interface_name(path.name, root)
                if not iface and path.name.startswith("internal-"):
                    iface = path.stem.rsplit("-", 1)[-1]
                leases.append(parse_networkd(text, source=str(path), interface=iface))
            else:
                leases.extend(parse_dhclient(text, source=str(path)))
    return leases
