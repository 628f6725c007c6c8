"""Private keys, CSRs and PEM files on disk: generation, atomic private writes, checked loads.

Private key files are never visible to other users, not even for an instant: they are created
with ``os.open(O_CREAT | O_EXCL, 0o600)`` under a temporary name in the destination directory,
written and fsynced, then moved into place with ``os.replace`` (or ``os.link`` when an existing
file must not be overwritten). Loading a private key refuses a file whose mode grants anything to
group or others (:class:`~tether.pki.errors.InsecureKeyFile`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tether.pki.errors import PkiFileError
from tether.pki.tlscontext import check_private_mode, read_certificate_file

__all__ = [
    "PrivateKey",
    "build_csr",
    "check_private_mode",
    "generate_private_key",
    "load_certificate",
    "load_private_key",
    "private_key_pem",
    "signing_hash",
    "write_pem",
    "write_private_key",
]

#: Key types tether signs with (gateway keys, the CA key, server keys).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """Return a new EC P-256 private key (the default for every tether key)."""
    return ec.generate_private_key(ec.SECP256R1())


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The hash to sign with ``key``: SHA-256, or None for Ed25519 (which hashes internally)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return hashes.SHA256()


def build_csr(key: PrivateKey, gateway_hint: str | None = None) -> x509.CertificateSigningRequest:
    """Build a PKCS#10 CSR signed by ``key``.

    ``gateway_hint`` goes into the subject CN for the operator's information only: the CA sets
    the issued certificate's subject from the gateway id the enrollment token resolves to and
    never trusts the CSR's subject. Without a hint the subject is empty.
    """
    names: list[x509.NameAttribute] = []
    if gateway_hint:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, gateway_hint[:64]))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    return builder.sign(key, signing_hash(key))


def private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (protected by file permissions, not a passphrase)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, mode: int, replace: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    The temporary file is created with ``O_CREAT | O_EXCL`` and ``mode`` (then ``fchmod`` to
    ``mode`` exactly, whatever the umask), so a private file is never readable by others. With
    ``replace=False`` an existing ``path`` is left alone and :class:`FileExistsError` is raised.
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError instead of overwriting
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_private_key(path: Path, key: PrivateKey, *, replace: bool = True) -> None:
    """Write ``key`` as PKCS#8 PEM to ``path`` with mode 0600, atomically.

    An existing file is replaced atomically (``replace=False`` refuses to overwrite it with
    :class:`FileExistsError`).
    """
    write_file_atomic(Path(path), private_key_pem(key), mode=_PRIVATE_MODE, replace=replace)


def write_pem(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write public PEM data (certificates) to ``path`` with mode 0644, atomically."""
    write_file_atomic(Path(path), data, mode=_PUBLIC_MODE, replace=replace)


def read_private_file(path: Path) -> bytes:
    """Read a secret file after checking (on the opened descriptor) that only its owner can."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise PkiFileError(f"private key file {path} does not exist") from exc
    except OSError as exc:
        raise PkiFileError(f"cannot open private key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PkiFileError(f"private key file {path} is not a regular file")
        check_private_mode(path, info.st_mode)
        return handle.read()


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key, refusing files readable by group or others."""
    data = read_private_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiFileError(f"{path} does not hold an unencrypted PEM private key: {exc}") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PkiFileError(f"{path} holds a {type(key).__name__}, which tether does not use")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load the first certificate of a PEM file."""
    path = Path(path)
    data = read_certificate_file(path)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PkiFileError(f"{path} does not hold a PEM certificate: {exc}") from exc
