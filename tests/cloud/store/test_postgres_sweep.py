"""The PostgreSQL test fixture cleans up after test runs that were killed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.postgres import _OWNER, _Cluster, _owner_line, find_postgres_bin, sweep_stale


def _dead_owner() -> str:
    """The owner line of a process that has come and gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        line = _owner_line(child.pid)
    finally:
        child.kill()
        child.wait()
    return line


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie waiting for its parent to reap it has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_cluster_whose_run_was_killed_is_stopped_and_removed() -> None:
    cluster = _Cluster(find_postgres_bin())
    try:
        cluster.start()
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        assert _alive(postmaster)
        (cluster.root / _OWNER).write_text(_dead_owner() + "\n")

        swept = sweep_stale(cluster.root.parent)

        assert cluster.root in swept
        assert not cluster.root.exists()
        assert not _alive(postmaster)
    finally:
        cluster.stop()


def test_a_cluster_whose_run_goes_on_is_left_alone() -> None:
    cluster = _Cluster(find_postgres_bin())
    try:
        cluster.start()
        assert (cluster.root / _OWNER).read_text().split()[0] == str(os.getpid())

        swept = sweep_stale(cluster.root.parent)

        assert cluster.root not in swept
        assert (cluster.data / "postmaster.pid").exists()
    finally:
        cluster.stop()
    assert not Path(cluster.root).exists()
