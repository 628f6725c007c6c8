"""What ``tether gateway run`` says when it cannot start: one line and exit 2, never a traceback;
and a damaged spool moved aside for a fresh one."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway import identity as identity_module
from tether.gateway.ledger import CommandLedger, LedgerError
from tether.gateway.service import EXIT_NOT_READY
from tether.gateway.spool import Spool, SpoolError
from tether.pki.ca import CertificateAuthority
from tether.pki.keys import build_csr, generate_private_key, private_key_pem, write_pem

NOW = datetime.now(UTC).replace(microsecond=0)
#: Nothing listens there: the agent starts, and keeps trying to link.
DEAD_CLOUD = 'cloud_url = "https://127.0.0.1:9"\n'


def make_data_dir(data_dir: Path) -> Path:
    """A data directory as enrollment leaves it (without contacting any cloud)."""
    ca = CertificateAuthority.generate(now=NOW - timedelta(days=1))
    key = generate_private_key()
    cert = ca.issue_client(
        build_csr(key, "gw-svc"), gateway_id="gw-svc", lifetime=timedelta(days=30), now=NOW
    )
    directory = data_dir / "identity"
    directory.mkdir(parents=True, mode=0o700)
    write_pem(directory / "ca.pem", ca.certificate_pem())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    identity_module._save(
        directory, x509.load_pem_x509_certificate(pem), private_key_pem(key), "https://127.0.0.1:9"
    )
    (data_dir / "agent.toml").write_text(DEAD_CLOUD + "reconnect_cap = 1\n")
    return data_dir


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("template") / "gw")


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", str(template), str(tmp_path / "gw")], check=True)
    return tmp_path / "gw"


def service(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "tether.gateway.service",
        str(data_dir),
        *(args or ("info", "text")),
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def refused(data_dir: Path, *args: str) -> str:
    """Run the agent expecting it to refuse to start: its one-line error."""
    proc = service(data_dir, *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_NOT_READY, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _identity(data_dir: Path) -> Path:
    return data_dir / "identity"


def _edit_meta(change: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def edit(data_dir: Path) -> None:
        path = _identity(data_dir) / "identity.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))

    return edit


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def cut(data_dir: Path) -> None:
        path = _identity(data_dir) / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return cut


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncate("identity.json", 0), "identity.json: is not valid JSON"),
        (_truncate("identity.json", 0.5), "identity.json: is not valid JSON"),
        (_edit_meta(lambda m: m.pop("cloud_url")), "identity.json: has no 'cloud_url'"),
        (_edit_meta(lambda m: m.update(not_after="soon")), "has no valid 'not_after'"),
        (_truncate("gateway.pem", 0.3), "gateway.pem does not hold a PEM certificate"),
        (_truncate("gateway.pem", 0.8), "cannot load the client certificate"),
        (lambda d: (_identity(d) / "gateway.pem").unlink(), "gateway.pem does not exist"),
        (lambda d: (_identity(d) / "ca.pem").write_text("garbage\n"), "platform CA"),
        (lambda d: (d / "agent.db").write_bytes(b"garbage" * 999), "agent.db: file is not a"),
        (lambda d: (d / "agent.toml").write_text("reconnect_cap = inf\n"), "finite number"),
        (lambda d: (d / "agent.toml").write_text('trust_env = "no"\n'), "true or false"),
    ],
)
def test_what_keeps_the_agent_from_starting_is_one_line_and_exit_2(
    data_dir: Path, damage: Callable[[Path], object], says: str
) -> None:
    damage(data_dir)
    line = refused(data_dir)
    assert says in line
    assert str(data_dir) in line or "agent.toml" in line or "reconnect_cap" in line


def test_identity_errors_say_how_to_recover(data_dir: Path) -> None:
    _truncate("identity.json", 0.5)(data_dir)
    assert "tether gateway enroll --force" in refused(data_dir)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("verbose", "text"), "debug, info, warning, error, critical; got 'verbose'"),
        (("info", "xml"), "text, json; got 'xml'"),
    ],
)
def test_unknown_log_options_are_refused_naming_the_valid_ones(
    data_dir: Path, args: tuple[str, str], says: str
) -> None:
    assert says in refused(data_dir, *args)


def test_a_second_agent_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    first = service(data_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first agent holds its files
            try:
                CommandLedger(data_dir / "agent.db").close()
            except LedgerError:  # held: the first agent runs
                break
            time.sleep(0.05)
        assert f"another agent is running on {data_dir}" in refused(data_dir)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


def test_a_read_only_data_dir_is_named() -> None:
    with mounted_tmpfs("4m") as where:
        make_data_dir(where / "gw")
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        try:
            line = refused(where / "gw")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True)
    assert f"{where / 'gw'} is not writable" in line


def test_a_damaged_spool_is_moved_aside_and_the_agent_starts(data_dir: Path) -> None:
    (data_dir / "spool.db").write_bytes(b"not a database, truncated by a power cut" * 100)
    proc = service(data_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(data_dir.glob("spool.db.corrupt-*")):
            assert proc.poll() is None
            time.sleep(0.05)
        assert list(data_dir.glob("spool.db.corrupt-*"))
        while time.monotonic() < deadline:  # until the agent holds its fresh spool
            try:
                Spool.open(data_dir / "spool.db", max_bytes=1 << 20, max_age=1.0).close()
            except SpoolError:  # held: the agent runs
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "moved aside" in err
    with Spool.open(data_dir / "spool.db", max_bytes=1 << 20, max_age=1e9) as fresh:
        assert fresh.depth().observations == 0


def test_the_data_dir_and_databases_are_made_private(data_dir: Path) -> None:
    os.chmod(data_dir, 0o755)
    proc = service(data_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (data_dir / "agent.db-wal").exists():
            assert proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("agent.db", "spool.db"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600
