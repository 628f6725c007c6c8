"""tether's own manifest, generated from deployment settings."""

from __future__ import annotations

import pytest

from tether.netreq.loader import manifest_to_json
from tether.netreq.model import (
    AppProtocol,
    CustomerData,
    PinKind,
    ProbeKind,
    Requirement,
    Transport,
    problems,
)
from tether.netreq.own import (
    GATEWAY_AREAS,
    LINK_PATH,
    DeploymentSettings,
    SettingsError,
    build_own_manifest,
    own_changes,
)


def test_one_hostname_by_default() -> None:
    m = build_own_manifest(DeploymentSettings())
    assert [e.id for e in m.endpoints] == list(GATEWAY_AREAS)
    assert {e.host for e in m.endpoints} == {"tether.example.com"}
    assert {(p.transport, p.port) for e in m.endpoints for p in e.ports} == {(Transport.TCP, 443)}
    assert problems(m) == []
    assert m.time.https_date_fallback
    assert m.time.https_date_hosts == ("tether.example.com",)
    assert any("allowed or blocked together" in n for n in m.notes)


def test_same_settings_same_manifest_and_version() -> None:
    settings = DeploymentSettings(hostname="cloud.example.org", ntp_pools=("pool.ntp.org",))
    a = build_own_manifest(settings)
    b = build_own_manifest(
        DeploymentSettings(hostname="cloud.example.org", ntp_pools=("pool.ntp.org",))
    )
    assert manifest_to_json(a) == manifest_to_json(b)
    assert a.version == max(c.version for c in own_changes())


def test_per_area_hostnames_and_customer_data() -> None:
    m = build_own_manifest(
        DeploymentSettings(
            hostname="tether.example.com",
            area_hostnames={"ingest": "ingest.example.com", "console": "console.example.com"},
        )
    )
    ingest = m.endpoint("ingest")
    assert ingest.host == "ingest.example.com"
    assert ingest.customer_data is CustomerData.TELEMETRY
    assert ingest.probe.kind is ProbeKind.TLS  # not the primary host: no known HTTP path there
    assert m.endpoint("updates").customer_data is CustomerData.NONE
    assert all(e.host != "console.example.com" for e in m.endpoints)  # people, not gateways
    assert any("console.example.com" in n for n in m.notes)


def test_probe_hints_and_tls_expectations_for_the_preflight() -> None:
    m = build_own_manifest(DeploymentSettings(ca_spki_sha256="0f" * 32))
    control = m.endpoint("control")
    assert control.protocol is AppProtocol.WSS
    assert control.probe.kind is ProbeKind.WEBSOCKET
    assert control.probe.path == LINK_PATH
    assert m.endpoint("enrollment").probe.path == "/.well-known/est/cacerts"
    for e in m.endpoints:
        assert e.tls is not None
        assert e.tls.min_version == "1.3"
        assert e.tls.pin is PinKind.CA
        assert e.tls.pin_sha256 == ("0f" * 32,)
        assert not e.tls.interception_tolerated
        assert e.proxy_ok
    assert not m.endpoint("enrollment").tls.mutual  # type: ignore[union-attr]
    assert m.endpoint("control").tls.mutual  # type: ignore[union-attr]
    assert m.endpoint("support").requirement is Requirement.OPTIONAL


def test_ntp_pools_become_optional_udp_endpoints() -> None:
    m = build_own_manifest(DeploymentSettings(ntp_pools=("0.pool.ntp.org", "1.pool.ntp.org")))
    ntp = [e for e in m.endpoints if e.protocol is AppProtocol.NTP]
    assert [e.host for e in ntp] == ["0.pool.ntp.org", "1.pool.ntp.org"]
    assert all(e.requirement is Requirement.OPTIONAL and e.tls is None for e in ntp)
    assert m.time.fallback_ntp == ("0.pool.ntp.org", "1.pool.ntp.org")


def test_revision_can_only_raise_the_version() -> None:
    base = build_own_manifest(DeploymentSettings()).version
    assert build_own_manifest(DeploymentSettings(revision="2099010101")).version == "2099010101"
    assert build_own_manifest(DeploymentSettings(revision="2000010101")).version == base


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hostname": "Tether.Example.com"}, "hostname"),
        ({"port": 0}, "port"),
        ({"area_hostnames": {"billing": "b.example.com"}}, "hostnames.billing: unknown area"),
        ({"area_hostnames": {"ingest": "bad_host"}}, "hostnames.ingest"),
        ({"ntp_pools": ("*.pool.ntp.org",)}, "ntp_pools"),
        ({"ca_spki_sha256": "ABC"}, "ca_spki_sha256"),
        ({"revision": "tomorrow"}, "revision"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        DeploymentSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = DeploymentSettings(area_hostnames={"ingest": "i.example.com"})
    with pytest.raises(TypeError):
        settings.area_hostnames["ingest"] = "x.example.com"  # type: ignore[index]


def test_shipped_change_log() -> None:
    changes = own_changes()
    assert changes
    assert all(c.summary for c in changes)
    m = build_own_manifest(DeploymentSettings())
    assert m.changes == changes
