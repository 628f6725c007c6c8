"""Exception tree of the PKI package: who is at fault and what went wrong.

::

    PkiError
    ├── InsecureKeyFile            a private key file is readable by group or others
    ├── PkiFileError               a PKI file is missing, unreadable, malformed or inconsistent
    ├── InvalidGatewayId           (also ValueError) a gateway id unfit for a certificate
    ├── CertificateIdentityError   a certificate names no gateway
    ├── CsrInvalid                 a CSR the CA will not sign (bad signature, unusable)
    │   └── WeakKey                the CSR's key is too weak or of an unsupported type
    └── EstError                   anything on the EST path (RFC 7030)
        ├── EstDecodeError         a body that is not what its content type promises
        ├── EstProtocolError       a well-formed answer that does not make sense
        ├── EstTransportError      the server could not be reached (DNS, TCP, TLS, proxy, timeout)
        ├── ServerCertificateRejected   the server's certificate does not chain to the pinned CA
        ├── CaFingerprintMismatch  the CA served at bootstrap is not the one the token names
        ├── EnrollmentPending      the server accepted the request but has not issued yet (202)
        └── EstHttpError           an unexpected HTTP status (carries status and server text)
            └── EnrollmentRefused  4xx on simpleenroll/simplereenroll (bad token, refused CSR)
"""

from __future__ import annotations

from pathlib import Path


class PkiError(Exception):
    """Base class of every error raised by ``tether.pki``."""


class InsecureKeyFile(PkiError):
    """A private key file grants access to group or others (anything looser than 0600)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        super().__init__(
            f"refusing private key {path}: its mode is {mode:04o}, which lets other users "
            f"read it; it must be 0600 or stricter (fix with: chmod 600 {path})"
        )


class PkiFileError(PkiError):
    """A PKI file is missing, unreadable, malformed or does not match its companion file."""


class InvalidGatewayId(PkiError, ValueError):
    """A gateway id that cannot be put into a certificate."""


class CertificateIdentityError(PkiError):
    """A certificate carries no gateway identity (neither the tether URN nor a common name)."""


class CsrInvalid(PkiError):
    """A certificate signing request the CA refuses to sign."""


class WeakKey(CsrInvalid):
    """The CSR's public key is too weak or of a type the CA does not accept."""


class EstError(PkiError):
    """Base class of errors on the EST (RFC 7030) path."""


class EstDecodeError(EstError):
    """A body that does not decode to what its content type promises."""


class EstProtocolError(EstError):
    """A well-formed EST answer that does not make sense (wrong content type, wrong certificate)."""


class EstTransportError(EstError):
    """The EST server could not be reached or the exchange broke off."""


class ServerCertificateRejected(EstError):
    """The server's TLS certificate does not chain to the pinned platform CA.

    On a site network this usually means a TLS-inspecting proxy is intercepting the connection.
    """


class CaFingerprintMismatch(EstError):
    """The CA certificate served at bootstrap is not the one the enrollment token names."""

    def __init__(self, expected: str, served: list[str]) -> None:
        self.expected = expected
        self.served = served
        super().__init__(
            f"the server's CA certificate does not match the enrollment token: expected "
            f"{expected}, the server sent {', '.join(served) or 'no certificate'} "
            f"(wrong server, wrong token, or the connection is being intercepted)"
        )


class EnrollmentPending(EstError):
    """HTTP 202: the server holds the request (e.g. for manual approval); ask again later."""

    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after
        later = f"after {retry_after:g} s" if retry_after is not None else "later"
        super().__init__(f"enrollment accepted but not yet issued; retry {later}")


class EstHttpError(EstError):
    """The EST server answered with an unexpected HTTP status."""

    def __init__(self, status: int, text: str, *, summary: str = "EST server answered") -> None:
        self.status = status
        self.text = text
        super().__init__(f"{summary} HTTP {status}: {text or '(no text given)'}")


class EnrollmentRefused(EstHttpError):
    """The EST server refused to enroll (HTTP 4xx): bad or used token, unacceptable CSR, ..."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason, summary="enrollment refused with")
        self.reason = reason
