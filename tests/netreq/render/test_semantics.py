"""Every firewall format, read back with its vendor's semantics, admits exactly the manifest.

For each manifest (the shipped references, tether's own in both shapes, and a manifest built to
hit every corner) and each format, every candidate name is put to the format's matcher and to the
manifest. They must agree, except where the renderer declared a gap for that endpoint, and even
then look-alikes and siblings must always be rejected.
"""

from __future__ import annotations

import pytest
from tests.support.netreq import all_manifests, candidate_names, endpoint

from tether.netreq.model import Manifest, MatchMode
from tether.netreq.render import RULE_FORMATS, build_rules
from tether.netreq.render.plan import GapKind, RuleOptions, RuleOutput, plan
from tether.netreq.render.semantics import UnknownMatcher, matcher

MANIFESTS = all_manifests()


def _excused(m: Manifest, out: RuleOutput, name: str, *, want: bool) -> bool:
    """Whether a declared gap explains the matcher disagreeing with the manifest on ``name``.

    A missed manifest name is explained by a not-expressible or examples-only gap of an endpoint
    that stands for it. An extra name is explained only by a DNS-fed format's over-admission: a
    name under an exact host with an over-admits-children gap, or the apex of a subdomains-only
    endpoint with an over-admits-apex gap. Nothing explains a look-alike or a sibling.
    """
    for g in out.gaps:
        for ep in (m.endpoint(i) for i in g.endpoint_ids):
            if want and g.kind in (GapKind.NOT_EXPRESSIBLE, GapKind.EXAMPLES_ONLY):
                if ep.admits(name):
                    return True
            elif not want and g.kind is GapKind.OVER_ADMITS_CHILDREN:
                if name.endswith("." + ep.host):
                    return True
            elif not want and g.kind is GapKind.OVER_ADMITS_APEX and name == ep.host:
                return True
    return False


@pytest.mark.parametrize("fmt", RULE_FORMATS)
@pytest.mark.parametrize("manifest_name", sorted(MANIFESTS))
def test_rules_admit_exactly_the_manifest(fmt: str, manifest_name: str) -> None:
    m = MANIFESTS[manifest_name]
    out = build_rules(m, fmt)
    admits = matcher(fmt, out)
    disagreements = []
    for ep in m.endpoints:
        for probe in candidate_names(ep):
            want = m.admits(probe.name)
            got = admits(probe.name)
            if got == want:
                continue
            if (
                probe.kind in ("lookalike", "sibling")
                and got
                and not _under_any_host(m, probe.name)
            ):
                disagreements.append(f"{probe.name} ({probe.kind} of {ep.id}) admitted")
            elif not _excused(m, out, probe.name, want=want):
                disagreements.append(f"{probe.name} ({probe.kind} of {ep.id}): {got=} {want=}")
    assert disagreements == []


def _under_any_host(m: Manifest, name: str) -> bool:
    return any(name.endswith("." + e.host) for e in m.endpoints)


def _gap_kinds(out: RuleOutput, endpoint_id: str) -> set[GapKind]:
    return {g.kind for g in out.gaps if endpoint_id in g.endpoint_ids}


@pytest.mark.parametrize("fmt", RULE_FORMATS)
def test_look_alikes_never_pass(fmt: str) -> None:
    m = MANIFESTS["tricky"]
    admits = matcher(fmt, build_rules(m, fmt))
    for name in (
        "api.example.com.evil.com",
        "evilapi.example.com",
        "example.net.evil.com",
        "evilexample.net",
        "zz.example.com",  # sibling of the exact api.example.com
        "cdn.example.org.attacker.net",
        "edge.example.io.evil",
    ):
        assert not admits(name), name


@pytest.mark.parametrize("fmt", RULE_FORMATS)
def test_every_exact_current_sni_host_is_admitted_where_expressible(fmt: str) -> None:
    m = MANIFESTS["mapped-gateway"]
    out = build_rules(m, fmt)
    admits = matcher(fmt, out)
    for ep in m.current:
        if ep.match is MatchMode.EXACT and not _gap_kinds(out, ep.id) & {GapKind.NOT_EXPRESSIBLE}:
            assert admits(ep.host), ep.host


def test_exact_formats_close_every_gap_for_tethers_own_manifest() -> None:
    """tether's own manifest (one name on 443, proxy-friendly) fits every format without gaps."""
    m = MANIFESTS["tether-single"]
    for fmt in RULE_FORMATS:
        out = build_rules(m, fmt)
        assert [g for g in out.gaps if g.kind is not GapKind.OVER_ADMITS_CHILDREN] == [], fmt
        assert matcher(fmt, out)("tether.example.com"), fmt


def test_declared_gaps_are_real() -> None:
    """Each declared gap is visible in the rules: the format really misses or over-admits."""
    m = MANIFESTS["tricky"]
    for fmt in RULE_FORMATS:
        out = build_rules(m, fmt)
        admits = matcher(fmt, out)
        for gap in out.gaps:
            ep = m.endpoint(gap.endpoint_ids[0])
            members = [p.name for p in candidate_names(ep) if p.kind == "member"]
            if gap.kind is GapKind.OVER_ADMITS_CHILDREN:
                assert admits(f"x.{ep.host}"), (fmt, str(gap))
            elif gap.kind is GapKind.OVER_ADMITS_APEX:
                assert admits(ep.host), (fmt, str(gap))
            elif gap.kind is GapKind.EXAMPLES_ONLY:
                assert all(admits(x) for x in ep.examples), (fmt, str(gap))
                assert not admits(f"zz-unlisted.{ep.host}"), (fmt, str(gap))
            else:
                assert not all(admits(x) for x in members), (fmt, str(gap))


def test_options_drop_legacy_and_optional() -> None:
    m = MANIFESTS["tricky"]
    out = build_rules(m, "fqdn", RuleOptions(include_legacy=False, include_optional=False))
    admits = matcher("fqdn", out)
    assert admits("api.example.com")
    assert not admits("old.example.com")
    assert not admits("x.legacy.example.com")
    assert not admits("ntp.example.com")
    assert {t.host for t in plan(m, RuleOptions(include_legacy=False))} >= {"ntp.example.com"}


def test_unknown_matcher() -> None:
    with pytest.raises(UnknownMatcher):
        matcher("nope", build_rules(MANIFESTS["tricky"], "fqdn"))


# --- the matchers themselves encode the pitfalls the renderers avoid ------------------------------


def _one(fmt: str, text: str, name: str = "rules") -> RuleOutput:
    return RuleOutput(fmt, ((name, text),))


def test_paloalto_entry_without_trailing_slash_is_a_prefix() -> None:
    admits = matcher("paloalto-edl", _one("paloalto-edl", "example.com\n"))
    assert admits("example.com.evil.com")  # why every generated entry ends with '/'
    slashed = matcher("paloalto-edl", _one("paloalto-edl", "example.com/\n*.example.com/\n"))
    assert slashed("example.com")
    assert slashed("a.b.example.com")
    assert not slashed("example.com.evil.com")
    assert not slashed("evilexample.com")


def test_paloalto_caret_is_one_token_and_star_needs_one() -> None:
    admits = matcher("paloalto-edl", _one("paloalto-edl", "^.example.com/\n"))
    assert admits("a.example.com")
    assert not admits("a.b.example.com")
    star = matcher("paloalto-edl", _one("paloalto-edl", "*.example.com/\n"))
    assert not star("example.com")


def test_azure_star_without_dot_admits_look_alikes() -> None:
    body = (
        '{"properties": {"ruleCollections": [{"action": {"type": "Allow"}, "rules": ['
        '{"ruleType": "ApplicationRule", "targetFqdns": ["*example.com"]}]}]}}'
    )
    admits = matcher("azure-firewall", _one("azure-firewall", body))
    assert admits("evilexample.com")  # why the renderer only ever writes '*.'


def test_squid_leading_dot_includes_the_apex() -> None:
    text = "acl d dstdomain .example.com\nhttp_access allow CONNECT d\n"
    admits = matcher("squid", _one("squid", text))
    assert admits("example.com")
    assert admits("a.example.com")
    assert not admits("evilexample.com")


def test_subdomains_only_rules_exclude_the_apex_where_the_vendor_can() -> None:
    m = Manifest(
        version="2026010101",
        publisher="p",
        product="p",
        endpoints=(endpoint("w", "example.com", MatchMode.SUBDOMAINS),),
    )
    for fmt in (
        "fqdn",
        "paloalto-edl",
        "fortigate",
        "squid",
        "aws-network-firewall",
        "azure-firewall",
    ):
        admits = matcher(fmt, build_rules(m, fmt))
        assert admits("a.example.com"), fmt
        assert not admits("example.com"), fmt


def test_dnsmasq_longest_match_keeps_the_parents_sets() -> None:
    m = MANIFESTS["tricky"]
    out = build_rules(m, "nftables")
    conf = out.file("-dnsmasq.conf")
    line = next(x for x in conf.splitlines() if x.startswith("nftset=/x.svc.example.com/"))
    assert "tcp443_v4" in line  # inherited from the wildcard parent svc.example.com
    assert "tcp8443_v4" in line
