"""The cloud's TLS: TLS 1.3 only, platform-CA client certificates, identity of the peer."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tether.pki.ca import certificate_serial_hex, gateway_id_from_certificate

__all__ = ["PeerCertificate", "peer_certificate", "server_ssl_context"]


def server_ssl_context(*, cert_path: Path, key_path: Path, ca_path: Path) -> ssl.SSLContext:
    """TLS 1.3 only. Client certificates are asked for and verified against the platform CA
    but not required at the handshake: enrollment and the operator API authenticate otherwise,
    and every gateway route checks the certificate itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_path, key_path)
    ctx.load_verify_locations(cafile=str(ca_path))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_TICKET  # no session resumption: every link proves its certificate
    return ctx


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    gateway_id: str
    serial_hex: str
    certificate: x509.Certificate


def peer_certificate(der: bytes | None) -> PeerCertificate | None:
    """Parse a verified peer certificate (DER) into the gateway identity it carries."""
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return PeerCertificate(
        gateway_id=gateway_id_from_certificate(cert),
        serial_hex=certificate_serial_hex(cert),
        certificate=cert,
    )
