"""The gateway's identity: enrollment with a one-time code, storage, automatic renewal.

Files in ``<data_dir>/identity/``:
    ca.pem          the platform CA, pinned: the only trust anchor of every connection
    gateway.pem     the client certificate followed by its private key (mode 0600)
    identity.json   gateway id, cloud URL, when the certificate was received
The certificate and key share one file so a renewal replaces both in one atomic rename.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tether.pki.ca import gateway_id_from_certificate
from tether.pki.estclient import (
    client_ssl_context,
    fetch_cacerts_bootstrap,
    simpleenroll,
    simplereenroll,
)
from tether.pki.keys import (
    build_csr,
    generate_private_key,
    load_certificate,
    private_key_pem,
    write_file_atomic,
    write_pem,
)
from tether.protocol.enrollment import decode_code

__all__ = ["GatewayIdentity", "NotEnrolled", "enroll", "load_identity", "renew", "seconds_until"]

RENEW_FRACTION = 2 / 3


class NotEnrolled(RuntimeError):
    """No identity in the data directory: run ``tether gateway enroll CODE`` first."""


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    directory: Path
    gateway_id: str
    cloud_url: str
    received_at: datetime
    certificate: x509.Certificate

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def credentials_path(self) -> Path:
        return self.directory / "gateway.pem"

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def renewal_due(self) -> datetime:
        """Two thirds into the certificate's life, counted from when it was received."""
        start = min(max(self.received_at, self.certificate.not_valid_before_utc), self.not_after)
        return start + (self.not_after - start) * RENEW_FRACTION

    def ssl_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca_path, self.credentials_path, self.credentials_path)


def _save(directory: Path, cert: x509.Certificate, key_pem: bytes, cloud_url: str) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = cert.public_bytes(serialization.Encoding.PEM) + key_pem
    write_file_atomic(directory / "gateway.pem", bundle, mode=0o600)
    meta = {
        "gateway_id": gateway_id_from_certificate(cert),
        "cloud_url": cloud_url,
        "received_at": datetime.now(UTC).isoformat(),
    }
    write_file_atomic(directory / "identity.json", json.dumps(meta).encode(), mode=0o644)


def load_identity(directory: Path) -> GatewayIdentity:
    meta_path = directory / "identity.json"
    if not meta_path.exists():
        raise NotEnrolled(f"no gateway identity in {directory}: run `tether gateway enroll CODE`")
    meta = json.loads(meta_path.read_text())
    cert = load_certificate(directory / "gateway.pem")
    return GatewayIdentity(
        directory=directory,
        gateway_id=meta["gateway_id"],
        cloud_url=meta["cloud_url"],
        received_at=datetime.fromisoformat(meta["received_at"]),
        certificate=cert,
    )


async def enroll(
    code: str,
    directory: Path,
    *,
    url: str | None = None,
    name_hint: str | None = None,
    proxy: str | None = None,
    trust_env: bool = True,
) -> GatewayIdentity:
    """Enroll with an enrollment code: pin the CA it names, make a key, get a certificate."""
    parsed = decode_code(code)
    base_url = url or parsed.url
    ca = await fetch_cacerts_bootstrap(
        base_url, parsed.ca_fingerprint, proxy=proxy, trust_env=trust_env
    )
    key = generate_private_key()
    cert = await simpleenroll(
        base_url,
        token=parsed.secret,
        csr=build_csr(key, name_hint),
        ca=ca,
        proxy=proxy,
        trust_env=trust_env,
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_pem(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _save(directory, cert, private_key_pem(key), base_url)
    return load_identity(directory)


async def renew(
    identity: GatewayIdentity, *, proxy: str | None = None, trust_env: bool = True
) -> GatewayIdentity:
    """Re-enroll (RFC 7030 simplereenroll) with a fresh key, authenticated by the current one."""
    key = generate_private_key()
    ca = load_certificate(identity.ca_path)
    cert = await simplereenroll(
        identity.cloud_url,
        csr=build_csr(key, identity.gateway_id),
        ca=ca,
        client_cert_path=identity.credentials_path,
        client_key_path=identity.credentials_path,
        proxy=proxy,
        trust_env=trust_env,
    )
    if gateway_id_from_certificate(cert) != identity.gateway_id:
        raise ValueError("the renewed certificate names another gateway")
    _save(identity.directory, cert, private_key_pem(key), identity.cloud_url)
    return load_identity(identity.directory)


def seconds_until(moment: datetime, *, floor: float = 1.0) -> float:
    return max(floor, (moment - datetime.now(UTC)) / timedelta(seconds=1))
