"""Squid ACLs: accepted by the real ``squid -k parse``, and shaped as Squid requires."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support.netreq import all_manifests

from tether.netreq.render import build_rules
from tether.netreq.render.plan import GapKind
from tether.netreq.render.semantics import matcher

MANIFESTS = all_manifests()
SQUID = shutil.which("squid") or "/usr/sbin/squid"


def _parse(tmp_path: Path, acl_text: str) -> subprocess.CompletedProcess[str]:
    acl = tmp_path / "acl.conf"
    acl.write_text(acl_text)
    conf = tmp_path / "squid.conf"
    conf.write_text(
        "http_port 127.0.0.1:3128\n"
        "pid_filename none\n"
        "cache_log /dev/null\n"
        "access_log none\n"
        f"include {acl}\n"
        "http_access deny all\n"
    )
    return subprocess.run(
        [SQUID, "-k", "parse", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not Path(SQUID).exists(), reason="squid is not installed")
@pytest.mark.parametrize("manifest_name", sorted(MANIFESTS))
def test_squid_parses_the_acls(manifest_name: str, tmp_path: Path) -> None:
    out = build_rules(MANIFESTS[manifest_name], "squid")
    result = _parse(tmp_path, out.text)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    if "acl " in out.text:
        assert "Processing: acl " in result.stderr  # the snippet really was read


@pytest.mark.skipif(not Path(SQUID).exists(), reason="squid is not installed")
def test_squid_refuses_overlapping_entries(tmp_path: Path) -> None:
    """Why covered entries are dropped: Squid 5 treats them as fatal."""
    result = _parse(tmp_path, "acl a dstdomain .example.com example.com\n")
    assert result.returncode != 0


def test_covered_entries_are_left_out() -> None:
    text = build_rules(MANIFESTS["tricky"], "squid").text
    dst = next(line for line in text.splitlines() if line.startswith("acl example_corp_tcp443_dst"))
    entries = dst.split()[3:]
    assert ".svc.example.com" in entries
    assert "x.svc.example.com" not in entries  # on 8443 in its own ACL; not covered here
    assert ".data.example.com" in entries
    assert "data.example.com" not in entries


def test_subdomains_only_gets_an_exclusion() -> None:
    text = build_rules(MANIFESTS["tricky"], "squid").text
    line = next(x for x in text.splitlines() if x.startswith("acl example_corp_tcp443_not "))
    excluded = line.split()[3:]
    assert "edge.example.io" in excluded
    assert "cdn.example.org" in excluded
    assert "data.example.com" not in excluded
    assert "http_access allow CONNECT example_corp_tcp443_dst" in text
    admits = matcher("squid", build_rules(MANIFESTS["tricky"], "squid"))
    assert admits("x.edge.example.io")
    assert not admits("edge.example.io")
    assert admits("data.example.com")  # its apex is wanted by another endpoint


def test_udp_and_direct_only_endpoints_are_gaps() -> None:
    out = build_rules(MANIFESTS["tricky"], "squid")
    gaps = {g.endpoint_ids: g.kind for g in out.gaps}
    assert gaps == {("vpn",): GapKind.NOT_EXPRESSIBLE, ("ntp",): GapKind.NOT_EXPRESSIBLE}
