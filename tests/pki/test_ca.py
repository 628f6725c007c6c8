"""Tests for tether.pki.ca: CA creation, reuse, permissions, and certificate issuance."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.pki.ca import (
    CertificateAuthority,
    certificate_fingerprint,
    certificate_serial_hex,
    gateway_id_from_certificate,
    spki_sha256,
)
from tether.pki.errors import (
    CertificateIdentityError,
    CsrInvalid,
    InsecureKeyFile,
    InvalidGatewayId,
    PkiError,
    PkiFileError,
    WeakKey,
)
from tether.pki.keys import build_csr, generate_private_key, write_private_key

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


# -- creation and loading ---------------------------------------------------------------------


def test_first_start_creates_ca_with_private_key_0600(tmp_path: Path) -> None:
    directory = tmp_path / "pki" / "ca"
    ca = CertificateAuthority.load_or_create(directory, common_name="Example CA")

    assert _mode(directory / "ca.key") == 0o600
    assert _mode(directory) == 0o700
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    assert cert == ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Example CA"
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_ca_certificate_extensions(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3653)


def test_reload_reuses_the_same_ca(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    key_before = (tmp_path / "ca" / "ca.key").read_bytes()
    second = CertificateAuthority.load_or_create(tmp_path / "ca", common_name="ignored")

    assert second.fingerprint() == first.fingerprint()
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key_before
    csr = build_csr(generate_private_key())
    issued = first.issue_client(csr, gateway_id="gw-1", lifetime=timedelta(days=1), now=NOW)
    assert second.issued(issued)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_ca_key_permissions_are_refused(tmp_path: Path, mode: int) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    key_path = tmp_path / "ca" / "ca.key"
    key_path.chmod(mode)

    with pytest.raises(InsecureKeyFile) as caught:
        CertificateAuthority.load_or_create(tmp_path / "ca")
    assert caught.value.mode == mode
    assert f"{mode:04o}" in str(caught.value)
    assert "chmod 600" in str(caught.value)
    assert isinstance(caught.value, PkiError)


def test_stricter_key_permissions_are_accepted(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").chmod(0o400)
    assert CertificateAuthority.load_or_create(tmp_path / "ca").fingerprint() == first.fingerprint()


def test_certificate_without_key_is_not_replaced(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    pem_before = (tmp_path / "ca" / "ca.pem").read_bytes()
    (tmp_path / "ca" / "ca.key").unlink()

    with pytest.raises(PkiFileError, match=r"key .* is missing"):
        CertificateAuthority.load_or_create(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == pem_before


def test_key_without_certificate_is_completed(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    key = generate_private_key()
    write_private_key(directory / "ca.key", key)

    ca = CertificateAuthority.load_or_create(directory)
    assert ca.certificate.public_key() == key.public_key()
    assert (directory / "ca.pem").exists()


def test_mismatched_key_and_certificate_are_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    write_private_key(tmp_path / "ca" / "ca.key", generate_private_key())
    with pytest.raises(PkiFileError, match="does not belong"):
        CertificateAuthority.load_or_create(tmp_path / "ca")


def test_fingerprint_and_spki_pin(ca: CertificateAuthority) -> None:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.fingerprint() == "sha256:" + hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(ca.certificate) == ca.fingerprint()
    spki = ca.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256(ca.certificate) == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert ca.certificate_pem().startswith(b"-----BEGIN CERTIFICATE-----")


# -- client issuance --------------------------------------------------------------------------


def test_issue_client_contents(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    csr = build_csr(key, "someone-else")  # the CSR's subject must not be used
    cert = ca.issue_client(csr, gateway_id="gw-42", lifetime=timedelta(days=90), now=NOW)

    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-42")])
    assert cert.issuer == ca.certificate.subject
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=90)
    assert 0 < cert.serial_number < 2**128
    assert _ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tether:gateway:gw-42"]
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == (
        _ext(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    )
    assert _ext(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    )
    cert.verify_directly_issued_by(ca.certificate)
    assert ca.issued(cert)
    assert gateway_id_from_certificate(cert) == "gw-42"


def test_issue_client_ignores_csr_extensions(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:tether:gateway:victim")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert = ca.issue_client(csr, gateway_id="gw-attacker", lifetime=timedelta(days=1), now=NOW)
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert gateway_id_from_certificate(cert) == "gw-attacker"
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert "urn:tether:gateway:victim" not in san.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def test_serials_are_random(ca: CertificateAuthority) -> None:
    csr = build_csr(generate_private_key())
    serials = {
        ca.issue_client(csr, gateway_id="gw", lifetime=timedelta(days=1), now=NOW).serial_number
        for _ in range(8)
    }
    assert len(serials) == 8


def test_client_lifetime_is_capped_at_ca_expiry(tmp_path: Path) -> None:
    ca = CertificateAuthority.generate(lifetime=timedelta(days=30), now=NOW)
    csr = build_csr(generate_private_key())
    cert = ca.issue_client(csr, gateway_id="gw", lifetime=timedelta(days=365), now=NOW)
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa2048"),
    ],
)
def test_accepted_key_types(ca: CertificateAuthority, make_key: object) -> None:
    assert callable(make_key)
    key = make_key()
    cert = ca.issue_client(build_csr(key), gateway_id="gw", lifetime=timedelta(days=1), now=NOW)
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), "1024 bits", id="rsa1024"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1", id="k256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1", id="p521"),
    ],
)
def test_weak_keys_are_refused(ca: CertificateAuthority, make_key: object, message: str) -> None:
    assert callable(make_key)
    csr = build_csr(make_key())
    with pytest.raises(WeakKey, match=message) as caught:
        ca.issue_client(csr, gateway_id="gw", lifetime=timedelta(days=1), now=NOW)
    assert isinstance(caught.value, CsrInvalid)


def test_dsa_keys_are_refused(ca: CertificateAuthority) -> None:
    key = dsa.generate_private_key(2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(WeakKey, match="DSA"):
        ca.issue_client(csr, gateway_id="gw", lifetime=timedelta(days=1), now=NOW)


def test_package_import_does_not_pull_in_aiohttp() -> None:
    # The cloud imports the CA and the codec; only the EST client needs aiohttp.
    code = (
        "import sys, tether.pki, tether.pki.ca, tether.pki.est, tether.pki.keys\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
        "assert tether.pki.PkiError is tether.pki.ca.PkiError\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_csr_signature_is_refused(ca: CertificateAuthority) -> None:
    der = bytearray(
        build_csr(generate_private_key(), "gw").public_bytes(serialization.Encoding.DER)
    )
    # The ECDSA signature is the last BIT STRING; flip a bit inside its r value.
    der[-10] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(CsrInvalid, match="signature is invalid"):
        ca.issue_client(tampered, gateway_id="gw", lifetime=timedelta(days=1), now=NOW)


def test_csr_signed_by_another_key_is_refused(ca: CertificateAuthority) -> None:
    # Proof of possession: the public key must be the one that signed the request.
    victim = generate_private_key()
    csr = build_csr(generate_private_key())
    forged_der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    own_spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    victim_spki = victim.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    start = forged_der.index(own_spki)
    forged_der[start : start + len(own_spki)] = victim_spki
    forged = x509.load_der_x509_csr(bytes(forged_der))
    with pytest.raises(CsrInvalid):
        ca.issue_client(forged, gateway_id="gw", lifetime=timedelta(days=1), now=NOW)


@pytest.mark.parametrize("gateway_id", ["", "-x", "a b", "a/b", "é", "x" * 65, "a\nb"])
def test_unusable_gateway_ids_are_refused(ca: CertificateAuthority, gateway_id: str) -> None:
    csr = build_csr(generate_private_key())
    with pytest.raises(InvalidGatewayId):
        ca.issue_client(csr, gateway_id=gateway_id, lifetime=timedelta(days=1), now=NOW)


def test_naive_now_is_refused(ca: CertificateAuthority) -> None:
    csr = build_csr(generate_private_key())
    with pytest.raises(ValueError, match="timezone-aware"):
        ca.issue_client(csr, gateway_id="gw", lifetime=timedelta(days=1), now=datetime(2030, 1, 1))


def test_gateway_id_falls_back_to_common_name_and_serial_hex(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-gw")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-gw")]))
        .public_key(key.public_key())
        .serial_number(0xABC123)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert gateway_id_from_certificate(cert) == "legacy-gw"
    assert certificate_serial_hex(cert) == "abc123"

    anonymous = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateIdentityError, match="names no gateway"):
        gateway_id_from_certificate(anonymous)


# -- server issuance --------------------------------------------------------------------------


def test_issue_server_names_and_usage(ca: CertificateAuthority) -> None:
    key_pem, cert_pem = ca.issue_server(
        ["tether.example.com", "127.0.0.1", "::1", "[::1]"], lifetime=timedelta(days=30), now=NOW
    )
    certs = x509.load_pem_x509_certificates(cert_pem)
    assert certs[1] == ca.certificate  # chain: leaf then CA
    leaf = certs[0]
    key = serialization.load_pem_private_key(key_pem, None)
    assert leaf.public_key() == key.public_key()
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["tether.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _ext(leaf, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    # Acceptable to a strict RFC 5280 / web-PKI verifier, for both a name and an address.
    store = verification.Store([ca.certificate])
    for name in (x509.DNSName("tether.example.com"), x509.IPAddress(ipaddress.ip_address("::1"))):
        verifier = verification.PolicyBuilder().store(store).time(NOW).build_server_verifier(name)
        assert verifier.verify(leaf, [])[-1] == ca.certificate


@pytest.mark.parametrize("bad", [[], ["bad host"], ["bücher.example"], ["a/b"]])
def test_issue_server_refuses_bad_hostnames(ca: CertificateAuthority, bad: list[str]) -> None:
    with pytest.raises(ValueError, match=r"hostname|IP address"):
        ca.issue_server(bad, lifetime=timedelta(days=1), now=NOW)


def test_server_credentials_created_reused_and_reissued(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    directory = tmp_path / "server"
    creds = ca.server_credentials(directory, ["localhost", "127.0.0.1"], now=NOW)
    assert _mode(creds.key_path) == 0o600
    first = creds.cert_path.read_bytes()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(creds.cert_path, creds.key_path)  # key matches certificate

    same_names = ca.server_credentials(directory, ["127.0.0.1", "localhost"], now=NOW)
    assert same_names.cert_path.read_bytes() == first

    renamed = ca.server_credentials(directory, ["localhost", "::1"], now=NOW)
    leaf = x509.load_pem_x509_certificate(renamed.cert_path.read_bytes())
    assert renamed.cert_path.read_bytes() != first
    assert "::1" in {
        str(ip)
        for ip in _ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    }

    later = leaf.not_valid_after_utc - timedelta(days=29)
    renewed = ca.server_credentials(directory, ["localhost", "::1"], now=later)
    renewed_leaf = x509.load_pem_x509_certificate(renewed.cert_path.read_bytes())
    assert renewed_leaf.not_valid_after_utc > leaf.not_valid_after_utc


def test_server_credentials_from_another_ca_are_reissued(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.generate()
    other.server_credentials(tmp_path / "server", ["localhost"], now=NOW)
    creds = ca.server_credentials(tmp_path / "server", ["localhost"], now=NOW)
    assert ca.issued(x509.load_pem_x509_certificate(creds.cert_path.read_bytes()))


def test_server_credentials_refuse_loose_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.server_credentials(tmp_path / "server", ["localhost"], now=NOW)
    creds.key_path.chmod(0o644)
    with pytest.raises(InsecureKeyFile):
        ca.server_credentials(tmp_path / "server", ["localhost"], now=NOW)
