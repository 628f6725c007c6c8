"""TLS: real handshakes against the test bed, and the chain verdicts (pins, interception)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from tests.support.testbed.appserver import AppServer
from tests.support.testbed.certs import TestCA
from tests.support.testbed.mitm import MitmProxy
from tests.support.testbed.squid import Squid

from tether.netcheck.proxy import ProxyURL, connect_tunnel
from tether.netcheck.report import Status
from tether.netcheck.tls import (
    TlsSession,
    TrustAnchors,
    evaluate,
    hostname_matches,
    spki_sha256,
    start_tls,
)
from tether.netreq.model import PinKind, TlsExpectation

HOST = "api.site.test"
NOW = dt.datetime.now(dt.UTC)
PINNED_CA = TlsExpectation(min_version="1.2", pin=PinKind.CA)


def _session(
    ca: TestCA, names: list[str], *, version: str = "TLSv1.3", **kw: dt.datetime
) -> TlsSession:
    cert = ca.issue_server(names, **kw)
    return TlsSession(
        version=version,
        cipher="TLS_AES_256_GCM_SHA384",
        alpn="http/1.1",
        chain=(x509.load_pem_x509_certificate(cert.cert_pem), ca.cert),
    )


def test_chain_to_pinned_ca_passes(test_ca: TestCA) -> None:
    verdict = evaluate(
        _session(test_ca, [HOST]), HOST, PINNED_CA, TrustAnchors((test_ca.cert,)), now=NOW
    )
    assert verdict.status is Status.PASS
    assert "Tether Test CA" in verdict.finding
    assert verdict.details["version"] == "TLSv1.3"


def test_leaf_only_chain_still_reaches_the_pinned_ca(test_ca: TestCA) -> None:
    full = _session(test_ca, [HOST])
    leaf_only = TlsSession(full.version, full.cipher, full.alpn, full.chain[:1])
    verdict = evaluate(leaf_only, HOST, PINNED_CA, TrustAnchors((test_ca.cert,)), now=NOW)
    assert verdict.status is Status.PASS


def test_other_issuer_is_interception_named(test_ca: TestCA) -> None:
    inspector = TestCA(common_name="Contoso SSL Inspection CA", organisation="Contoso")
    verdict = evaluate(
        _session(inspector, [HOST]), HOST, PINNED_CA, TrustAnchors((test_ca.cert,)), now=NOW
    )
    assert verdict.status is Status.FAIL
    assert verdict.interception
    assert verdict.issuer == "Contoso SSL Inspection CA"
    assert "TLS interception" in verdict.finding
    assert "'Contoso SSL Inspection CA'" in verdict.finding
    assert "exempt api.site.test from TLS decryption" in verdict.fix


def test_interception_tolerated_is_a_warning(test_ca: TestCA) -> None:
    inspector = TestCA(common_name="Site Inspection")
    tolerant = TlsExpectation(interception_tolerated=True)
    verdict = evaluate(_session(inspector, [HOST]), HOST, tolerant, TrustAnchors(), now=NOW)
    assert verdict.status is Status.WARN
    assert verdict.interception


def test_unpinned_endpoint_uses_system_roots_plus_given_ca(test_ca: TestCA) -> None:
    unpinned = TlsExpectation()
    # Not in the system store: reported as interception by an untrusted issuer.
    alone = evaluate(_session(test_ca, [HOST]), HOST, unpinned, TrustAnchors(), now=NOW)
    assert alone.status is Status.FAIL
    assert "a CA this machine trusts" in alone.finding
    given = evaluate(
        _session(test_ca, [HOST]), HOST, unpinned, TrustAnchors((test_ca.cert,)), now=NOW
    )
    assert given.status is Status.PASS


def test_ca_pin_by_digest_without_ca_file(test_ca: TestCA) -> None:
    expectation = TlsExpectation(pin=PinKind.CA, pin_sha256=(spki_sha256(test_ca.cert),))
    good = evaluate(_session(test_ca, [HOST]), HOST, expectation, TrustAnchors(), now=NOW)
    assert good.status is Status.PASS
    other = evaluate(_session(TestCA(), [HOST]), HOST, expectation, TrustAnchors(), now=NOW)
    assert other.status is Status.FAIL


def test_ca_pin_unknown_is_a_warning_naming_the_issuer(test_ca: TestCA) -> None:
    verdict = evaluate(_session(test_ca, [HOST]), HOST, PINNED_CA, TrustAnchors(), now=NOW)
    assert verdict.status is Status.WARN
    assert "Tether Test CA" in verdict.finding
    assert "--ca" in verdict.fix


def test_spki_pin_on_the_leaf(test_ca: TestCA) -> None:
    session = _session(test_ca, [HOST])
    pinned = TlsExpectation(pin=PinKind.SPKI, pin_sha256=(spki_sha256(session.chain[0]),))
    assert evaluate(session, HOST, pinned, TrustAnchors(), now=NOW).status is Status.PASS
    wrong = TlsExpectation(pin=PinKind.SPKI, pin_sha256=("0" * 64,))
    assert evaluate(session, HOST, wrong, TrustAnchors(), now=NOW).status is Status.FAIL


def test_hostname_mismatch(test_ca: TestCA) -> None:
    verdict = evaluate(
        _session(test_ca, ["other.site.test"]),
        HOST,
        PINNED_CA,
        TrustAnchors((test_ca.cert,)),
        now=NOW,
    )
    assert verdict.status is Status.FAIL
    assert "not for api.site.test" in verdict.finding


def test_validity_against_the_local_clock(test_ca: TestCA) -> None:
    session = _session(test_ca, [HOST])
    anchors = TrustAnchors((test_ca.cert,))
    early = evaluate(session, HOST, PINNED_CA, anchors, now=NOW - dt.timedelta(days=400))
    assert early.status is Status.FAIL
    assert "not valid before" in early.finding
    assert "clock" in early.fix
    late = evaluate(session, HOST, PINNED_CA, anchors, now=NOW + dt.timedelta(days=400))
    assert late.status is Status.FAIL
    assert "expired" in late.finding


def test_version_below_the_minimum(test_ca: TestCA) -> None:
    verdict = evaluate(
        _session(test_ca, [HOST], version="TLSv1.2"),
        HOST,
        TlsExpectation(min_version="1.3", pin=PinKind.CA),
        TrustAnchors((test_ca.cert,)),
        now=NOW,
    )
    assert verdict.status is Status.FAIL
    assert "TLSv1.2" in verdict.finding


def test_hostname_matching(test_ca: TestCA) -> None:
    wildcard = x509.load_pem_x509_certificate(
        test_ca.issue_server(["*.site.test", "127.0.0.9"]).cert_pem
    )
    assert hostname_matches(wildcard, "api.site.test")
    assert not hostname_matches(wildcard, "a.b.site.test")
    assert not hostname_matches(wildcard, "site.test")
    assert hostname_matches(wildcard, "127.0.0.9")
    assert not hostname_matches(wildcard, "127.0.0.1")


async def test_real_handshake(app_factory: Callable[..., AppServer], test_ca: TestCA) -> None:
    app = app_factory([HOST])
    _, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        async with asyncio.timeout(10):
            session = await start_tls(writer, HOST)
    finally:
        writer.close()
    assert session.version == "TLSv1.3"
    assert session.alpn is None  # the test server offers no ALPN
    assert len(session.chain) == 2  # leaf and CA, as the server presents them
    verdict = evaluate(session, HOST, PINNED_CA, TrustAnchors((test_ca.cert,)), now=NOW)
    assert verdict.status is Status.PASS


async def test_mitmproxy_interception_is_detected_and_named(
    app_factory: Callable[..., AppServer],
    squid_factory: Callable[..., Squid],
    mitm_factory: Callable[..., MitmProxy],
    test_ca: TestCA,
    ca_file: Path,
) -> None:
    app = app_factory([HOST])
    upstream = squid_factory(hosts={HOST: "127.0.0.1"})
    mitm = mitm_factory(upstream=upstream.url, upstream_ca=ca_file)
    reader, writer = await asyncio.open_connection(mitm.host, mitm.port)
    try:
        async with asyncio.timeout(20):
            await connect_tunnel(reader, writer, ProxyURL(mitm.host, mitm.port), HOST, app.port)
            session = await start_tls(writer, HOST)
    finally:
        writer.close()
    verdict = evaluate(session, HOST, PINNED_CA, TrustAnchors((test_ca.cert,)), now=NOW)
    assert verdict.status is Status.FAIL
    assert verdict.interception
    assert verdict.issuer == "mitmproxy"
    assert "issued by 'mitmproxy'" in verdict.finding
    # and the same leaf verifies against mitmproxy's own CA: it really is the interceptor
    mitm_ca = TrustAnchors.from_file(mitm.ca_cert)
    assert evaluate(session, HOST, PINNED_CA, mitm_ca, now=NOW).status is Status.PASS
