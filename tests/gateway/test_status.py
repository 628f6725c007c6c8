"""The agent's status file and ``tether gateway status`` on a data directory, without a cloud:
the file's mode and atomic replacement, the lock check that must not disturb the agent's
stores, what is stale, the exit codes and the one-line refusals."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.cloudproc import tether_script
from typer.testing import CliRunner

from tether.cli import app
from tether.gateway import identity as identity_module
from tether.gateway.ledger import CommandLedger
from tether.gateway.spool import AsyncSpool, SpoolLocked
from tether.gateway.status import (
    STATUS_FILE,
    StatusUnavailable,
    lock_holders,
    read_gateway_status,
    write_status,
)
from tether.pki.ca import CertificateAuthority
from tether.pki.keys import build_csr, generate_private_key, private_key_pem, write_pem

NOW = datetime.now(UTC).replace(microsecond=0)
CLOUD = "https://cloud.example:8443"
GATEWAY = "gw-status-1"


def _enroll(data_dir: Path, *, days: int = 30) -> None:
    """An identity directory as enrollment leaves it, made offline."""
    ca = CertificateAuthority.generate(now=NOW - timedelta(days=1))
    key = generate_private_key()
    cert = ca.issue_client(
        build_csr(key, GATEWAY), gateway_id=GATEWAY, lifetime=timedelta(days=days), now=NOW
    )
    directory = data_dir / "identity"
    directory.mkdir(parents=True, mode=0o700)
    write_pem(directory / "ca.pem", ca.certificate_pem())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    identity_module._save(
        directory, x509.load_pem_x509_certificate(pem), private_key_pem(key), CLOUD
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o700)
    _enroll(directory)
    return directory


def _document(*, updated_at: float, linked: bool, **extra: Any) -> dict[str, Any]:
    """A status document shaped as the agent writes it (the fields the reader uses)."""
    return {
        "format": 1,
        "pid": os.getpid(),
        "updated_at": updated_at,
        "started_at": updated_at - 100,
        "health_interval": 60.0,
        "gateway_id": GATEWAY,
        "cloud_url": CLOUD,
        "stopped": None,
        "link": {"linked": linked, "tier": "ws", "state": "linked" if linked else "waiting"},
        **extra,
    }


def _cli(data_dir: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["gateway", "status", "--data-dir", str(data_dir), *extra], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.output


# -- the file ----------------------------------------------------------------------------------


def test_the_status_file_is_private_whatever_the_umask_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / STATUS_FILE
    leftover = tmp_path / f".{STATUS_FILE}.tmp"
    leftover.write_text("half a document from a crash")
    os.chmod(leftover, 0o644)
    old = os.umask(0)
    try:
        write_status(path, {"n": 1})
        first_inode = path.stat().st_ino
        write_status(path, {"n": 2, "text": "é"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text(encoding="utf-8")) == {"n": 2, "text": "é"}
    assert path.stat().st_ino != first_inode  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATUS_FILE]


def test_a_document_that_is_not_json_is_refused_and_the_old_file_kept(tmp_path: Path) -> None:
    path = tmp_path / STATUS_FILE
    write_status(path, {"n": 1})
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_status(path, {"n": float("nan")})
    assert json.loads(path.read_text()) == {"n": 1}


# -- is an agent running? ----------------------------------------------------------------------


async def test_the_lock_check_sees_the_agents_stores_and_leaves_them_locked(
    data_dir: Path,
) -> None:
    stores = [data_dir / "spool.db", data_dir / "agent.db"]
    spool = await AsyncSpool.open(stores[0], max_bytes=1 << 20, max_age=3600.0)
    ledger = CommandLedger(stores[1])
    try:
        assert lock_holders(stores) == {os.getpid()}
        found = read_gateway_status(data_dir)
        assert found.running is True
        assert found.pid == os.getpid()
        assert found.checked_by == "locks"
        # Nothing was opened to look: both stores are still held (in this very process,
        # where closing any descriptor of a file would have dropped its locks).
        assert lock_holders(stores) == {os.getpid()}
        with pytest.raises(SpoolLocked):
            await AsyncSpool.open(stores[0], max_bytes=1 << 20, max_age=3600.0)
    finally:
        ledger.close()
        await spool.close()
    assert lock_holders(stores) == set()
    assert read_gateway_status(data_dir).running is False


def test_without_a_lock_list_the_pid_the_agent_wrote_is_asked(
    data_dir: Path, tmp_path: Path
) -> None:
    write_status(data_dir / STATUS_FILE, _document(updated_at=time.time(), linked=True))
    missing = tmp_path / "no-locks"
    assert lock_holders([data_dir / "spool.db"], locks=missing) is None
    found = read_gateway_status(data_dir, locks=missing)
    assert (found.running, found.pid, found.checked_by) == (True, os.getpid(), "pid")

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    document = _document(updated_at=time.time(), linked=True, pid=int(gone.stdout))
    write_status(data_dir / STATUS_FILE, document)
    found = read_gateway_status(data_dir, locks=missing)
    assert (found.running, found.pid) == (False, None)


# -- what is shown, and the exit codes ---------------------------------------------------------


@pytest.fixture
async def held(data_dir: Path) -> AsyncIterator[None]:
    """The data directory's stores held, as a running agent holds them."""
    spool = await AsyncSpool.open(data_dir / "spool.db", max_bytes=1 << 20, max_age=3600.0)
    ledger = CommandLedger(data_dir / "agent.db")
    yield
    ledger.close()
    await spool.close()


@pytest.mark.usefixtures("held")
def test_a_running_linked_agent_with_a_fresh_status_exits_0(data_dir: Path) -> None:
    write_status(data_dir / STATUS_FILE, _document(updated_at=time.time(), linked=True))
    code, text = _cli(data_dir, "--json")
    assert code == 0, text
    shown = json.loads(text)
    assert (shown["running"], shown["stale"], shown["linked"]) == (True, False, True)
    assert shown["identity"]["gateway_id"] == GATEWAY
    assert shown["identity"]["cloud_url"] == CLOUD
    assert shown["identity"]["certificate_subject"] == f"CN={GATEWAY}"
    assert 29 < shown["identity"]["certificate_days_left"] <= 30


@pytest.mark.usefixtures("held")
def test_a_running_agent_not_linked_exits_1(data_dir: Path) -> None:
    document = _document(updated_at=time.time(), linked=False)
    document["link"]["last_error"] = "cannot reach https://cloud.example:8443/link: refused"
    write_status(data_dir / STATUS_FILE, document)
    code, text = _cli(data_dir)
    assert code == 1, text
    assert "agent: running" in text
    assert "cannot reach https://cloud.example:8443/link: refused" in text


@pytest.mark.usefixtures("held")
def test_a_running_agent_whose_status_is_three_intervals_old_is_stale(data_dir: Path) -> None:
    now = time.time()
    write_status(data_dir / STATUS_FILE, _document(updated_at=now - 3 * 60.0 - 5, linked=True))
    found = read_gateway_status(data_dir, now=now)
    assert (found.running, found.stale, found.linked, found.exit_code) == (True, True, False, 1)
    write_status(data_dir / STATUS_FILE, _document(updated_at=now - 3 * 60.0 + 5, linked=True))
    found = read_gateway_status(data_dir, now=now)
    assert (found.running, found.stale, found.exit_code) == (True, False, 0)
    write_status(data_dir / STATUS_FILE, _document(updated_at=now - 3 * 60.0 - 5, linked=True))
    code, text = _cli(data_dir)
    assert code == 1
    assert "its status is STALE, last written" in text


def test_no_agent_running_shows_the_last_status_and_exits_1(data_dir: Path) -> None:
    written = time.time() - 7200
    write_status(data_dir / STATUS_FILE, _document(updated_at=written, linked=True))
    code, text = _cli(data_dir, "--json")
    assert code == 1, text
    shown = json.loads(text)
    assert (shown["running"], shown["stale"], shown["linked"]) == (False, True, False)
    assert shown["status"]["updated_at"] == written
    code, text = _cli(data_dir)
    assert code == 1
    assert "agent: not running, last status from" in text
    assert "(2 h ago)" in text


def test_an_enrolled_directory_no_agent_ever_ran_on_exits_1(data_dir: Path) -> None:
    code, text = _cli(data_dir)
    assert code == 1, text
    assert GATEWAY in text
    assert "agent: not running; no status written yet" in text
    code, text = _cli(data_dir, "--json")
    assert json.loads(text)["status"] is None


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda d: None, "no such data directory"),
        (lambda d: d.mkdir(), "this data directory is not enrolled"),
        (lambda d: d.write_text("a file"), "is not a directory"),
    ],
)
def test_a_missing_or_unenrolled_directory_exits_2_in_one_line(
    tmp_path: Path, make: Any, said: str
) -> None:
    data_dir = tmp_path / "gw"
    make(data_dir)
    code, text = _cli(data_dir)
    assert code == 2
    assert said in text
    assert len(text.strip().splitlines()) == 1
    assert "Traceback" not in text
    code, text = _cli(data_dir, "--json")
    assert code == 2
    assert said in json.loads(text)["error"]


def test_damaged_files_exit_2_naming_the_file(data_dir: Path) -> None:
    (data_dir / STATUS_FILE).write_text('{"updated_at": 1')
    code, text = _cli(data_dir)
    assert code == 2
    assert f"{data_dir / STATUS_FILE} is not valid JSON" in text
    (data_dir / STATUS_FILE).unlink()
    credentials = data_dir / "identity" / "gateway.pem"
    credentials.write_bytes(credentials.read_bytes()[:200])
    with pytest.raises(StatusUnavailable, match="holds no usable certificate"):
        read_gateway_status(data_dir)


@pytest.fixture
def shared_place() -> Iterator[Path]:
    """A directory everyone may pass through (pytest's own are its owner's alone)."""
    place = Path(tempfile.mkdtemp(prefix="tether-status-"))
    os.chmod(place, 0o755)
    yield place
    shutil.rmtree(place)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_a_user_who_may_not_read_the_directory_is_told_in_one_line(shared_place: Path) -> None:
    data_dir = shared_place / "gw"
    data_dir.mkdir(mode=0o700)
    _enroll(data_dir)
    os.chmod(data_dir, 0o700)
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(tether_script()),
            "gateway",
            "status",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Permission denied" in lines[0]
    assert f"({data_dir} belongs to root, mode 0700)" in lines[0]
    assert "run it as root" in lines[0]
