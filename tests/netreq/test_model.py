"""Manifest model: name semantics, versions and the semantic checks."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from tests.support.netreq import endpoint, tricky_manifest

from tether.netreq.model import (
    AppProtocol,
    Change,
    ChangeKind,
    Endpoint,
    Lifecycle,
    Manifest,
    MatchMode,
    PinKind,
    Port,
    Probe,
    ProbeKind,
    TimePolicy,
    TlsExpectation,
    Transport,
    host_matches,
    is_valid_hostname,
    is_valid_version,
    problems,
)


def _manifest(*endpoints: Endpoint, time: TimePolicy | None = None) -> Manifest:
    return msgspec.structs.replace(
        tricky_manifest(), endpoints=endpoints, time=time or TimePolicy()
    )


@pytest.mark.parametrize(
    ("match", "name", "expected"),
    [
        (MatchMode.EXACT, "example.com", True),
        (MatchMode.EXACT, "EXAMPLE.com.", True),
        (MatchMode.EXACT, "a.example.com", False),
        (MatchMode.SUBDOMAINS, "example.com", False),
        (MatchMode.SUBDOMAINS, "a.example.com", True),
        (MatchMode.SUBDOMAINS, "a.b.example.com", True),
        (MatchMode.APEX_AND_SUBDOMAINS, "example.com", True),
        (MatchMode.APEX_AND_SUBDOMAINS, "a.b.example.com", True),
        (MatchMode.APEX_AND_SUBDOMAINS, "evilexample.com", False),
        (MatchMode.APEX_AND_SUBDOMAINS, "example.com.evil.com", False),
    ],
)
def test_host_matches_on_whole_labels(match: MatchMode, name: str, expected: bool) -> None:
    assert host_matches("example.com", match, name) is expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("api.example.com", True),
        ("localhost", True),
        ("a-b.example.com", True),
        ("*.example.com", False),
        ("Example.com", False),
        ("example.com.", False),
        ("-a.example.com", False),
        ("192.0.2.1", False),
        ("a..b", False),
        ("", False),
    ],
)
def test_hostnames(name: str, ok: bool) -> None:
    assert is_valid_hostname(name) is ok


@pytest.mark.parametrize(
    ("version", "ok"),
    [("2026112101", True), ("2026022901", False), ("2024022901", True), ("202611210", False)],
)
def test_versions_are_real_dates(version: str, ok: bool) -> None:
    assert is_valid_version(version) is ok


def test_the_test_manifest_is_valid() -> None:
    assert problems(tricky_manifest()) == []


def _fields(m: Manifest) -> list[tuple[str, str]]:
    return [(p.entry, p.field) for p in problems(m)]


def test_problems_name_entry_and_field() -> None:
    bad_tls = msgspec.structs.replace(
        endpoint("a", "a.example.com"),
        tls=TlsExpectation(min_version="1.1", pin_sha256=("xyz",)),
    )
    assert _fields(_manifest(bad_tls)) == [
        ("endpoint 'a'", "tls.min_version"),
        ("endpoint 'a'", "tls.pin_sha256[0]"),
        ("endpoint 'a'", "tls.pin"),
    ]


def test_tls_required_exactly_for_tls_protocols() -> None:
    no_tls = msgspec.structs.replace(endpoint("a", "a.example.com"), tls=None)
    assert ("endpoint 'a'", "tls") in _fields(_manifest(no_tls))
    ntp_tls = msgspec.structs.replace(
        endpoint(
            "n",
            "ntp.example.com",
            protocol=AppProtocol.NTP,
            ports=(Port(port=123, transport=Transport.UDP),),
        ),
        tls=TlsExpectation(),
    )
    assert ("endpoint 'n'", "tls") in _fields(_manifest(ntp_tls))


def test_cross_references_are_checked() -> None:
    legacy = msgspec.structs.replace(
        endpoint("old", "old.example.com", lifecycle=Lifecycle.LEGACY), replaced_by=("nope",)
    )
    current_sunset = msgspec.structs.replace(
        endpoint("cur", "c.example.com"), sunset=dt.date(2030, 1, 1)
    )
    dup = endpoint("old", "dup.example.com")
    fields = _fields(
        _manifest(legacy, current_sunset, dup, time=TimePolicy(fallback_ntp=("pool.ntp.org",)))
    )
    assert ("endpoint 'old'", "replaced_by") in fields
    assert ("endpoint 'cur'", "sunset") in fields
    assert ("endpoint 'old'", "id") in fields
    assert ("time", "fallback_ntp[0]") in fields


def test_probe_hints_are_checked() -> None:
    no_path = msgspec.structs.replace(
        endpoint("a", "a.example.com"), probe=Probe(kind=ProbeKind.HTTPS, expect_status=(999,))
    )
    assert _fields(_manifest(no_path)) == [
        ("endpoint 'a'", "probe.path"),
        ("endpoint 'a'", "probe.expect_status[0]"),
    ]


def test_pinned_endpoints_cannot_tolerate_interception() -> None:
    ep = msgspec.structs.replace(
        endpoint("a", "a.example.com"),
        tls=TlsExpectation(pin=PinKind.CA, interception_tolerated=True),
    )
    assert _fields(_manifest(ep)) == [("endpoint 'a'", "tls.interception_tolerated")]


def test_change_log_checks_and_ordering() -> None:
    m = tricky_manifest()
    changes = (
        Change(
            version="2025010101",
            effective=dt.date(2025, 1, 1),
            kind=ChangeKind.ADDED,
            endpoint="exact",
            summary="a",
        ),
        Change(
            version="2026010101",
            effective=dt.date(2026, 1, 1),
            kind=ChangeKind.CHANGED,
            endpoint="apex",
            summary="b",
        ),
        Change(
            version="2027010101",
            effective=dt.date(2027, 1, 1),
            kind=ChangeKind.ADDED,
            endpoint="ghost",
            summary="",
        ),
    )
    m = msgspec.structs.replace(m, changes=changes)
    assert _fields(m) == [
        ("change 3", "version"),
        ("change 3", "endpoint"),
        ("change 3", "summary"),
    ]
    assert [c.summary for c in m.changes_since("2025010101")] == ["", "b"]
    assert [c.summary for c in m.changes_since(None)] == ["", "b", "a"]


def test_endpoint_helpers() -> None:
    m = tricky_manifest()
    assert m.endpoint("apex").pattern == "example.net, *.example.net"
    assert m.endpoint("subs").pattern == "*.cdn.example.org"
    assert {e.id for e in m.legacy} == {"old", "old-wild"}
    assert m.admits("deep.x.example.net")
    assert not m.admits("example.org")
    assert AppProtocol.WSS.sends_sni
    assert not AppProtocol.OPENVPN_TCP.sends_sni
    with pytest.raises(KeyError):
        m.endpoint("missing")
