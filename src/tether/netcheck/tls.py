"""TLS: the handshake as the site's network lets it happen, and what the certificate chain says.

The probe completes the handshake without verifying (so it can always see what was presented),
then judges the chain itself: it must end at the pinned CA (``--ca`` or a manifest SPKI pin) or,
for unpinned endpoints, at a CA this machine trusts. A chain that ends anywhere else means a
middlebox re-signed the session: TLS interception, reported with the issuer's name, because the
fix (exempt the hostname from decryption) is made in that product's console.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tether.netcheck.report import Status
from tether.netreq.model import PinKind, TlsExpectation

__all__ = [
    "TlsError",
    "TlsSession",
    "TlsVerdict",
    "TrustAnchors",
    "evaluate",
    "hostname_matches",
    "issuer_label",
    "spki_sha256",
    "start_tls",
]

_MAX_DEPTH = 8
_DER = 2  # _ssl.ENCODING_DER
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


class TlsError(Exception):
    """The handshake did not complete; ``kind`` is reset, timeout, alert or closed."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class TlsSession:
    version: str  # e.g. "TLSv1.3"
    cipher: str
    alpn: str | None
    chain: tuple[x509.Certificate, ...]  # as presented, leaf first


def _client_context(alpn: Sequence[str]) -> ssl.SSLContext:
    # Verification is done afterwards (evaluate), on the chain as presented.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _presented_chain(ssl_object: ssl.SSLObject) -> tuple[x509.Certificate, ...]:
    # Python 3.13 has SSLObject.get_unverified_chain(); 3.11/3.12 have it on the _ssl object.
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        raw = getter() or []
        certs = []
        for item in raw:
            der = item if isinstance(item, bytes) else item.public_bytes(_DER)
            certs.append(x509.load_der_x509_certificate(der))
        if certs:
            return tuple(certs)
    leaf = ssl_object.getpeercert(binary_form=True)
    return (x509.load_der_x509_certificate(leaf),) if leaf else ()


async def start_tls(
    writer: asyncio.StreamWriter,
    server_hostname: str,
    *,
    alpn: Sequence[str] = ("http/1.1",),
) -> TlsSession:
    """Upgrade the connection behind ``writer`` to TLS (SNI ``server_hostname``).

    Bound it with ``asyncio.timeout``; a handshake that stalls is itself a finding.
    """
    sni = None if _is_ip(server_hostname) else server_hostname
    try:
        await writer.start_tls(_client_context(alpn), server_hostname=sni)
    except ssl.SSLError as exc:
        raise TlsError("alert", exc.reason or str(exc)) from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise TlsError("reset", str(exc) or "connection reset") from None
    except (ConnectionError, EOFError, asyncio.IncompleteReadError) as exc:
        raise TlsError("closed", str(exc) or "connection closed during the handshake") from None
    ssl_object = writer.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        raise TlsError("closed", "no TLS session after the handshake")
    cipher = ssl_object.cipher()
    return TlsSession(
        version=ssl_object.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        alpn=ssl_object.selected_alpn_protocol(),
        chain=_presented_chain(ssl_object),
    )


# --- judging the chain ---------------------------------------------------------------------


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex (the manifest's pin format)."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def issuer_label(name: x509.Name) -> str:
    """A short human label for a distinguished name: its CN, else O, else the whole DN."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = name.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value if isinstance(value, str) else value.decode(errors="replace")
    return name.rfc4514_string() or "(empty name)"


@dataclass(frozen=True)
class TrustAnchors:
    """What a chain may end at besides the manifest's pins: pinned CA certificates (``--ca``)."""

    cas: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_pem(cls, data: bytes) -> TrustAnchors:
        return cls(cas=tuple(x509.load_pem_x509_certificates(data)))

    @classmethod
    def from_file(cls, path: Path) -> TrustAnchors:
        return cls.from_pem(path.read_bytes())

    def describe(self) -> str:
        if not self.cas:
            return "no pinned CA"
        return ", ".join(f"'{issuer_label(c.subject)}'" for c in self.cas)


@functools.cache
def system_roots() -> tuple[x509.Certificate, ...]:
    """The machine's trusted roots (the OpenSSL default bundle)."""
    paths = ssl.get_default_verify_paths()
    candidates = [paths.cafile, paths.openssl_cafile, *_SYSTEM_BUNDLES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                return tuple(x509.load_pem_x509_certificates(Path(candidate).read_bytes()))
            except (OSError, ValueError):
                continue
    return ()


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def build_path(
    chain: Sequence[x509.Certificate],
    roots: Iterable[x509.Certificate],
    pins: frozenset[str] = frozenset(),
) -> list[x509.Certificate] | None:
    """The path from the leaf to a root (or to a certificate whose SPKI is pinned), or None."""
    if not chain:
        return None
    roots = tuple(roots)
    path = [chain[0]]
    pool = list(chain[1:])
    for _ in range(_MAX_DEPTH):
        current = path[-1]
        if spki_sha256(current) in pins or any(_same(current, r) for r in roots):
            return path
        root = next((r for r in roots if _issued_by(current, r)), None)
        if root is not None:
            return [*path, root]
        nxt = next(
            (c for c in pool if not any(_same(c, p) for p in path) and _issued_by(current, c)),
            None,
        )
        if nxt is None:
            return None
        path.append(nxt)
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def hostname_matches(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 matching on subjectAltName (a wildcard covers exactly one leftmost label)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if _is_ip(host):
        wanted = ipaddress.ip_address(host)
        return any(ip == wanted for ip in san.get_values_for_type(x509.IPAddress))
    name = host.lower().rstrip(".")
    for entry in san.get_values_for_type(x509.DNSName):
        pattern = entry.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


@dataclass(frozen=True)
class TlsVerdict:
    status: Status
    finding: str
    fix: str = ""
    interception: bool = False
    issuer: str = ""
    details: dict[str, str] = field(default_factory=dict)


_VERSION_RANK = {"TLSv1": 10, "TLSv1.1": 11, "TLSv1.2": 12, "TLSv1.3": 13}


def _rank(version: str) -> int:
    return _VERSION_RANK.get(version, 0) or _VERSION_RANK.get("TLSv" + version, 0)


def _describe_cert(cert: x509.Certificate) -> str:
    return f"{issuer_label(cert.subject)} (issued by {issuer_label(cert.issuer)})"


def evaluate(
    session: TlsSession,
    host: str,
    expectation: TlsExpectation | None,
    anchors: TrustAnchors,
    *,
    now: dt.datetime,
) -> TlsVerdict:
    """Judge a handshake against what the manifest expects (version, pin, interception)."""
    chain = session.chain
    if not chain:
        return TlsVerdict(Status.FAIL, f"{host} presented no certificate", "")
    leaf = chain[0]
    top = chain[-1]
    issuer_name = top.issuer
    issuer = issuer_label(issuer_name)
    details = {
        "version": session.version,
        "cipher": session.cipher,
        "alpn": session.alpn or "",
        "subject": leaf.subject.rfc4514_string(),
        "issuer": issuer_name.rfc4514_string(),
        "chain": " > ".join(_describe_cert(c) for c in chain),
        "not_after": leaf.not_valid_after_utc.isoformat(),
    }

    min_version = expectation.min_version if expectation else "1.2"
    if _rank(session.version) < _rank(min_version):
        return TlsVerdict(
            Status.FAIL,
            f"{host}: negotiated {session.version}, the endpoint needs TLS {min_version} or newer",
            f"allow TLS {min_version} to {host}: a middlebox downgrades or filters the handshake "
            "(exempt it from TLS inspection)",
            issuer=issuer,
            details=details,
        )

    pin = expectation.pin if expectation else PinKind.NONE
    pins = frozenset(expectation.pin_sha256) if expectation else frozenset()
    tolerated = bool(expectation and expectation.interception_tolerated)
    path: list[x509.Certificate] | None
    if pin is PinKind.SPKI and pins:
        path = [leaf] if spki_sha256(leaf) in pins else None
        expected = "the pinned server key"
    elif pin is PinKind.CA or pin is PinKind.SPKI:
        if not anchors.cas and not pins:
            return TlsVerdict(
                Status.WARN,
                f"{host}: certificate issued by '{issuer}'; the pinned CA is not known to this "
                "check, so interception cannot be ruled out",
                "run the check with --ca FILE (the platform CA certificate)",
                issuer=issuer,
                details=details,
            )
        path = build_path(chain, anchors.cas, pins)
        expected = f"the pinned CA {anchors.describe()}" if anchors.cas else "the pinned CA key"
    else:
        path = build_path(chain, (*anchors.cas, *system_roots()))
        expected = "a CA this machine trusts" + (
            f" (or {anchors.describe()})" if anchors.cas else ""
        )

    if path is None:
        status = Status.WARN if tolerated else Status.FAIL
        note = " (tolerated by this endpoint)" if tolerated else ""
        return TlsVerdict(
            status,
            f"TLS interception{note}: {host} answered with a certificate issued by '{issuer}' "
            f"({issuer_name.rfc4514_string()}), not by {expected}",
            f"exempt {host} from TLS decryption/inspection on '{issuer}' (the proxy or firewall "
            "that re-signs it); mutual TLS cannot pass an intercepting middlebox",
            interception=True,
            issuer=issuer,
            details=details,
        )

    if not hostname_matches(leaf, host):
        return TlsVerdict(
            Status.FAIL,
            f"{host}: the certificate is for {issuer_label(leaf.subject)}, not for {host}",
            f"check that {host} resolves to the right server (DNS or a redirecting middlebox)",
            issuer=issuer,
            details=details,
        )
    for cert in path:
        if now < cert.not_valid_before_utc:
            return TlsVerdict(
                Status.FAIL,
                f"{host}: certificate '{issuer_label(cert.subject)}' is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC and the local clock says "
                f"{now:%Y-%m-%d %H:%M} UTC",
                "set this machine's clock (allow NTP, UDP 123)",
                issuer=issuer,
                details=details,
            )
        if now > cert.not_valid_after_utc:
            return TlsVerdict(
                Status.FAIL,
                f"{host}: certificate '{issuer_label(cert.subject)}' expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC (local clock "
                f"{now:%Y-%m-%d %H:%M} UTC)",
                "if the clock is right, the server's certificate must be renewed",
                issuer=issuer,
                details=details,
            )
    anchor = issuer_label(path[-1].subject)
    return TlsVerdict(
        Status.PASS,
        f"{session.version}, chain ends at '{anchor}'",
        issuer=issuer,
        details=details,
    )
