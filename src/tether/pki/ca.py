"""The platform certificate authority: creation on first start, gateway and server issuance.

The CA lives in one directory: ``ca.pem`` (the self-signed certificate) and ``ca.key`` (its EC
P-256 key, mode 0600, refused if looser). Creation and reuse are serialized across the processes
of one node with an advisory lock (``.ca.lock``), so worker processes sharing a port never create
two CAs.

Gateway certificates are issued from an EST CSR (:meth:`CertificateAuthority.issue_client`): the
CSR contributes its public key and nothing else. The subject, SAN and every extension are set by
the CA from the gateway id that the caller (the enrollment handler) has authenticated; a CSR's
own subject or requested extensions are never trusted.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.pki.errors import (
    CertificateIdentityError,
    CsrInvalid,
    InsecureKeyFile,
    InvalidGatewayId,
    PkiError,
    PkiFileError,
    WeakKey,
)
from tether.pki.keys import (
    PrivateKey,
    generate_private_key,
    load_certificate,
    load_private_key,
    private_key_pem,
    write_pem,
    write_private_key,
)

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "GATEWAY_URN_PREFIX",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "SERVER_RENEW_BEFORE",
    "CertificateAuthority",
    "CertificateIdentityError",
    "CsrInvalid",
    "InsecureKeyFile",
    "InvalidGatewayId",
    "PkiError",
    "PkiFileError",
    "ServerCredentials",
    "WeakKey",
    "certificate_fingerprint",
    "certificate_serial_hex",
    "check_csr",
    "check_public_key",
    "gateway_id_from_certificate",
    "spki_sha256",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
_CA_LOCK_FILE = ".ca.lock"
_SERVER_LOCK_FILE = ".server.lock"

#: notBefore is backdated by this much so a peer whose clock runs a little slow accepts the cert.
CLOCK_SKEW = timedelta(minutes=5)
#: URI SAN carried by every gateway certificate: ``urn:tether:gateway:<gateway_id>``.
GATEWAY_URN_PREFIX = "urn:tether:gateway:"
#: Server credentials are reissued when they expire within this window.
SERVER_RENEW_BEFORE = timedelta(days=30)

_DEFAULT_CA_LIFETIME = timedelta(days=3652)
_DEFAULT_SERVER_LIFETIME = timedelta(days=365)
# Letters, digits and . _ - ~ : safe in a CN, in a URN and in URLs; at most a CN's 64 characters.
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<lowercase hex>`` of the certificate's DER encoding."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def spki_sha256(cert: x509.Certificate) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo DER (the HPKP pin format)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def certificate_serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lowercase hex without separators or leading zeros."""
    return format(cert.serial_number, "x")


def gateway_id_from_certificate(cert: x509.Certificate) -> str:
    """The gateway id a certificate names: its ``urn:tether:gateway:`` URI SAN, else its CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(GATEWAY_URN_PREFIX) and len(uri) > len(GATEWAY_URN_PREFIX):
                return uri[len(GATEWAY_URN_PREFIX) :]
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if isinstance(value, str) and value:
            return value
    subject = cert.subject.rfc4514_string() or "empty subject"
    raise CertificateIdentityError(
        f"certificate {certificate_serial_hex(cert)} ({subject}) names no gateway: "
        f"no {GATEWAY_URN_PREFIX}<id> URI and no common name"
    )


def check_public_key(key: object) -> None:
    """Raise :class:`WeakKey` unless ``key`` is RSA >= 2048 bits, EC P-256/P-384 or Ed25519."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise WeakKey(
                f"RSA key of {key.key_size} bits refused: at least {_MIN_RSA_BITS} bits needed"
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ACCEPTED_CURVES):
            raise WeakKey(f"EC curve {key.curve.name} refused: use P-256 (secp256r1) or P-384")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise WeakKey(
        f"{type(key).__name__.removeprefix('_')} keys are refused: use EC P-256, P-384, "
        f"Ed25519 or RSA >= {_MIN_RSA_BITS}"
    )


def check_csr(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    """The CSR's public key if the CA would sign it, else raise :class:`CsrInvalid`.

    The CSR must carry a valid self-signature (proof of possession) and an acceptable key
    (:func:`check_public_key`, else :class:`WeakKey`, a :class:`CsrInvalid`). Enrollment checks
    this before it spends a one-time token, so a request the CA would refuse costs nothing.
    """
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as exc:  # unsupported key or signature algorithm
        raise CsrInvalid(f"CSR signature cannot be checked: {exc}") from exc
    if not signature_ok:
        raise CsrInvalid("CSR signature is invalid: the request was not signed by its key")
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise WeakKey(f"CSR public key unusable: {exc}") from exc
    check_public_key(public_key)
    return public_key


def _check_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("'now' must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def _random_serial() -> int:
    # RFC 5280 §4.1.2.2: positive, at most 20 octets. 128 random bits; zero is not positive.
    return secrets.randbits(128) or 1


def _check_gateway_id(gateway_id: str) -> str:
    if not isinstance(gateway_id, str) or not _GATEWAY_ID.fullmatch(gateway_id):
        raise InvalidGatewayId(
            f"gateway id {gateway_id!r} unusable in a certificate: 1-64 characters of letters, "
            f"digits and . _ - ~, starting with a letter or digit"
        )
    return gateway_id


def _general_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname.strip("[]")))
    except ValueError:
        pass
    name = hostname.strip().rstrip(".").lower()
    if not name or not name.isascii() or any(c.isspace() or c in "/:@" for c in name):
        raise ValueError(
            f"{hostname!r} is neither an IP address nor an ASCII DNS name "
            f"(internationalized names must be given in their xn-- form)"
        )
    return x509.DNSName(name)


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return names | set(san.get_values_for_type(x509.DNSName))


@contextlib.contextmanager
def _directory_lock(directory: Path, name: str) -> Iterator[None]:
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise PkiFileError(f"unsupported public key type {type(key).__name__}")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ServerCredentials(NamedTuple):
    """Paths of the TLS server key and certificate (chain: leaf then CA), key first.

    Use as ``context.load_cert_chain(creds.cert_path, creds.key_path)``.
    """

    key_path: Path
    cert_path: Path


class CertificateAuthority:
    """The platform CA: an EC P-256 key and its self-signed certificate (pathlen 0)."""

    def __init__(self, certificate: x509.Certificate, private_key: PrivateKey) -> None:
        if _public_der(certificate.public_key()) != _public_der(private_key.public_key()):
            raise PkiFileError("the CA private key does not belong to the CA certificate")
        self._certificate = certificate
        self._key = private_key
        self._ski = x509.SubjectKeyIdentifier.from_public_key(private_key.public_key())

    # -- creation and loading ----------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        *,
        common_name: str = "tether platform CA",
        lifetime: timedelta = _DEFAULT_CA_LIFETIME,
        now: datetime | None = None,
        private_key: PrivateKey | None = None,
    ) -> CertificateAuthority:
        """A new CA held in memory only (see :meth:`load_or_create` for the persistent one)."""
        key = private_key if private_key is not None else generate_private_key()
        start = _check_aware(now) if now is not None else datetime.now(UTC)
        public = key.public_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(public)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(_random_serial())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256() if not isinstance(key, ed25519.Ed25519PrivateKey) else None)
        )
        return cls(cert, key)

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        common_name: str = "tether platform CA",
        lifetime: timedelta = _DEFAULT_CA_LIFETIME,
    ) -> CertificateAuthority:
        """Load the CA kept in ``directory``, creating it (and the directory, 0700) on first start.

        Raises :class:`~tether.pki.errors.InsecureKeyFile` if ``ca.key`` is readable by group or
        others, and :class:`~tether.pki.errors.PkiFileError` if the files are malformed, do not
        match, or ``ca.pem`` exists without its key (which is never silently replaced).
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = directory / CA_CERT_FILE
        key_path = directory / CA_KEY_FILE
        with _directory_lock(directory, _CA_LOCK_FILE):
            if cert_path.exists():
                if not key_path.exists():
                    raise PkiFileError(
                        f"{cert_path} exists but its key {key_path} is missing; restore the key "
                        f"(a new CA would invalidate every issued certificate)"
                    )
                ca = cls(load_certificate(cert_path), load_private_key(key_path))
                ca._check_is_ca(cert_path)
                return ca
            if key_path.exists():
                # A previous start stopped between writing the key and the certificate: nothing
                # can have been issued yet, so self-sign the existing key.
                existing = load_private_key(key_path)
                ca = cls.generate(common_name=common_name, lifetime=lifetime, private_key=existing)
            else:
                ca = cls.generate(common_name=common_name, lifetime=lifetime)
                write_private_key(key_path, ca._key, replace=False)
            write_pem(cert_path, ca.certificate_pem(), replace=False)
            return ca

    def _check_is_ca(self, origin: Path) -> None:
        try:
            constraints = self._certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise PkiFileError(f"{origin} is not a CA certificate (basicConstraints CA:true)")

    # -- identity ----------------------------------------------------------------------------

    @property
    def certificate(self) -> x509.Certificate:
        """The CA's self-signed certificate."""
        return self._certificate

    def certificate_pem(self) -> bytes:
        """The CA certificate in PEM."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the CA certificate's DER (what enrollment tokens carry)."""
        return certificate_fingerprint(self._certificate)

    def issued(self, cert: x509.Certificate) -> bool:
        """True if ``cert`` carries a valid signature of this CA (validity period not checked)."""
        try:
            cert.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    # -- issuance ----------------------------------------------------------------------------

    def _sign_hash(self) -> hashes.SHA256 | None:
        return None if isinstance(self._key, ed25519.Ed25519PrivateKey) else hashes.SHA256()

    def _leaf_builder(
        self, subject: x509.Name, public_key: object, *, lifetime: timedelta, now: datetime
    ) -> x509.CertificateBuilder:
        if lifetime <= timedelta(0):
            raise ValueError(f"certificate lifetime must be positive, got {lifetime}")
        now = _check_aware(now)
        # A certificate never outlives its issuer.
        not_after = min(now + lifetime, self._certificate.not_valid_after_utc)
        public_der = _public_der(public_key)
        spki = serialization.load_der_public_key(public_der)
        if not isinstance(
            spki, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise WeakKey(f"unsupported public key type {type(spki).__name__}")
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(spki)
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(spki), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
        )

    def issue_client(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        gateway_id: str,
        lifetime: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        """Issue a gateway's TLS client certificate for the public key in ``csr``.

        The CSR must carry a valid self-signature (proof of possession, else
        :class:`~tether.pki.errors.CsrInvalid`) and an acceptable key (RSA >= 2048, EC P-256 or
        P-384, Ed25519; else :class:`~tether.pki.errors.WeakKey`). Only its public key is used:
        the subject is ``CN=<gateway_id>`` and the SAN ``urn:tether:gateway:<gateway_id>``, both
        set here from the authenticated ``gateway_id``; the CSR's subject and requested
        extensions are ignored. The serial is 128 random bits, notBefore is ``now`` minus five
        minutes (clock skew), notAfter ``now + lifetime`` capped at the CA's own expiry; EKU
        clientAuth, keyUsage digitalSignature, AKI/SKI.
        """
        _check_gateway_id(gateway_id)
        public_key = check_csr(csr)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
        builder = (
            self._leaf_builder(subject, public_key, lifetime=lifetime, now=now)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + gateway_id)]
                ),
                critical=False,
            )
        )
        return builder.sign(self._key, self._sign_hash())

    def issue_server(
        self, hostnames: Sequence[str], *, lifetime: timedelta, now: datetime
    ) -> tuple[bytes, bytes]:
        """A new TLS server key and certificate for ``hostnames``: ``(key_pem, cert_pem)``.

        Each hostname becomes an IP SAN if it parses as an IPv4/IPv6 address ("127.0.0.1",
        "::1", "[::1]"), else a DNS SAN. ``cert_pem`` holds the leaf followed by the CA
        certificate, ready for ``SSLContext.load_cert_chain``.
        """
        if isinstance(hostnames, str) or not hostnames:
            raise ValueError("issue_server needs a non-empty sequence of hostnames")
        names = list(dict.fromkeys(_general_name(h) for h in hostnames))
        key = generate_private_key()
        first = names[0].value
        common_name = str(first)[:64]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            self._leaf_builder(subject, key.public_key(), lifetime=lifetime, now=now)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self._key, self._sign_hash())
        )
        return private_key_pem(key), cert.public_bytes(serialization.Encoding.PEM) + (
            self.certificate_pem()
        )

    def server_credentials(
        self,
        directory: Path,
        hostnames: Sequence[str],
        *,
        lifetime: timedelta = _DEFAULT_SERVER_LIFETIME,
        now: datetime | None = None,
    ) -> ServerCredentials:
        """Load or create ``server.key`` (0600) and ``server.pem`` in ``directory``.

        They are (re)issued when missing, when the hostnames differ from the certificate's SANs,
        when it expires within 30 days, when it was not issued by this CA, or when the key does
        not match the certificate. A key file looser than 0600 is refused
        (:class:`~tether.pki.errors.InsecureKeyFile`), not silently replaced.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        moment = _check_aware(now) if now is not None else datetime.now(UTC)
        wanted = {str(_general_name(h).value) for h in hostnames}
        key_path = directory / SERVER_KEY_FILE
        cert_path = directory / SERVER_CERT_FILE
        with _directory_lock(directory, _SERVER_LOCK_FILE):
            if not self._server_files_current(key_path, cert_path, wanted, moment):
                key_pem, cert_pem = self.issue_server(hostnames, lifetime=lifetime, now=moment)
                key = serialization.load_pem_private_key(key_pem, password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover
                    raise PkiFileError("issue_server produced an unexpected key type")
                write_private_key(key_path, key)
                write_pem(cert_path, cert_pem)
        return ServerCredentials(key_path=key_path, cert_path=cert_path)

    def _server_files_current(
        self, key_path: Path, cert_path: Path, wanted: set[str], now: datetime
    ) -> bool:
        if not (key_path.exists() and cert_path.exists()):
            return False
        key = load_private_key(key_path)  # raises InsecureKeyFile on loose permissions
        try:
            cert = load_certificate(cert_path)
        except PkiFileError:
            return False
        return (
            self.issued(cert)
            and _san_names(cert) == wanted
            and cert.not_valid_after_utc - now > SERVER_RENEW_BEFORE
            and cert.not_valid_before_utc <= now
            and _public_der(cert.public_key()) == _public_der(key.public_key())
        )
