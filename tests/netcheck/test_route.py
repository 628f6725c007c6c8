"""Routes per IP family."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tether.netcheck.route import default_routes, family, route_source


def test_loopback_routes() -> None:
    assert route_source("127.0.0.1") == "127.0.0.1"
    assert family("127.0.0.1") == 4
    assert family("::1") == 6


def test_ipv6_loopback_route() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    assert route_source("::1") == "::1"


def test_default_routes_from_proc(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    (net / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    (net / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
    )
    assert default_routes(tmp_path) == (True, False)  # the IPv6 "default" on lo is unreachable

    (net / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00450003 eth0\n"
    )
    (net / "route").write_text("Iface\tDestination\n")
    assert default_routes(tmp_path) == (False, True)
    assert default_routes(tmp_path / "missing") == (False, False)
