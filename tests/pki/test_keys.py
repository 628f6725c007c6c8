"""Tests for tether.pki.keys: key generation, CSRs, atomic private writes, checked loads."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tether.pki.errors import InsecureKeyFile, PkiFileError
from tether.pki.keys import (
    build_csr,
    generate_private_key,
    load_certificate,
    load_private_key,
    private_key_pem,
    write_pem,
    write_private_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_key_is_p256() -> None:
    key = generate_private_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_csr_with_and_without_hint() -> None:
    key = generate_private_key()
    csr = build_csr(key, "boiler-room-3")
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "boiler-room-3"
    assert build_csr(key, None).subject == x509.Name([])


def test_csr_with_ed25519_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = build_csr(key, "gw")
    assert csr.is_signature_valid
    assert csr.signature_hash_algorithm is None


def test_private_key_written_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "gw.key", generate_private_key())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "gw.key") == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["gw.key"]  # no temporary left behind


def test_private_key_replaced_atomically_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "gw.key"
    first, second = generate_private_key(), generate_private_key()
    write_private_key(path, first)
    inode_before = os.stat(path).st_ino
    write_private_key(path, second)
    assert os.stat(path).st_ino != inode_before  # a new file was renamed over the old one
    assert _mode(path) == 0o600
    loaded = load_private_key(path)
    assert loaded.public_key() == second.public_key()


def test_replace_false_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "gw.key"
    key = generate_private_key()
    write_private_key(path, key)
    with pytest.raises(FileExistsError):
        write_private_key(path, generate_private_key(), replace=False)
    assert load_private_key(path).public_key() == key.public_key()
    assert [p.name for p in tmp_path.iterdir()] == ["gw.key"]


def test_concurrent_writers_leave_one_whole_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.key"
    keys = [generate_private_key() for _ in range(6)]
    threads = [threading.Thread(target=write_private_key, args=(path, k)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert path.read_bytes() in {private_key_pem(k) for k in keys}
    assert [p.name for p in tmp_path.iterdir()] == ["gw.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o601])
def test_loading_a_loose_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "gw.key"
    write_private_key(path, generate_private_key())
    path.chmod(mode)
    with pytest.raises(InsecureKeyFile, match=f"{mode:04o}"):
        load_private_key(path)


def test_loading_through_a_symlink_is_refused(tmp_path: Path) -> None:
    write_private_key(tmp_path / "real.key", generate_private_key())
    (tmp_path / "link.key").symlink_to(tmp_path / "real.key")
    with pytest.raises(PkiFileError, match="cannot open"):
        load_private_key(tmp_path / "link.key")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(PkiFileError, match="does not exist"):
        load_private_key(tmp_path / "absent.key")
    with pytest.raises(PkiFileError, match="does not exist"):
        load_certificate(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(PkiFileError, match="unencrypted PEM private key"):
        load_private_key(garbage)
    with pytest.raises(PkiFileError, match="PEM certificate"):
        load_certificate(garbage)


def test_write_pem_is_world_readable_and_loads(tmp_path: Path) -> None:
    from tether.pki.ca import CertificateAuthority

    ca = CertificateAuthority.generate()
    write_pem(tmp_path / "ca.pem", ca.certificate_pem())
    assert _mode(tmp_path / "ca.pem") == 0o644
    assert load_certificate(tmp_path / "ca.pem") == ca.certificate
