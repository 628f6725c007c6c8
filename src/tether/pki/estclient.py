"""The gateway's EST (RFC 7030) client: bootstrap the platform CA, enroll, re-enroll; TLS contexts.

Trust is built in two steps, like kubeadm's discovery-token CA hash:

1. :func:`fetch_cacerts_bootstrap` fetches ``/.well-known/est/cacerts`` over a provisional TLS
   connection that cannot be verified yet, then accepts the CA only if its SHA-256 fingerprint
   equals the one carried by the enrollment token, and only if the certificate the server
   presented on that very connection chains to that CA.
2. Every later request (:func:`simpleenroll`, :func:`simplereenroll`, and the link, through
   :func:`client_ssl_context`) verifies the server against that pinned CA alone: TLS 1.3,
   hostname checked, no system trust store. A TLS-inspecting proxy therefore fails loudly with
   :class:`~tether.pki.errors.ServerCertificateRejected`.

aiohttp exceptions are translated here; callers see only :mod:`tether.pki.errors` classes
(and ``ValueError`` for malformed arguments).
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from yarl import URL

from tether.pki import est
from tether.pki.ca import certificate_fingerprint
from tether.pki.errors import (
    CaFingerprintMismatch,
    EnrollmentPending,
    EnrollmentRefused,
    EstError,
    EstHttpError,
    EstProtocolError,
    EstTransportError,
    ServerCertificateRejected,
)
from tether.pki.tlscontext import pinned_client_context

__all__ = [
    "DEFAULT_TIMEOUT",
    "CaFingerprintMismatch",
    "EnrollmentPending",
    "EnrollmentRefused",
    "EstError",
    "EstHttpError",
    "EstProtocolError",
    "EstTransportError",
    "ServerCertificateRejected",
    "client_ssl_context",
    "fetch_cacerts_bootstrap",
    "normalize_fingerprint",
    "simpleenroll",
    "simplereenroll",
]

#: Seconds allowed for one whole EST exchange (connect, TLS, request, response); wrap a call in
#: ``asyncio.timeout`` for a shorter bound.
DEFAULT_TIMEOUT = 30.0
_MAX_ERROR_TEXT = 2000
_T = TypeVar("_T")


# -- TLS contexts ------------------------------------------------------------------------------


def client_ssl_context(
    ca: Path | str | bytes | x509.Certificate,
    cert_path: Path | str | None = None,
    key_path: Path | str | None = None,
) -> ssl.SSLContext:
    """:func:`~tether.pki.tlscontext.pinned_client_context`, which also takes the CA as a
    certificate object."""
    if isinstance(ca, x509.Certificate):
        ca = ca.public_bytes(serialization.Encoding.PEM)
    return pinned_client_context(ca, cert_path, key_path)


def _bootstrap_ssl_context() -> ssl.SSLContext:
    # Provisional: the server cannot be verified before the CA is known; see
    # fetch_cacerts_bootstrap for why this is safe.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


# -- helpers -----------------------------------------------------------------------------------


def normalize_fingerprint(fingerprint: str) -> str:
    """``sha256:<64 lowercase hex>`` from ``sha256:AB:CD:...``, bare hex, any case."""
    text = fingerprint.strip().lower()
    text = text.removeprefix("sha256:")
    hex_digits = text.replace(":", "")
    if len(hex_digits) != 64 or any(c not in "0123456789abcdef" for c in hex_digits):
        raise ValueError(
            f"malformed CA fingerprint {fingerprint!r}: expected sha256:<64 hex digits>"
        )
    return "sha256:" + hex_digits


def _endpoint(base_url: str, path: str) -> URL:
    url = URL(base_url)
    if url.scheme != "https" or not url.host:
        raise ValueError(f"EST needs an https:// URL with a host, got {base_url!r}")
    return url.with_path(url.path.rstrip("/") + path, encoded=False)


class _PeerCertResponse(aiohttp.ClientResponse):
    """A response that remembers the DER certificate the TLS peer presented on its connection.

    Captured in ``start`` because aiohttp may hand the connection back to its pool as soon as
    a short body has been received, before the caller sees the response.
    """

    peer_certificate_der: bytes | None = None

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            self.peer_certificate_der = ssl_object.getpeercert(binary_form=True)
        return await super().start(connection)


def _translate_client_error(exc: aiohttp.ClientError | TimeoutError, url: URL) -> EstError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ServerCertificateRejected(
            f"the certificate of {url.host} does not verify against the platform CA "
            f"({exc.certificate_error}); a TLS-inspecting proxy may be intercepting the "
            f"connection (exempt this host from decryption), or this is not the tether server"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):  # includes proxy connection failures
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return EstTransportError(
            f"EST request to {url}: cannot connect to {exc.host}:{exc.port}: {reason}"
        )
    if isinstance(exc, TimeoutError):
        return EstTransportError(f"EST request to {url} timed out")
    return EstTransportError(f"EST request to {url} failed: {exc}")


async def _exchange(
    url: URL,
    *,
    method: str,
    context: ssl.SSLContext,
    proxy: str | None,
    trust_env: bool,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    handle: Callable[[_PeerCertResponse], Awaitable[_T]],
) -> _T:
    session = aiohttp.ClientSession(
        trust_env=trust_env,
        timeout=aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT),
        response_class=_PeerCertResponse,
    )
    try:
        async with session:
            # Redirects are not followed: an EST server answers at the URL it was given.
            response = await session.request(
                method,
                url,
                ssl=context,
                proxy=proxy,
                headers=headers,
                data=data,
                allow_redirects=False,
            )
            async with response:
                if not isinstance(response, _PeerCertResponse):  # pragma: no cover
                    raise EstProtocolError("unexpected aiohttp response class")
                return await handle(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _translate_client_error(exc, url) from exc


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise EstProtocolError(f"EST response body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _error_text(response: aiohttp.ClientResponse) -> str:
    raw = await response.content.read(_MAX_ERROR_TEXT)
    return raw.decode("utf-8", errors="replace").strip()


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP-date: let the caller's backoff decide
    return seconds if seconds >= 0 else None


async def _certs_body(response: aiohttp.ClientResponse) -> list[x509.Certificate]:
    content_type = response.headers.get("Content-Type")
    if not est.media_type_matches(content_type, est.CONTENT_TYPE_PKCS7_MIME):
        raise EstProtocolError(
            f"EST response from {response.url} has Content-Type {content_type!r}, expected "
            f"{est.CONTENT_TYPE_CERTS_ONLY!r}"
        )
    return est.decode_certs_only(await _read_limited(response, est.MAX_CERTS_BODY))


# -- bootstrap ---------------------------------------------------------------------------------


def _verify_server_certificate(
    peer_der: bytes | None, ca: x509.Certificate, url: URL, now: datetime
) -> None:
    if not peer_der:
        raise ServerCertificateRejected(f"{url.host} presented no TLS certificate")
    try:
        leaf = x509.load_der_x509_certificate(peer_der)
    except ValueError as exc:
        raise ServerCertificateRejected(
            f"{url.host} presented an unparsable certificate: {exc}"
        ) from exc
    host = url.host or ""
    subject: verification.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host.rstrip(".").lower())
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca]))
        .time(now)
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, [])
    except verification.VerificationError as exc:
        raise ServerCertificateRejected(
            f"the certificate {host} presented does not chain to the CA named by the "
            f"enrollment token, or is not valid for {host} now ({exc}); the connection may "
            f"be intercepted"
        ) from exc


async def fetch_cacerts_bootstrap(
    base_url: str,
    expected_ca_fingerprint: str,
    *,
    proxy: str | None = None,
    trust_env: bool = False,
    now: datetime | None = None,
) -> x509.Certificate:
    """Fetch the platform CA (RFC 7030 §4.1.1 bootstrap distribution) and pin it.

    GET ``{base_url}/.well-known/est/cacerts`` over TLS 1.3 *without* verifying the server,
    because the CA that would verify it is what is being fetched. The answer is accepted only if

    * one returned certificate's SHA-256 fingerprint (of its DER) equals
      ``expected_ca_fingerprint``, which came with the enrollment token out of band
      (:class:`~tether.pki.errors.CaFingerprintMismatch` otherwise), and
    * the certificate the server presented on that same connection chains to that CA, is
      within its validity period (at ``now``, default the system clock) and names the host in
      ``base_url`` (:class:`~tether.pki.errors.ServerCertificateRejected` otherwise).

    Why the provisional connection is safe: nothing secret travels on it. The request carries
    no token, no key and no identity, and the response is public data whose authenticity is
    established by the fingerprint, not by the connection. An attacker in the path can at most
    make bootstrap fail; it cannot make the agent accept another CA. The token's secret is only
    sent later, by :func:`simpleenroll`, over a connection verified against the CA pinned here.

    ``proxy`` is an ``http://[user:pass@]host:port`` forward proxy used with CONNECT;
    ``trust_env`` lets aiohttp read proxy settings from the environment (off by default).
    """
    expected = normalize_fingerprint(expected_ca_fingerprint)
    url = _endpoint(base_url, est.CACERTS_PATH)
    moment = now if now is not None else datetime.now(UTC)

    async def handle(response: _PeerCertResponse) -> x509.Certificate:
        if response.status != 200:
            raise EstHttpError(response.status, await _error_text(response))
        certs = await _certs_body(response)
        served = [certificate_fingerprint(cert) for cert in certs]
        for cert, fingerprint in zip(certs, served, strict=True):
            if hmac.compare_digest(fingerprint, expected):
                _verify_server_certificate(response.peer_certificate_der, cert, url, moment)
                return cert
        raise CaFingerprintMismatch(expected, served)

    return await _exchange(
        url,
        method="GET",
        context=_bootstrap_ssl_context(),
        proxy=proxy,
        trust_env=trust_env,
        headers={"Accept": est.CONTENT_TYPE_PKCS7_MIME},
        handle=handle,
    )


# -- enrollment --------------------------------------------------------------------------------


def _public_der(key: Any) -> bytes:
    data: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


async def _enroll(
    url: URL,
    *,
    csr: x509.CertificateSigningRequest,
    ca: x509.Certificate,
    context: ssl.SSLContext,
    headers: dict[str, str],
    proxy: str | None,
    trust_env: bool,
) -> x509.Certificate:
    wanted_key = _public_der(csr.public_key())

    async def handle(response: _PeerCertResponse) -> x509.Certificate:
        if response.status == 202:
            raise EnrollmentPending(_retry_after(response))
        if 400 <= response.status < 500:
            raise EnrollmentRefused(response.status, await _error_text(response))
        if response.status != 200:
            raise EstHttpError(response.status, await _error_text(response))
        for cert in await _certs_body(response):
            if _public_der(cert.public_key()) == wanted_key:
                try:
                    cert.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature) as exc:
                    raise EstProtocolError(
                        f"the issued certificate was not signed by the platform CA ({exc!r})"
                    ) from exc
                return cert
        raise EstProtocolError("the EST response holds no certificate for the CSR's public key")

    return await _exchange(
        url,
        method="POST",
        context=context,
        proxy=proxy,
        trust_env=trust_env,
        headers={
            "Content-Type": est.CONTENT_TYPE_PKCS10,
            "Content-Transfer-Encoding": est.CONTENT_TRANSFER_ENCODING,
            "Accept": est.CONTENT_TYPE_PKCS7_MIME,
            **headers,
        },
        data=est.encode_csr(csr),
        handle=handle,
    )


async def simpleenroll(
    base_url: str,
    *,
    token: str,
    csr: x509.CertificateSigningRequest,
    ca: x509.Certificate,
    proxy: str | None = None,
    trust_env: bool = False,
) -> x509.Certificate:
    """Enroll (RFC 7030 §4.2.1): POST the CSR with ``Authorization: Bearer <token>``.

    The server is verified against ``ca`` only (TLS 1.3, hostname checked), so the token never
    reaches anyone but the platform. Returns the issued certificate, checked to carry the CSR's
    public key and the CA's signature. Raises
    :class:`~tether.pki.errors.EnrollmentRefused` (status and the server's text) on 4xx,
    :class:`~tether.pki.errors.EnrollmentPending` on 202,
    :class:`~tether.pki.errors.ServerCertificateRejected` if the server does not verify,
    :class:`~tether.pki.errors.EstTransportError` if it cannot be reached.
    """
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("the enrollment token must be a non-empty single line")
    return await _enroll(
        _endpoint(base_url, est.SIMPLEENROLL_PATH),
        csr=csr,
        ca=ca,
        context=client_ssl_context(ca),
        headers={"Authorization": f"Bearer {token}"},
        proxy=proxy,
        trust_env=trust_env,
    )


async def simplereenroll(
    base_url: str,
    *,
    csr: x509.CertificateSigningRequest,
    ca: x509.Certificate,
    client_cert_path: Path,
    client_key_path: Path,
    proxy: str | None = None,
    trust_env: bool = False,
) -> x509.Certificate:
    """Renew (RFC 7030 §4.2.2): POST a CSR for the new key, authenticated by mutual TLS.

    The current certificate and key authenticate the request; ``csr`` may carry a new key
    (recommended) or the same one. Errors as for :func:`simpleenroll`.
    """
    return await _enroll(
        _endpoint(base_url, est.SIMPLEREENROLL_PATH),
        csr=csr,
        ca=ca,
        context=client_ssl_context(ca, client_cert_path, client_key_path),
        headers={},
        proxy=proxy,
        trust_env=trust_env,
    )
