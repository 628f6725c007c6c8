"""What the agent reports about itself and its host: system figures, network identity, time.

:func:`collect_health` builds one health report (a plain JSON-able document) from psutil and the
agent's own counters; :func:`network_identity` describes every interface (MAC, addresses, link
state) and the DNS/NTP servers DHCP advertised, and is sent at start and whenever it changes.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tether.gateway.handlers import collect_metrics

__all__ = ["NetCounter", "collect_health", "network_identity"]


@dataclass
class NetCounter:
    """Bytes/s received and sent since the previous sample (all interfaces but loopback)."""

    last: tuple[float, int, int] | None = None
    rates: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        counters = psutil.net_io_counters(pernic=True)
        rx = sum(c.bytes_recv for name, c in counters.items() if name != "lo")
        tx = sum(c.bytes_sent for name, c in counters.items() if name != "lo")
        now = time.monotonic()
        if self.last is not None and now > self.last[0]:
            span = now - self.last[0]
            self.rates = {
                "rx_bps": max(0.0, (rx - self.last[1]) / span),
                "tx_bps": max(0.0, (tx - self.last[2]) / span),
            }
        self.last = (now, rx, tx)
        return dict(self.rates)


def network_identity(lease_root: Path = Path("/")) -> dict[str, Any]:
    """Interfaces with their MAC, IPv4 and IPv6 addresses and link state; DHCP DNS/NTP."""
    from tether.netcheck.dhcp import read_leases

    stats = psutil.net_if_stats()
    interfaces: dict[str, dict[str, Any]] = {}
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        entry: dict[str, Any] = {
            "mac": None,
            "ipv4": [],
            "ipv6": [],
            "up": bool(stats[name].isup) if name in stats else None,
            "speed_mbps": stats[name].speed if name in stats else None,
        }
        for a in addresses:
            if a.family == psutil.AF_LINK:
                entry["mac"] = a.address
            elif a.family == socket.AF_INET:
                entry["ipv4"].append(a.address)
            elif a.family == socket.AF_INET6:
                entry["ipv6"].append(a.address.split("%")[0])
        interfaces[name] = entry
    dns: list[str] = []
    ntp: list[str] = []
    try:
        leases = read_leases(lease_root)
    except OSError:
        leases = []
    for lease in leases:
        dns += [s for s in lease.dns_servers if s not in dns]
        ntp += [s for s in lease.ntp_servers if s not in ntp]
    return {
        "hostname": socket.gethostname(),
        "interfaces": interfaces,
        "dhcp": {"dns_servers": dns, "ntp_servers": ntp},
    }


def collect_health(
    *,
    data_dir: str,
    net: NetCounter,
    link: dict[str, Any],
    spool: dict[str, Any],
    connectors: dict[str, Any],
    uploader: dict[str, Any],
    time_sync: dict[str, Any],
) -> dict[str, Any]:
    """One health report (blocking: psutil samples the CPU for 0.2 s)."""
    system = collect_metrics(data_dir)
    temperatures = system.get("temperatures_c") or {}
    system["temperature_max"] = max(temperatures.values()) if temperatures else None
    return {
        "system": system,
        "network": net.sample(),
        "link": link,
        "spool": spool,
        "connectors": connectors,
        "uploader": uploader,
        "time": time_sync,
    }
