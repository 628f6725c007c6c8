"""Golden files for every document and firewall format, from the shipped manifests.

Run with ``TETHER_UPDATE_GOLDEN=1`` to rewrite them after an intended change, then review the
diff: each file is what a site would paste into its firewall.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from tests.support.netreq import own_single

from tether.netreq.catalog import REFERENCE_MANIFESTS, load_reference
from tether.netreq.model import Manifest
from tether.netreq.render import (
    DOCUMENT_FORMATS,
    RULE_FORMATS,
    UnknownFormat,
    build_rules,
    render_document,
    render_rules,
)

GOLDEN = Path(__file__).parent.parent / "golden"
UPDATE = os.environ.get("TETHER_UPDATE_GOLDEN") == "1"
MANIFESTS = (*REFERENCE_MANIFESTS, "tether")


def _manifest(name: str) -> Manifest:
    return own_single() if name == "tether" else load_reference(name)


def _check(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with TETHER_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs"


@pytest.mark.parametrize("fmt", RULE_FORMATS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_rules_match_golden_files(name: str, fmt: str) -> None:
    out = build_rules(_manifest(name), fmt)
    for file_name, content in out.files:
        _check(GOLDEN / name / "rules" / fmt / file_name, content)


@pytest.mark.parametrize("fmt", DOCUMENT_FORMATS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_documents_match_golden_files(name: str, fmt: str) -> None:
    _check(
        GOLDEN / name / "docs" / f"network-requirements.{fmt}",
        render_document(_manifest(name), fmt),
    )


def test_rendering_is_deterministic() -> None:
    for name in MANIFESTS:
        for fmt in RULE_FORMATS:
            assert render_rules(_manifest(name), fmt) == render_rules(_manifest(name), fmt)


def test_unknown_formats_name_the_known_ones() -> None:
    m = _manifest("tether")
    with pytest.raises(UnknownFormat, match="one of fqdn, fqdn-exact"):
        render_rules(m, "iptables")
    with pytest.raises(UnknownFormat, match="one of md, html, csv, json"):
        render_document(m, "pdf")


def test_several_files_are_shown_one_after_another() -> None:
    text = render_rules(_manifest("tether"), "nftables")
    assert text.startswith("==> tether.nft <==\n")
    assert "\n==> tether-dnsmasq.conf <==\n" in text


def _hostile() -> Manifest:
    """A manifest built in code (no loader) with line breaks in every free-text field."""
    base = own_single()
    evil = "Acme gateway\nflush ruleset\n#"
    return msgspec.structs.replace(
        base,
        product=evil,
        publisher="pub\n}\ntable inet x {",
        description=evil,
        endpoints=tuple(
            msgspec.structs.replace(e, purpose=evil, area="ar\rea\nx", notes=evil)
            for e in base.endpoints
        ),
    )


@pytest.mark.parametrize("fmt", RULE_FORMATS)
def test_free_text_never_starts_a_line_of_configuration(fmt: str) -> None:
    """Renderers keep manifest text on its comment line even when the loader was bypassed."""
    out = build_rules(_hostile(), fmt)
    for _, content in out.files:
        lines = [line.strip() for line in content.splitlines()]
        assert "flush ruleset" not in lines
        assert not any(line.startswith(("table inet x", "}")) and "{" in line for line in lines)
        assert not any("Acme" in line and "flush" not in line for line in lines)


def test_cisco_asa_permits_dns_ntp_and_ipv6_like_the_other_formats() -> None:
    manifest = own_single()
    text = build_rules(manifest, "cisco-asa").text
    acl = [line for line in text.splitlines() if line.startswith("access-list ")]
    assert "access-list tether-out extended permit udp any any eq domain" in acl
    assert "access-list tether-out extended permit tcp any any eq domain" in acl
    assert 42 in manifest.time.dhcp_options
    assert "access-list tether-out extended permit udp any any eq ntp" in acl
    for host in {e.host for e in manifest.endpoints}:
        assert f" fqdn v4 {host}" in text
        assert f" fqdn v6 {host}" in text
