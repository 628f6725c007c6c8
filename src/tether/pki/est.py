"""EST (RFC 7030) message codec: certs-only PKCS#7 and PKCS#10 bodies, no I/O.

RFC 7030 §4.1.3 and §4.2.3 carry certificates as a degenerate ("certs-only") CMS SignedData
in DER, and §4.2.1 carries the CSR as PKCS#10 DER; both travel base64-encoded (RFC 8951
clarifies that the base64 encoding applies whatever ``Content-Transfer-Encoding`` says). Decoders
accept any whitespace between base64 characters and, for friendliness, PEM as well. Every
malformed body raises :class:`~tether.pki.errors.EstDecodeError` and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import warnings
from collections.abc import Iterator, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.utils import CryptographyDeprecationWarning

from tether.pki.errors import EstDecodeError, EstError

__all__ = [
    "CACERTS_PATH",
    "CONTENT_TRANSFER_ENCODING",
    "CONTENT_TYPE_CERTS_ONLY",
    "CONTENT_TYPE_PKCS7_MIME",
    "CONTENT_TYPE_PKCS10",
    "MAX_CERTS_BODY",
    "MAX_CSR_BODY",
    "SIMPLEENROLL_PATH",
    "SIMPLEREENROLL_PATH",
    "WELL_KNOWN_PREFIX",
    "EstDecodeError",
    "EstError",
    "decode_certs_only",
    "decode_csr",
    "encode_certs_only",
    "encode_csr",
    "media_type_matches",
]

#: RFC 7030 §3.2.2: the operation path prefix.
WELL_KNOWN_PREFIX = "/.well-known/est"
CACERTS_PATH = WELL_KNOWN_PREFIX + "/cacerts"
SIMPLEENROLL_PATH = WELL_KNOWN_PREFIX + "/simpleenroll"
SIMPLEREENROLL_PATH = WELL_KNOWN_PREFIX + "/simplereenroll"

#: Media type of cacerts / simpleenroll / simplereenroll responses (RFC 7030 §4.1.3, §4.2.3).
CONTENT_TYPE_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
#: The media type alone, for comparing against a received Content-Type.
CONTENT_TYPE_PKCS7_MIME = "application/pkcs7-mime"
#: Media type of simpleenroll / simplereenroll request bodies (RFC 7030 §4.2.1).
CONTENT_TYPE_PKCS10 = "application/pkcs10"
#: Value of the Content-Transfer-Encoding header on EST bodies.
CONTENT_TRANSFER_ENCODING = "base64"

#: Largest CSR body accepted (an RSA-8192 CSR is about 2 KiB of DER).
MAX_CSR_BODY = 64 * 1024
#: Largest certs-only body accepted.
MAX_CERTS_BODY = 1024 * 1024

_LINE = 76  # MIME base64 line length (RFC 2045 §6.8)
_PEM_MARK = b"-----BEGIN "


def media_type_matches(content_type: str | None, expected: str) -> bool:
    """True if a Content-Type header names ``expected``'s media type (parameters ignored)."""
    if not content_type:
        return False
    received = content_type.split(";", 1)[0].strip().lower()
    return received == expected.split(";", 1)[0].strip().lower()


def _wrap_base64(der: bytes) -> bytes:
    encoded = base64.b64encode(der)
    lines = [encoded[i : i + _LINE] for i in range(0, len(encoded), _LINE)]
    return b"\r\n".join(lines) + b"\r\n"


def _unwrap_base64(body: bytes, what: str) -> bytes:
    compact = bytes(body).translate(None, b" \t\r\n\v\f")
    if not compact:
        raise EstDecodeError(f"{what} body is empty")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EstDecodeError(f"{what} body is not valid base64: {exc}") from exc


def _check_size(body: bytes, limit: int, what: str) -> None:
    if len(body) > limit:
        raise EstDecodeError(f"{what} body of {len(body)} bytes exceeds the {limit}-byte limit")


@contextlib.contextmanager
def _parse_errors(what: str) -> Iterator[None]:
    """Turn every way cryptography rejects a structure into one EstDecodeError.

    Structures that cryptography still loads but deprecates (e.g. a negative serial number,
    which RFC 5280 forbids) are refused too rather than surfacing as a warning.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            yield
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise EstDecodeError(f"{what} body does not parse: {exc}") from exc
    except CryptographyDeprecationWarning as exc:
        raise EstDecodeError(f"{what} body is malformed: {exc}") from exc


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """Base64 (76-column lines, CRLF) of a DER certs-only PKCS#7 holding ``certs``.

    The certificates form a DER ``SET OF``, so their order is not preserved on the wire.
    """
    if not certs:
        raise ValueError("a certs-only message needs at least one certificate")
    der = pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)
    return _wrap_base64(der)


def decode_certs_only(body: bytes) -> list[x509.Certificate]:
    """The certificates of a base64 DER (or PEM) certs-only PKCS#7 body (in wire order)."""
    what = "certs-only PKCS#7"
    _check_size(body, MAX_CERTS_BODY, what)
    with _parse_errors(what):
        if bytes(body).lstrip().startswith(_PEM_MARK):
            certs = pkcs7.load_pem_pkcs7_certificates(bytes(body))
        else:
            certs = pkcs7.load_der_pkcs7_certificates(_unwrap_base64(body, what))
    if not certs:
        raise EstDecodeError(f"{what} body contains no certificates")
    return certs


def encode_csr(csr: x509.CertificateSigningRequest) -> bytes:
    """Base64 (76-column lines, CRLF) of the CSR's PKCS#10 DER."""
    return _wrap_base64(csr.public_bytes(serialization.Encoding.DER))


def decode_csr(body: bytes) -> x509.CertificateSigningRequest:
    """The CSR in a base64 DER PKCS#10 body (PEM accepted too).

    Only the encoding is checked here; the CA checks the signature and the key when issuing.
    """
    what = "PKCS#10 CSR"
    _check_size(body, MAX_CSR_BODY, what)
    with _parse_errors(what):
        if bytes(body).lstrip().startswith(_PEM_MARK):
            return x509.load_pem_x509_csr(bytes(body))
        return x509.load_der_x509_csr(_unwrap_base64(body, what))
