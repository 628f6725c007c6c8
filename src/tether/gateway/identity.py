"""The gateway's identity: enrollment with a one-time code, storage, automatic renewal.

Files in ``<data_dir>/identity/``:
    ca.pem          the platform CA, pinned: the only trust anchor of every connection
    gateway.pem     the client certificate followed by its private key (mode 0600)
    identity.json   gateway id, cloud URL, when the certificate was received, its validity
                    and SHA-256 (so starting the agent needs no X.509 parser)
The certificate and key share one file so a renewal replaces both in one atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.gateway.settings import check_cloud_url
from tether.pki.errors import PkiFileError
from tether.pki.tlscontext import pinned_client_context, read_certificate_file
from tether.protocol.enrollment import decode_code

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "AlreadyEnrolled",
    "EnrollmentNotStarted",
    "GatewayIdentity",
    "IdentityDamaged",
    "NotEnrolled",
    "enroll",
    "load_identity",
    "renew",
    "seconds_until",
]

RENEW_FRACTION = 2 / 3
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class NotEnrolled(RuntimeError):
    """No identity in the data directory: enroll first (``tether gateway enroll -``)."""


class IdentityDamaged(PkiFileError):
    """A file of the identity is there but unusable (truncated, edited, not what it should be);
    the message names the file and says how to recover."""


class EnrollmentNotStarted(RuntimeError):
    """Enrollment was refused before the cloud was contacted: the code is still unused."""


class AlreadyEnrolled(EnrollmentNotStarted):
    """The directory holds an identity already; replacing it needs ``force``."""

    def __init__(self, directory: Path, gateway_id: str | None) -> None:
        self.gateway_id = gateway_id
        who = f"gateway {gateway_id}" if gateway_id else "a gateway (its id is unreadable)"
        super().__init__(
            f"{directory} already holds the identity of {who}: enrolling again would replace "
            f"it and leave that gateway in the fleet; give --force to replace it anyway "
            f"(then revoke the old one), or use another --data-dir"
        )


#: What :func:`load_identity` needs in ``identity.json``; the dates are ISO 8601 with a zone.
_META_TEXT = ("gateway_id", "cloud_url")
_META_DATES = ("received_at", "not_before", "not_after")


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """Who the gateway is and when its certificate ends. The validity comes from
    ``identity.json``, written with the certificate: reading it needs no X.509 parser, so an
    agent whose certificate is fresh never loads one (:attr:`certificate` does, on demand)."""

    directory: Path
    gateway_id: str
    cloud_url: str
    received_at: datetime
    not_before: datetime
    not_after: datetime

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def credentials_path(self) -> Path:
        return self.directory / "gateway.pem"

    @property
    def certificate(self) -> x509.Certificate:
        """The client certificate, parsed (loads the X.509 toolkit)."""
        from tether.pki.keys import load_certificate

        return load_certificate(self.credentials_path)

    def renewal_due(self) -> datetime:
        """Two thirds into the certificate's life, counted from when it was received."""
        start = min(max(self.received_at, self.not_before), self.not_after)
        return start + (self.not_after - start) * RENEW_FRACTION

    def ssl_context(self) -> ssl.SSLContext:
        return pinned_client_context(self.ca_path, self.credentials_path, self.credentials_path)


def _certificate_digest(pem: bytes, path: Path) -> str:
    """SHA-256 of the DER of the first certificate in *pem* (standard library only)."""
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise PkiFileError(f"{path} does not hold a PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group().decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PkiFileError(f"{path} does not hold a PEM certificate: {exc}") from exc
    return hashlib.sha256(der).hexdigest()


def _certificate_facts(cert: x509.Certificate, digest: str) -> dict[str, str]:
    """What ``identity.json`` keeps of the certificate (*digest*: :func:`_certificate_digest`
    of its file, the check :func:`load_identity` makes)."""
    return {
        "certificate_sha256": digest,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    from tether.pki.keys import write_file_atomic

    write_file_atomic(directory / "identity.json", json.dumps(meta).encode(), mode=0o644)


def _save(directory: Path, cert: x509.Certificate, key_pem: bytes, cloud_url: str) -> None:
    from cryptography.hazmat.primitives import serialization

    from tether.pki.ca import gateway_id_from_certificate
    from tether.pki.keys import write_file_atomic

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = cert.public_bytes(serialization.Encoding.PEM) + key_pem
    credentials = directory / "gateway.pem"
    write_file_atomic(credentials, bundle, mode=0o600)
    meta = {
        "gateway_id": gateway_id_from_certificate(cert),
        "cloud_url": cloud_url,
        "received_at": datetime.now(UTC).isoformat(),
    } | _certificate_facts(cert, _certificate_digest(bundle, credentials))
    _write_meta(directory, meta)


def _damaged(path: Path, what: str) -> IdentityDamaged:
    return IdentityDamaged(
        f"{path}: {what}; the gateway's identity is damaged: restore it from a backup, or "
        f"enroll again with a new code (tether gateway enroll --force)"
    )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_bytes())
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _damaged(path, f"is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "is not a JSON object")
    return meta


def _check_meta(path: Path, meta: dict[str, Any]) -> dict[str, datetime]:
    """The dates of *meta*, after checking every field :func:`load_identity` uses."""
    for key in _META_TEXT:
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise _damaged(path, f"has no {key!r}")
    dates: dict[str, datetime] = {}
    for key in _META_DATES:
        value = meta.get(key)
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise _damaged(path, f"has no valid {key!r} (an ISO 8601 time with its zone)")
        dates[key] = moment
    return dates


def load_identity(directory: Path) -> GatewayIdentity:
    """The identity in *directory*. When ``identity.json`` does not describe the certificate
    beside it (written by an older agent, or the certificate was replaced by hand), the
    certificate is parsed once and the file brought up to date.

    Raises :class:`NotEnrolled` when there is no identity, :class:`IdentityDamaged` (or another
    :class:`~tether.pki.errors.PkiFileError`) naming the file when one of its files is unusable.
    """
    meta_path = directory / "identity.json"
    if not meta_path.exists():
        raise NotEnrolled(
            f"no gateway identity in {directory}: enroll it first "
            "(`tether gateway enroll -` reads the enrollment code from standard input)"
        )
    meta = _read_meta(meta_path)
    credentials = directory / "gateway.pem"
    pem = read_certificate_file(credentials)
    digest = _certificate_digest(pem, credentials)
    if meta.get("certificate_sha256") != digest:
        from tether.pki.ca import gateway_id_from_certificate
        from tether.pki.errors import PkiError
        from tether.pki.keys import load_certificate

        try:
            cert = load_certificate(credentials)
            gateway_id = gateway_id_from_certificate(cert)
        except (PkiError, ValueError) as exc:
            raise _damaged(credentials, f"holds no usable certificate ({exc})") from None
        meta |= _certificate_facts(cert, digest) | {"gateway_id": gateway_id}
        dates = _check_meta(meta_path, meta)
        _write_meta(directory, meta)
    else:
        dates = _check_meta(meta_path, meta)
    return GatewayIdentity(
        directory=directory,
        gateway_id=meta["gateway_id"],
        cloud_url=meta["cloud_url"],
        received_at=dates["received_at"],
        not_before=dates["not_before"],
        not_after=dates["not_after"],
    )


def _existing_gateway(directory: Path) -> str | None:
    """The id of the gateway whose identity *directory* holds ("" if unreadable), or None."""
    meta_path = directory / "identity.json"
    if not meta_path.exists() and not (directory / "gateway.pem").exists():
        return None
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_bytes())
        if isinstance(meta, dict) and isinstance(meta.get("gateway_id"), str):
            return str(meta["gateway_id"])
    return ""


def prepare_directories(directory: Path) -> None:
    """Create the identity *directory* and its data directory (mode 0700), and prove both
    writable with a probe file: whatever enrollment obtains must be storable before a
    one-time code is spent. Raises :class:`EnrollmentNotStarted` naming the directory."""
    for place in (directory.parent, directory):
        try:
            if not place.is_dir():
                place.mkdir(mode=0o700, parents=True)
                os.chmod(place, 0o700)  # exactly, whatever the umask
            probe = place / f".probe-{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    probe.unlink()
        except OSError as exc:
            raise EnrollmentNotStarted(
                f"cannot write in {place} ({exc.strerror}): the gateway's identity could not "
                f"be stored there; fix the directory (or choose another --data-dir) and enroll "
                f"again, the code was not used"
            ) from None


async def enroll(
    code: str,
    directory: Path,
    *,
    url: str | None = None,
    name_hint: str | None = None,
    proxy: str | None = None,
    trust_env: bool = True,
    force: bool = False,
) -> GatewayIdentity:
    """Enroll with an enrollment code: pin the CA it names, make a key, get a certificate.

    Everything that can be checked locally is checked before the cloud is contacted (the
    code is single use): the URL, that *directory* holds no identity yet (unless *force*),
    and that it is writable. Those refusals raise :class:`EnrollmentNotStarted`.
    """
    from cryptography.hazmat.primitives import serialization

    from tether.pki.estclient import fetch_cacerts_bootstrap, simpleenroll
    from tether.pki.keys import build_csr, generate_private_key, private_key_pem, write_pem

    parsed = decode_code(code)
    try:
        base_url = check_cloud_url(url or parsed.url)
    except ValueError as exc:
        where = "--url" if url else "the enrollment code's URL"
        raise EnrollmentNotStarted(f"{where}: {exc}") from None
    existing = _existing_gateway(directory)
    if existing is not None and not force:
        raise AlreadyEnrolled(directory, existing or None)
    prepare_directories(directory)
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
    write_pem(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _save(directory, cert, private_key_pem(key), base_url)
    return load_identity(directory)


async def renew(
    identity: GatewayIdentity,
    *,
    url: str | None = None,
    proxy: str | None = None,
    trust_env: bool = True,
) -> GatewayIdentity:
    """Re-enroll (RFC 7030 simplereenroll) with a fresh key, authenticated by the current one.

    The request goes to *url* (the cloud the link uses, which ``cloud_url`` in agent.toml may
    override), else to the URL recorded at enrollment; the recorded URL stays as it was."""
    from tether.pki.ca import gateway_id_from_certificate
    from tether.pki.estclient import simplereenroll
    from tether.pki.keys import build_csr, generate_private_key, load_certificate, private_key_pem

    key = generate_private_key()
    ca = load_certificate(identity.ca_path)
    cert = await simplereenroll(
        url or identity.cloud_url,
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
