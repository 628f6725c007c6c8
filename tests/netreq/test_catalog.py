"""The shipped reference manifests describe the vendors' published facts."""

from __future__ import annotations

import pytest

from tether.netreq.catalog import REFERENCE_MANIFESTS, load_reference, reference_text
from tether.netreq.model import AppProtocol, CustomerData, Direction, MatchMode, Transport, problems


@pytest.mark.parametrize("name", REFERENCE_MANIFESTS)
def test_reference_manifests_are_valid(name: str) -> None:
    m = load_reference(name)
    assert problems(m) == []
    assert m.changes


def test_mapped_gateway() -> None:
    m = load_reference("mapped-gateway")
    assert len(m.current) == 14
    assert len(m.legacy) == 6
    cloudlink = m.endpoint("cloudlink")
    assert cloudlink.host == "cloudlink.mgmt.edge.mapped.com"
    assert cloudlink.protocol is AppProtocol.OPENVPN_TCP
    assert cloudlink.tls is not None
    assert cloudlink.tls.mutual
    assert m.endpoint("d2c").direction is Direction.UPLOAD
    assert m.endpoint("d2c").customer_data is CustomerData.TELEMETRY
    assert m.endpoint("legacy-balena").match is MatchMode.SUBDOMAINS
    assert all(e.replaced_by for e in m.legacy)
    assert all(p.port == 443 and p.transport is Transport.TCP for e in m.endpoints for p in e.ports)


def test_disruptive_technologies_connectors() -> None:
    gen2 = load_reference("dt-cloud-connector-2nd-gen")
    https = [e.host for e in gen2.endpoints if e.protocol is AppProtocol.HTTPS]
    assert https == [
        "ccon-manager.prod.disruptive-technologies.com",
        "est.prod.disruptive-technologies.com",
        "mender.prod.disruptive-technologies.com",
        "mender-artifacts.prod.disruptive-technologies.com",
    ]
    assert gen2.time.fallback_ntp == tuple(f"time{i}.google.com" for i in range(1, 5))
    older = load_reference("dt-cloud-connector-legacy")
    assert older.endpoint("balena-vpn").protocol is AppProtocol.OPENVPN_TCP
    assert older.endpoint("sds-receiver-grpc").protocol is AppProtocol.GRPC
    assert older.admits("3.resinio.pool.ntp.org")
    assert any("22222" in n for n in older.notes)


def test_unknown_reference() -> None:
    with pytest.raises(KeyError, match="one of"):
        reference_text("acme")
