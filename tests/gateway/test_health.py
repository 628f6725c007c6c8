"""What the agent reports about its host: the network identity (interfaces as the kernel lists
them, DNS and NTP servers from DHCP lease files), network rates, and one whole health report."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import psutil

from tether.gateway.health import NetCounter, collect_health, network_identity

DHCLIENT_LEASES = """\
lease {
  interface "eth0";
  fixed-address 192.168.50.23;
  option subnet-mask 255.255.255.0;
  option routers 192.168.50.1;
  option domain-name-servers 192.168.50.2,192.168.50.3;
  option ntp-servers 192.168.50.4;
  option domain-name "site.example";
  renew 2 2024/06/11 10:00:00;
}
lease {
  interface "eth0";
  fixed-address 192.168.50.23;
  option routers 192.168.50.1;
  option domain-name-servers 192.168.50.9;
  option ntp-servers 192.168.50.4, 192.168.50.5;
  renew 3 2024/06/12 10:00:00;
}
lease {
  interface "wlan0";
  fixed-address 10.9.0.7;
  option domain-name-servers 10.9.0.1, 192.168.50.9;
  option ntp-servers 10.9.0.1;
}
"""


def _sys_mac(name: str) -> str | None:
    try:
        return Path(f"/sys/class/net/{name}/address").read_text().strip()
    except OSError:
        return None


def test_network_identity_lists_the_interfaces_the_kernel_has(tmp_path: Path) -> None:
    identity = network_identity(lease_root=tmp_path)
    assert identity["hostname"] == socket.gethostname()
    interfaces = identity["interfaces"]
    assert set(interfaces) == set(psutil.net_if_addrs())
    lo = interfaces["lo"]
    assert "127.0.0.1" in lo["ipv4"]
    assert lo["up"] is True
    for name, entry in interfaces.items():
        for address in entry["ipv4"]:
            assert ipaddress.ip_address(address).version == 4
        for address in entry["ipv6"]:
            assert "%" not in address  # the zone is the interface itself
            assert ipaddress.ip_address(address).version == 6
        if (mac := _sys_mac(name)) is not None:
            assert entry["mac"] == mac, name  # the kernel's own record of the MAC
        assert isinstance(entry["up"], bool)
    # No lease files under this root: nothing advertised.
    assert identity["dhcp"] == {"dns_servers": [], "ntp_servers": []}


def test_network_identity_has_the_dns_and_ntp_servers_dhcp_advertised(tmp_path: Path) -> None:
    leases = tmp_path / "var/lib/dhcp"
    leases.mkdir(parents=True)
    (leases / "dhclient.leases").write_text(DHCLIENT_LEASES)
    dhcp = network_identity(lease_root=tmp_path)["dhcp"]
    # The newest lease of eth0 wins; wlan0's servers follow; repeats once.
    assert dhcp == {
        "dns_servers": ["192.168.50.9", "10.9.0.1"],
        "ntp_servers": ["192.168.50.4", "192.168.50.5", "10.9.0.1"],
    }


def test_a_changed_lease_changes_the_identity(tmp_path: Path) -> None:
    leases = tmp_path / "var/lib/dhcp"
    leases.mkdir(parents=True)
    lease = leases / "dhclient.eth0.leases"
    lease.write_text(DHCLIENT_LEASES)
    before = network_identity(lease_root=tmp_path)
    assert network_identity(lease_root=tmp_path) == before  # stable while nothing changes
    lease.write_text(DHCLIENT_LEASES.replace("192.168.50.9", "192.168.50.10"))
    after = network_identity(lease_root=tmp_path)
    assert after != before
    assert after["dhcp"]["dns_servers"] == ["192.168.50.10", "10.9.0.1"]
    assert after["interfaces"] == before["interfaces"]


def test_an_unreadable_lease_file_is_skipped(tmp_path: Path) -> None:
    leases = tmp_path / "var/lib/dhcp"
    leases.mkdir(parents=True)
    (leases / "dhclient.leases").mkdir()  # a directory where a file was expected
    assert network_identity(lease_root=tmp_path)["dhcp"] == {"dns_servers": [], "ntp_servers": []}


def test_network_rates_start_with_the_second_sample() -> None:
    counter = NetCounter()
    assert counter.sample() == {}  # one sample is no rate
    rates = counter.sample()
    assert set(rates) == {"rx_bps", "tx_bps"}
    assert all(isinstance(v, float) and v >= 0.0 for v in rates.values())
    assert counter.rates == rates


def test_a_health_report_has_every_section(tmp_path: Path) -> None:
    net = NetCounter()
    net.sample()
    report = collect_health(
        data_dir=str(tmp_path),
        net=net,
        link={"tier": "long-poll", "links_opened": 2, "last_error": None},
        spool={"observations": 12, "bytes": 4096, "oldest_ts": None, "dropped": 3},
        connectors={"sim": {"state": "running", "observations": 100}},
        uploader={"batches_sent": 4},
        time_sync={"clock": 1.0, "ntp_synchronized": False},
    )
    assert set(report) == {
        "system",
        "network",
        "link",
        "spool",
        "connectors",
        "uploader",
        "time",
    }
    system = report["system"]
    assert 0.0 <= system["cpu_percent"] <= 100.0 * (psutil.cpu_count() or 1)
    assert 0.0 < system["memory"]["percent"] <= 100.0
    assert system["memory"]["total"] == psutil.virtual_memory().total
    assert system["disk"]["path"] == str(tmp_path)
    assert 0.0 <= system["disk"]["percent"] <= 100.0
    temperatures = system["temperatures_c"] or {}
    assert system["temperature_max"] == (max(temperatures.values()) if temperatures else None)
    assert set(report["network"]) == {"rx_bps", "tx_bps"}
    assert report["link"]["tier"] == "long-poll"
    assert report["spool"]["dropped"] == 3
    assert report["connectors"]["sim"]["state"] == "running"
    assert report["time"]["ntp_synchronized"] is False
