"""A real PostgreSQL server for tests: Debian's binaries, a throwaway cluster, a database per test.

Use from a conftest::

    from tests.support.postgres import postgres_server  # noqa: F401  (registers the fixture)

then ``await postgres_server.create_database()`` returns a fresh ``postgresql+asyncpg://`` URL.
The cluster lives in a temporary directory owned by the ``postgres`` user (PostgreSQL refuses to
run as root), listens on 127.0.0.1 on a free port with trust authentication, and is stopped and
removed at the end of the session. A test run that was killed cannot stop its cluster; the next
run stops and removes every cluster whose owning test process is gone (each cluster's directory
names its owner, by PID and start time, so a reused PID is not mistaken for it).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

__all__ = ["PostgresServer", "find_postgres_bin", "postgres_server", "sweep_stale"]

_PG_ROOT = Path("/usr/lib/postgresql")
_START_ATTEMPTS = 3
_PREFIX = "tether-pg-"
_OWNER = "owner"


def _process_start(pid: int) -> str | None:
    """The start time of process *pid* (clock ticks since boot), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _owner_line(pid: int) -> str:
    return f"{pid} {_process_start(pid)}"


def sweep_stale(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the clusters left by test runs that were killed; the directories removed.

    Only directories this module made (``tether-pg-*`` with an owner file) are looked at, and
    only those whose owner is no longer running are touched."""
    swept: list[Path] = []
    for root in sorted((tmp or Path(tempfile.gettempdir())).glob(f"{_PREFIX}*")):
        try:
            pid_text, _, start = (root / _OWNER).read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _process_start(pid) == start:
            continue  # its run is still going
        cluster = _Cluster.__new__(_Cluster)
        cluster.bin_dir = find_postgres_bin()
        cluster.root = root
        cluster.data = root / "data"
        cluster._as_user = _as_postgres()
        cluster.stop(mode="immediate")
        swept.append(root)
    return swept


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def find_postgres_bin() -> Path:
    """The newest installed server's bin directory; fails the test run if there is none."""
    versions: list[tuple[int, Path]] = []
    if _PG_ROOT.is_dir():
        for entry in _PG_ROOT.iterdir():
            if re.fullmatch(r"\d+", entry.name) and (entry / "bin" / "pg_ctl").is_file():
                versions.append((int(entry.name), entry / "bin"))
    if not versions:
        pytest.fail(
            f"PostgreSQL server binaries not found under {_PG_ROOT}/<version>/bin; "
            "install the test peers with scripts/sysdeps.sh (Debian package 'postgresql')",
            pytrace=False,
        )
    return max(versions)[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    async def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy asyncpg URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            # With fsync off, copying the template's files beats WAL-logging them block by block.
            major = conn.get_server_version().major
            strategy = " STRATEGY = FILE_COPY" if major >= 15 else ""
            await conn.execute(f'CREATE DATABASE "{name}"{strategy}')
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, disconnecting any leftover sessions."""
        name = url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


class _Cluster:
    """initdb / pg_ctl start / pg_ctl stop, run as the postgres user when we are root."""

    def __init__(self, bin_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.bin_dir = bin_dir
        #: More server settings (``-c name=value``), e.g. ``max_connections`` for many clients.
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.root / _OWNER).write_text(_owner_line(os.getpid()) + "\n")
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.sockets.mkdir()
        self._as_user = _as_postgres()
        if self._as_user:
            account = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def _check(self, outcome: subprocess.CompletedProcess[str], what: str) -> None:
        if outcome.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            pytest.fail(
                f"PostgreSQL {what} failed ({outcome.returncode}):\n{outcome.stdout}\n"
                f"{outcome.stderr}\n{log}",
                pytrace=False,
            )

    def start(self) -> int:
        self._check(
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            "initdb",
        )
        outcome: subprocess.CompletedProcess[str] | None = None
        for _ in range(_START_ATTEMPTS):  # a free port can be taken before the server binds it
            port = _free_port()
            options = (
                f"-k {self.sockets} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
                + "".join(f" -c {name}={value}" for name, value in self.settings.items())
            )
            outcome = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
            )
            if outcome.returncode == 0:
                return port
        assert outcome is not None
        self._check(outcome, "start")
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    sweep_stale()
    cluster = _Cluster(find_postgres_bin())
    try:
        port = cluster.start()
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres")
    finally:
        cluster.stop()
