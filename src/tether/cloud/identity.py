"""Who is calling: the gateway behind a client certificate, or the operator behind a token.

A gateway is identified by its TLS client certificate on every request and WebSocket. Behind a
TLS-terminating load balancer the certificate arrives in a header (URL-encoded PEM, as nginx's
``$ssl_client_escaped_cert``); that header is honoured only from the configured trusted proxies
and refused from anyone else, and the certificate is still checked against the platform CA here.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.cloud.batching import BatchLoader
from tether.cloud.store import Store
from tether.cloud.store.records import CertificateRecord
from tether.cloud.tls import PeerCertificate, peer_certificate
from tether.pki.ca import CertificateAuthority

__all__ = [
    "ERROR_HEADER",
    "GatewayIdentity",
    "IdentityError",
    "connection_identity",
    "gateway_identity",
]

#: Response header with the reason a gateway was refused (mirrored in tether.gateway.link).
ERROR_HEADER = "X-Tether-Error"


class IdentityError(web.HTTPException):
    """The caller is not an enrolled, valid gateway (403 with the reason in the body).

    The reason is also in the ``X-Tether-Error`` header: a WebSocket client sees the headers of
    a refused upgrade but not its body.
    """

    status_code = 403

    def __init__(self, reason: str, status: int = 403) -> None:
        self.status_code = status
        super().__init__(
            text=reason + "\n", content_type="text/plain", headers={ERROR_HEADER: reason}
        )
        self.reason_text = reason


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    gateway_id: str
    serial_hex: str
    via_proxy: bool


def _certificate_from_transport(transport: object) -> PeerCertificate | None:
    get_extra_info = getattr(transport, "get_extra_info", None)
    if get_extra_info is None:
        return None
    ssl_object = get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return peer_certificate(ssl_object.getpeercert(binary_form=True))


def _certificate_from_header(
    value: str | None,
    remote: str | None,
    header: str,
    trusted: tuple[str, ...],
    ca: CertificateAuthority,
) -> PeerCertificate | None:
    if value is None:
        return None
    if remote not in trusted:
        raise IdentityError(
            f"header {header} is accepted only from a trusted proxy, not from {remote}",
            status=400,
        )
    try:
        cert = x509.load_pem_x509_certificate(unquote(value).encode())
    except ValueError:
        raise IdentityError(f"header {header} does not hold a PEM certificate", 400) from None
    if not ca.issued(cert):
        raise IdentityError("client certificate was not issued by the platform CA")
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError("client certificate is outside its validity period")
    peer = peer_certificate(cert.public_bytes(Encoding.DER))
    return peer


async def gateway_identity(
    request: web.Request,
    *,
    store: Store,
    ca: CertificateAuthority,
    trusted_proxies: tuple[str, ...],
    header: str,
    certificates: BatchLoader[str, CertificateRecord] | None = None,
) -> GatewayIdentity:
    """Return the calling gateway or raise :class:`IdentityError` saying why not."""
    return await connection_identity(
        transport=request.transport,
        remote=request.remote,
        header_value=request.headers.get(header),
        store=store,
        ca=ca,
        trusted_proxies=trusted_proxies,
        header=header,
        certificates=certificates,
    )


async def connection_identity(
    *,
    transport: object,
    remote: str | None,
    header_value: str | None,
    store: Store,
    ca: CertificateAuthority,
    trusted_proxies: tuple[str, ...],
    header: str,
    certificates: BatchLoader[str, CertificateRecord] | None = None,
) -> GatewayIdentity:
    """The gateway behind a connection: its TLS client certificate, or the certificate a
    trusted proxy put in *header* (*header_value*); raise :class:`IdentityError` if none."""
    peer = _certificate_from_header(header_value, remote, header, trusted_proxies, ca)
    via_proxy = peer is not None
    if peer is None:
        peer = _certificate_from_transport(transport)
    if peer is None:
        raise IdentityError("a gateway client certificate is required", status=401)
    now = datetime.now(UTC)
    # One lookup per link: revoking a gateway revokes all its certificates, and a revoked
    # gateway can record no new one, so the certificate's own row says everything.
    record = await (
        certificates.get(peer.serial_hex.lower())
        if certificates is not None
        else store.get_certificate(peer.serial_hex)
    )
    if record is None:
        raise IdentityError("client certificate is not known to this cloud")
    if record.revoked_at is not None:
        raise IdentityError("gateway or certificate has been revoked")
    if not record.not_before <= now <= record.not_after:
        raise IdentityError("client certificate is outside its validity period")
    if record.gateway_id != peer.gateway_id:
        raise IdentityError("client certificate does not match its gateway")
    return GatewayIdentity(peer.gateway_id, peer.serial_hex, via_proxy)
