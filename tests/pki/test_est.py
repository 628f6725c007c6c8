"""Tests for tether.pki.est: the RFC 7030 codec, round trips and fuzzed decoders."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.pki import est
from tether.pki.ca import CertificateAuthority
from tether.pki.errors import EstDecodeError, EstError
from tether.pki.keys import build_csr, generate_private_key

NOW = datetime(2030, 6, 1, tzinfo=UTC)
_CA = CertificateAuthority.generate(now=NOW)
_CSR = build_csr(generate_private_key(), "gw-1")
_LEAF = _CA.issue_client(_CSR, gateway_id="gw-1", lifetime=timedelta(days=1), now=NOW)
_CERTS_BODY = est.encode_certs_only([_LEAF, _CA.certificate])
_CSR_BODY = est.encode_csr(_CSR)


def test_content_types_and_paths() -> None:
    assert est.CONTENT_TYPE_CERTS_ONLY == "application/pkcs7-mime; smime-type=certs-only"
    assert est.CONTENT_TYPE_PKCS10 == "application/pkcs10"
    assert est.CACERTS_PATH == "/.well-known/est/cacerts"
    assert est.SIMPLEENROLL_PATH == "/.well-known/est/simpleenroll"
    assert est.SIMPLEREENROLL_PATH == "/.well-known/est/simplereenroll"


@pytest.mark.parametrize(
    ("header", "expected", "matches"),
    [
        ("application/pkcs7-mime; smime-type=certs-only", est.CONTENT_TYPE_PKCS7_MIME, True),
        ("Application/PKCS7-MIME", est.CONTENT_TYPE_CERTS_ONLY, True),
        ("application/pkcs10", est.CONTENT_TYPE_PKCS10, True),
        ("application/pkcs10 ; charset=x", est.CONTENT_TYPE_PKCS10, True),
        ("text/plain", est.CONTENT_TYPE_PKCS10, False),
        (None, est.CONTENT_TYPE_PKCS10, False),
        ("", est.CONTENT_TYPE_PKCS10, False),
    ],
)
def test_media_type_matches(header: str | None, expected: str, matches: bool) -> None:
    assert est.media_type_matches(header, expected) is matches


def _same(certs: list[x509.Certificate], expected: list[x509.Certificate]) -> bool:
    # certificates is a DER SET OF: the encoder sorts it.
    return len(certs) == len(expected) and set(certs) == set(expected)


def test_certs_only_round_trip() -> None:
    assert _same(est.decode_certs_only(_CERTS_BODY), [_LEAF, _CA.certificate])


def test_certs_only_is_base64_of_der_pkcs7_in_short_lines() -> None:
    lines = _CERTS_BODY.split(b"\r\n")
    assert lines[-1] == b""
    assert all(0 < len(line) <= 76 for line in lines[:-1])
    der = base64.b64decode(b"".join(lines))
    assert _same(pkcs7.load_der_pkcs7_certificates(der), [_LEAF, _CA.certificate])
    assert der[0] == 0x30  # a DER SEQUENCE (ContentInfo), not PEM


def test_certs_only_decoder_tolerates_whitespace_and_pem() -> None:
    compact = b"".join(_CERTS_BODY.split())
    spaced = b"  \n" + b"\n ".join(compact[i : i + 10] for i in range(0, len(compact), 10)) + b"\t"
    assert _same(est.decode_certs_only(spaced), [_LEAF, _CA.certificate])
    pem = pkcs7.serialize_certificates([_CA.certificate], serialization.Encoding.PEM)
    assert est.decode_certs_only(pem) == [_CA.certificate]


def test_encode_certs_only_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="at least one"):
        est.encode_certs_only([])


def test_csr_round_trip_base64_and_pem() -> None:
    assert est.decode_csr(_CSR_BODY) == _CSR
    assert base64.b64decode(b"".join(_CSR_BODY.split())) == _CSR.public_bytes(
        serialization.Encoding.DER
    )
    assert est.decode_csr(_CSR.public_bytes(serialization.Encoding.PEM)) == _CSR


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b" \r\n ", "empty"),
        (b"@@@@", "not valid base64"),
        (b"QUJD", "does not parse"),  # "ABC": valid base64, not DER
        (b"QUJ", "not valid base64"),  # bad padding
        (b"-----BEGIN NOTHING-----\nQUJD\n-----END NOTHING-----\n", "does not parse"),
    ],
)
def test_decoders_say_what_is_wrong(body: bytes, message: str) -> None:
    for decode in (est.decode_certs_only, est.decode_csr):
        with pytest.raises(EstDecodeError, match=message) as caught:
            decode(body)
        assert isinstance(caught.value, EstError)


def test_csr_body_is_not_a_certs_body() -> None:
    with pytest.raises(EstDecodeError):
        est.decode_certs_only(_CSR_BODY)
    with pytest.raises(EstDecodeError):
        est.decode_csr(_CERTS_BODY)


def test_oversized_bodies_are_refused_before_decoding() -> None:
    with pytest.raises(EstDecodeError, match="exceeds"):
        est.decode_csr(b"A" * (est.MAX_CSR_BODY + 4))
    with pytest.raises(EstDecodeError, match="exceeds"):
        est.decode_certs_only(b"A" * (est.MAX_CERTS_BODY + 4))


def _decodes_or_refuses(body: bytes) -> None:
    try:
        certs = est.decode_certs_only(body)
    except EstDecodeError:
        pass
    else:
        assert certs
        assert all(isinstance(c, x509.Certificate) for c in certs)
    try:
        csr = est.decode_csr(body)
    except EstDecodeError:
        pass
    else:
        assert isinstance(csr, x509.CertificateSigningRequest)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    _decodes_or_refuses(body)


@settings(max_examples=300)
@given(st.binary(max_size=1536))
def test_fuzz_arbitrary_der_in_base64(der: bytes) -> None:
    _decodes_or_refuses(base64.b64encode(der))


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_valid_bodies(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from([_CERTS_BODY, _CSR_BODY]))
    der = bytearray(base64.b64decode(b"".join(source.split())))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
        der[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(der)))
    _decodes_or_refuses(base64.b64encode(bytes(der[:cut])))
    _decodes_or_refuses(base64.b64encode(bytes(der)))


@settings(max_examples=200)
@given(st.text(max_size=600))
def test_fuzz_pem_like_text(text: str) -> None:
    for label in ("PKCS7", "CERTIFICATE REQUEST"):
        body = f"-----BEGIN {label}-----\n{text}\n-----END {label}-----\n".encode()
        _decodes_or_refuses(body)
