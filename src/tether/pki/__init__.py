"""tether.pki: the platform CA, certificate issuance, and EST (RFC 7030) enrollment.

Modules:

* :mod:`tether.pki.ca`: the CA (``CertificateAuthority``), gateway and server issuance,
  fingerprints and identity helpers;
* :mod:`tether.pki.keys`: key generation, CSRs, private (0600, atomic) and PEM files;
* :mod:`tether.pki.est`: the EST message codec (no I/O);
* :mod:`tether.pki.estclient`: the gateway's EST client;
* :mod:`tether.pki.tlscontext`: the pinned-CA TLS client context (standard library only);
* :mod:`tether.pki.errors`: the exception tree, re-exported here.

Importing this package does not import aiohttp; only :mod:`tether.pki.estclient` does.
"""

from tether.pki.errors import (
    CaFingerprintMismatch,
    CertificateIdentityError,
    CsrInvalid,
    EnrollmentPending,
    EnrollmentRefused,
    EstDecodeError,
    EstError,
    EstHttpError,
    EstProtocolError,
    EstTransportError,
    InsecureKeyFile,
    InvalidGatewayId,
    PkiError,
    PkiFileError,
    ServerCertificateRejected,
    WeakKey,
)

__all__ = [
    "CaFingerprintMismatch",
    "CertificateIdentityError",
    "CsrInvalid",
    "EnrollmentPending",
    "EnrollmentRefused",
    "EstDecodeError",
    "EstError",
    "EstHttpError",
    "EstProtocolError",
    "EstTransportError",
    "InsecureKeyFile",
    "InvalidGatewayId",
    "PkiError",
    "PkiFileError",
    "ServerCertificateRejected",
    "WeakKey",
]
