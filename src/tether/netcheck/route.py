"""Routes: does this machine have a path towards an address, per IP family.

Asking the kernel is enough and sends nothing: ``connect()`` on a UDP socket selects a route and
a source address, or fails with "network unreachable". IPv4 and IPv6 are judged separately, and
IPv6 only where a route exists (many sites have none, which is fine).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

__all__ = ["default_routes", "family", "route_source"]


def family(address: str) -> int:
    """4 or 6."""
    return ipaddress.ip_address(address).version


def route_source(address: str) -> str | None:
    """The source address the kernel would use towards ``address``, or None without a route."""
    af = socket.AF_INET6 if family(address) == 6 else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))  # discard port; UDP connect sends nothing
        except OSError:
            return None
        return str(sock.getsockname()[0])


def default_routes(proc: Path = Path("/proc")) -> tuple[bool, bool]:
    """Whether an IPv4 and an IPv6 default route exist (from /proc/net)."""
    v4 = False
    try:
        for line in (proc / "net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
                v4 = True
    except OSError:
        pass
    v6 = False
    try:
        for line in (proc / "net/ipv6_route").read_text().splitlines():
            fields = line.split()
            default = len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00"
            if default and fields[9] != "lo":
                v6 = True
    except OSError:
        pass
    return v4, v6
