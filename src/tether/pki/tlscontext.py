"""Client TLS contexts pinned to the platform CA, and the file checks they need, with the
standard library alone.

The agent builds these for every connection it makes, so they must not need the X.509 toolkit
(``cryptography``): a gateway whose certificate is still fresh never loads it.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from tether.pki.errors import InsecureKeyFile, PkiFileError

__all__ = ["check_private_mode", "pinned_client_context", "read_certificate_file"]


def check_private_mode(path: Path, mode: int) -> None:
    """Raise :class:`InsecureKeyFile` if ``mode`` grants any permission to group or others."""
    if stat.S_IMODE(mode) & 0o077:
        raise InsecureKeyFile(Path(path), stat.S_IMODE(mode))


def read_certificate_file(path: Path) -> bytes:
    """The bytes of a certificate file; :class:`~tether.pki.errors.PkiFileError` if it is
    missing or cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise PkiFileError(f"certificate file {path} does not exist") from exc
    except OSError as exc:
        raise PkiFileError(f"cannot read certificate file {path}: {exc.strerror}") from exc


def pinned_client_context(
    ca: Path | str | bytes,
    cert_path: Path | str | None = None,
    key_path: Path | str | None = None,
) -> ssl.SSLContext:
    """A client TLS context that trusts only the platform CA.

    ``ca`` is a path to the CA's PEM file, or PEM bytes. TLS 1.3 is the minimum, the server
    certificate must chain to ``ca`` (no system trust store is loaded) and name the host
    connected to (``check_hostname``), under OpenSSL's strict X.509 checks. With ``cert_path``
    (PEM certificate, optionally followed by its chain) and ``key_path`` (PEM key; if omitted
    the key is read from ``cert_path``) the context presents a client certificate for mutual
    TLS; the key file must not be readable by group or others.

    Raises :class:`~tether.pki.errors.PkiFileError` for unreadable or malformed files and
    :class:`~tether.pki.errors.InsecureKeyFile` for a key file looser than 0600.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    # Offer ALPN like every browser does: some firewalls and load balancers classify or route
    # on it, and WebSocket upgrades and EST both run over HTTP/1.1.
    context.set_alpn_protocols(["http/1.1"])
    try:
        if isinstance(ca, bytes):
            context.load_verify_locations(cadata=ca.decode("ascii"))
        else:
            context.load_verify_locations(cafile=os.fspath(ca))
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise PkiFileError(f"cannot load the platform CA certificate: {exc}") from exc
    if cert_path is None:
        if key_path is not None:
            raise ValueError("key_path given without cert_path")
        return context
    key_file = key_path if key_path is not None else cert_path
    try:
        check_private_mode(Path(key_file), os.stat(key_file).st_mode)
        context.load_cert_chain(os.fspath(cert_path), os.fspath(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise PkiFileError(
            f"cannot load the client certificate {cert_path} / key {key_file}: {exc}"
        ) from exc
    return context
