"""DHCP lease readers: systemd-networkd, NetworkManager and dhclient formats."""

from __future__ import annotations

from pathlib import Path

from tether.netcheck.dhcp import (
    Lease,
    ip_addresses,
    parse_dhclient,
    parse_networkd,
    read_leases,
)

NETWORKD = """\
# This is private data. Do not parse.
ADDRESS=192.0.2.10
NETMASK=255.255.255.0
ROUTER=192.0.2.1
SERVER_ADDRESS=192.0.2.1
LIFETIME=86400
DNS=192.0.2.53 192.0.2.54
NTP=192.0.2.123
DOMAINNAME=site.test
CAPTIVE_PORTAL=https://portal.site.test/api
CLIENTID=ff7b0e8c8700020000ab11
"""

DHCLIENT = """\
lease {
  interface "eth0";
  fixed-address 198.51.100.20;
  option subnet-mask 255.255.255.0;
  option routers 198.51.100.1;
  option domain-name-servers 198.51.100.53,198.51.100.54;
  option ntp-servers 198.51.100.123;
  option domain-name "old.test";
  renew 2 2026/11/17 10:00:00;
}
lease {
  interface "eth0";
  fixed-address 198.51.100.21;
  option routers 198.51.100.1;
  option domain-name-servers 198.51.100.55;
  option unknown-114 "https://portal.old.test/api";
  option domain-name "site.test";
  renew 3 2026/11/18 10:00:00;
}
lease {
  interface "wlan0";
  fixed-address 203.0.113.5;
  option domain-name-servers 203.0.113.1;
  option v4-captive-portal 68:74:74:70:73:3a:2f:2f:70:2e:74:65:73:74;
}
"""


def test_networkd_lease() -> None:
    lease = parse_networkd(NETWORKD, source="x", interface="eth0")
    assert lease == Lease(
        source="x",
        interface="eth0",
        address="192.0.2.10",
        routers=("192.0.2.1",),
        dns_servers=("192.0.2.53", "192.0.2.54"),
        ntp_servers=("192.0.2.123",),
        captive_portal="https://portal.site.test/api",
        domain="site.test",
    )


def test_dhclient_latest_lease_per_interface_wins() -> None:
    leases = {lease.interface: lease for lease in parse_dhclient(DHCLIENT)}
    assert set(leases) == {"eth0", "wlan0"}
    eth0 = leases["eth0"]
    assert eth0.address == "198.51.100.21"
    assert eth0.dns_servers == ("198.51.100.55",)
    assert eth0.ntp_servers == ()
    assert eth0.captive_portal == "https://portal.old.test/api"
    assert eth0.domain == "site.test"
    assert leases["wlan0"].captive_portal == "https://p.test"  # hex-encoded option value


def test_garbage_is_ignored() -> None:
    lease = parse_networkd("DNS=not-an-ip 192.0.2.1\nNTP=\n")
    assert lease.dns_servers == ("192.0.2.1",)
    assert lease.ntp_servers == ()
    assert parse_dhclient("nonsense { }") == []


def test_read_leases_from_every_known_place(tmp_path: Path) -> None:
    networkd = tmp_path / "run/systemd/netif/leases"
    networkd.mkdir(parents=True)
    (networkd / "2").write_text(NETWORKD)
    iface = tmp_path / "sys/class/net/enp1s0"
    iface.mkdir(parents=True)
    (iface / "ifindex").write_text("2\n")
    nm = tmp_path / "var/lib/NetworkManager"
    nm.mkdir(parents=True)
    (nm / "internal-0d3c-4f1e-wlan1.lease").write_text("DNS=192.0.2.99\n")
    dhcp = tmp_path / "var/lib/dhcp"
    dhcp.mkdir(parents=True)
    (dhcp / "dhclient.eth0.leases").write_text(DHCLIENT)

    leases = read_leases(tmp_path)
    by_iface = {lease.interface: lease for lease in leases}
    assert by_iface["enp1s0"].dns_servers == ("192.0.2.53", "192.0.2.54")
    assert by_iface["wlan1"].dns_servers == ("192.0.2.99",)
    assert by_iface["eth0"].dns_servers == ("198.51.100.55",)
    assert len(leases) == 4


def test_no_leases_anywhere(tmp_path: Path) -> None:
    assert read_leases(tmp_path) == []


def test_ip_addresses_keeps_each_address_once_in_order() -> None:
    given = ["10.0.0.2", "ntp.example", "::1", "10.0.0.2", "", "10.0.0.256"]
    assert ip_addresses(given) == ("10.0.0.2", "::1")


def test_lease_values_may_be_quoted_or_padded() -> None:
    lease = parse_networkd('DNS= "10.0.0.53"  10.0.0.54 10.0.0.53\nNTP=\n')
    assert lease.dns_servers == ("10.0.0.53", "10.0.0.54")
    assert lease.ntp_servers == ()
