"""The gateway's stored identity: loaded without an X.509 parser when ``identity.json``
describes the certificate beside it, and brought up to date once when it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.cloudproc import create_token, enroll_gateway, free_port, running_cloud

from tether.gateway import identity as identity_module
from tether.gateway.identity import load_identity, renew
from tether.pki.ca import CertificateAuthority
from tether.pki.errors import PkiFileError
from tether.pki.keys import build_csr, generate_private_key, private_key_pem, write_pem

NOW = datetime.now(UTC).replace(microsecond=0)
CLOUD = "https://cloud.example:8443"


def _issue(ca: CertificateAuthority, gateway_id: str, days: int) -> tuple[bytes, bytes]:
    key = generate_private_key()
    cert = ca.issue_client(
        build_csr(key, gateway_id), gateway_id=gateway_id, lifetime=timedelta(days=days), now=NOW
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(now=NOW - timedelta(days=1))


@pytest.fixture
def stored(tmp_path: Path, ca: CertificateAuthority) -> Path:
    """An identity directory as enrollment leaves it."""
    from cryptography import x509

    directory = tmp_path / "identity"
    cert_pem, key_pem = _issue(ca, "gw-7", days=30)
    directory.mkdir(mode=0o700)
    write_pem(directory / "ca.pem", ca.certificate_pem())
    identity_module._save(directory, x509.load_pem_x509_certificate(cert_pem), key_pem, CLOUD)
    return directory


def test_what_is_saved_describes_the_certificate(stored: Path) -> None:
    identity = load_identity(stored)
    cert = identity.certificate  # parsed on demand
    assert identity.gateway_id == "gw-7"
    assert identity.cloud_url == CLOUD
    assert identity.not_before == cert.not_valid_before_utc
    assert identity.not_after == cert.not_valid_after_utc
    assert identity.not_after - identity.not_before > timedelta(days=29)
    # two thirds of the life left after receipt (the certificate began before it was received)
    life = identity.not_after - identity.received_at
    assert abs(identity.renewal_due() - (identity.received_at + life * 2 / 3)) < timedelta(
        seconds=1
    )
    assert os.stat(stored / "gateway.pem").st_mode & 0o777 == 0o600


_PROBE = """
import json, sys
from pathlib import Path
from tether.gateway.identity import load_identity
identity = load_identity(Path(sys.argv[1]))
identity.ssl_context()
print(json.dumps({
    "due": identity.renewal_due().isoformat(),
    "x509": sorted(m for m in sys.modules if m.startswith("cryptography")),
}))
"""


def _load_in_fresh_interpreter(directory: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_starting_from_a_stored_identity_loads_no_x509_parser(stored: Path) -> None:
    result = _load_in_fresh_interpreter(stored)
    assert result["x509"] == []
    assert result["due"] == load_identity(stored).renewal_due().isoformat()


def test_an_identity_written_before_the_validity_was_kept_is_brought_up_to_date(
    stored: Path,
) -> None:
    meta = json.loads((stored / "identity.json").read_text())
    for key in ("certificate_sha256", "not_before", "not_after"):
        del meta[key]
    (stored / "identity.json").write_text(json.dumps(meta))

    first = _load_in_fresh_interpreter(stored)
    assert first["x509"] != []  # parsed once...
    upgraded = json.loads((stored / "identity.json").read_text())
    assert {"certificate_sha256", "not_before", "not_after"} <= upgraded.keys()
    second = _load_in_fresh_interpreter(stored)
    assert second["x509"] == []  # ...and not again
    assert second["due"] == first["due"]


def test_a_certificate_replaced_by_hand_is_read_not_its_stale_description(
    stored: Path, ca: CertificateAuthority
) -> None:
    before = load_identity(stored)
    cert_pem, key_pem = _issue(ca, "gw-8", days=90)
    (stored / "gateway.pem").write_bytes(cert_pem + key_pem)

    after = load_identity(stored)
    assert after.not_after - before.not_after > timedelta(days=59)
    assert after.not_after == after.certificate.not_valid_after_utc
    assert (before.gateway_id, after.gateway_id) == ("gw-7", "gw-8")
    assert json.loads((stored / "identity.json").read_text())["gateway_id"] == "gw-8"


def test_a_missing_or_broken_certificate_is_a_clear_error(stored: Path) -> None:
    (stored / "gateway.pem").write_bytes(b"not a certificate\n")
    with pytest.raises(PkiFileError, match="does not hold a PEM certificate"):
        load_identity(stored)
    (stored / "gateway.pem").unlink()
    with pytest.raises(PkiFileError, match="does not exist"):
        load_identity(stored)


async def test_renew_goes_to_the_url_given_and_keeps_the_recorded_one(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = (await create_token(api, name="renews"))["enrollment_code"]
        identity = await enroll_gateway(code, tmp_path / "gw")
        first = identity.certificate.serial_number
        # The host recorded at enrollment is gone: only the URL given can renew.
        gone = f"https://127.0.0.1:{free_port()}"
        meta_path = identity.directory / "identity.json"
        meta = json.loads(meta_path.read_text())
        meta["cloud_url"] = gone
        meta_path.write_text(json.dumps(meta))
        renewed = await renew(load_identity(identity.directory), url=cloud.url, trust_env=False)
    assert renewed.certificate.serial_number != first
    assert renewed.cloud_url == gone
    assert json.loads(meta_path.read_text())["cloud_url"] == gone
    assert load_identity(identity.directory).certificate.serial_number == (
        renewed.certificate.serial_number
    )
