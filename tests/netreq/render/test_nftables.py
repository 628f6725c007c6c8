"""nftables + dnsmasq output: accepted by the real ``nft -c`` and ``dnsmasq --test``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.netreq import all_manifests
from tests.support.testbed import netns

from tether.netreq.render import RuleOptions, build_rules
from tether.netreq.render.plan import GapKind

MANIFESTS = all_manifests()
NFT = shutil.which("nft") or "/usr/sbin/nft"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.root
@pytest.mark.skipif(not Path(NFT).exists(), reason="nft is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs CAP_NET_ADMIN")
@pytest.mark.parametrize("manifest_name", sorted(MANIFESTS))
def test_nft_accepts_the_ruleset(manifest_name: str, tmp_path: Path) -> None:
    out = build_rules(MANIFESTS[manifest_name], "nftables")
    path = tmp_path / "rules.nft"
    path.write_text(out.file(".nft"))
    result = _run(NFT, "-c", "-f", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.root
@pytest.mark.skipif(not Path(NFT).exists(), reason="nft is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs CAP_NET_ADMIN")
def test_nft_rejects_a_broken_ruleset(tmp_path: Path) -> None:
    """The check above can fail: a ruleset referring to a set that does not exist is refused."""
    text = build_rules(MANIFESTS["tricky"], "nftables").file(".nft")
    path = tmp_path / "broken.nft"
    path.write_text(text.replace("@tcp443_v4", "@no_such_set", 1))
    assert _run(NFT, "-c", "-f", str(path)).returncode != 0


@pytest.mark.skipif(not Path(DNSMASQ).exists(), reason="dnsmasq is not installed")
@pytest.mark.parametrize("manifest_name", sorted(MANIFESTS))
def test_dnsmasq_accepts_the_nftset_lines(manifest_name: str, tmp_path: Path) -> None:
    out = build_rules(MANIFESTS[manifest_name], "nftables")
    path = tmp_path / "dnsmasq.conf"
    path.write_text(out.file("-dnsmasq.conf"))
    result = _run(DNSMASQ, "--test", f"--conf-file={path}")
    assert result.returncode == 0, result.stderr
    assert "syntax check OK" in result.stderr


def test_every_set_the_dnsmasq_lines_fill_exists_and_is_used() -> None:
    out = build_rules(MANIFESTS["tricky"], "nftables")
    nft, conf = out.file(".nft"), out.file("-dnsmasq.conf")
    for line in conf.splitlines():
        if line.startswith("nftset="):
            for spec in line.rsplit("/", 1)[1].split(","):
                family, fam, table, name = spec.split("#")
                assert fam == "inet"
                assert table == "example_corp"
                assert f"set {name} {{" in nft
                assert f"daddr @{name} " in nft
                assert name.endswith(f"_v{family}")


def test_gaps_name_what_dns_fed_sets_cannot_exclude() -> None:
    out = build_rules(MANIFESTS["tricky"], "nftables")
    kinds = {(g.host, g.kind) for g in out.gaps}
    assert ("api.example.com", GapKind.OVER_ADMITS_CHILDREN) in kinds
    assert ("*.edge.example.io", GapKind.OVER_ADMITS_APEX) in kinds
    assert not any(g.kind is GapKind.NOT_EXPRESSIBLE for g in out.gaps)


@pytest.fixture
def site() -> Iterator[netns.Site]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with netns.site() as s:
        yield s


def _gateway_connects(site: netns.Site, address: str, port: int) -> bool:
    """Whether a TCP connection from the gateway's namespace to ``address:port`` opens."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=3).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    argv = site.exec_argv([sys.executable, "-c", code])
    return subprocess.run(argv, check=False, capture_output=True, timeout=30).returncode == 0


@pytest.mark.root
def test_reloading_keeps_the_sites_gateways_restricted(site: netns.Site) -> None:
    """The site's gateway addresses survive ``nft -f`` of the regenerated file, and so does the
    restriction; the additive fix of the preflight changes nothing else."""
    listener = socket.create_server((site.host_ips[1], 0))
    port = listener.getsockname()[1]
    try:
        rules = build_rules(MANIFESTS["tricky"], "nftables").file(".nft")
        table = site.load_firewall(rules)  # puts the gateway into gateways4
        assert not _gateway_connects(site, site.host_ips[1], port)  # not an allowed address

        path = site.directory / "reload.nft"
        path.write_text(rules)
        site.nft("-f", str(path))
        site.nft("-f", str(path))
        assert site.gateway_ip in site.nft("list", "set", "inet", table, "gateways4")
        chain = site.nft("list", "chain", "inet", table, "forward")
        assert chain.count("ip saddr @gateways4 drop") == 1
        assert chain.count("tcp dport 443 accept") == 2  # no duplicates after two reloads
        assert not _gateway_connects(site, site.host_ips[1], port)

        fix = build_rules(MANIFESTS["tricky"], "nftables", RuleOptions(additive=True))
        path.write_text(fix.file(".nft"))
        site.nft("-f", str(path))
        assert site.gateway_ip in site.nft("list", "set", "inet", table, "gateways4")
        chain = site.nft("list", "chain", "inet", table, "forward")
        assert chain.count("ip saddr @gateways4 drop") == 1
        assert chain.index("tcp dport 443 accept") < chain.index("ip saddr @gateways4 drop")
        assert not _gateway_connects(site, site.host_ips[1], port)

        # The probe can tell: without the gateway in the set, the same connection opens.
        site.nft("flush", "set", "inet", table, "gateways4")
        assert _gateway_connects(site, site.host_ips[1], port)
    finally:
        listener.close()


def test_no_output_deletes_or_flushes_what_the_site_filled() -> None:
    for fmt_options in (RuleOptions(), RuleOptions(additive=True)):
        text = build_rules(MANIFESTS["tricky"], "nftables", fmt_options).file(".nft")
        commands = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert not any(line.startswith(("delete", "flush table", "flush set")) for line in commands)
    additive = build_rules(MANIFESTS["tricky"], "nftables", RuleOptions(additive=True))
    assert "flush" not in additive.file(".nft").replace("# ", "")
