"""The spool on a small real file system, on a wrong clock, damaged, and the modes of its files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway.ledger import CommandLedger
from tether.gateway.spool import (
    SEQ_FLOOR_PER_SECOND,
    AsyncSpool,
    Spool,
    SpoolCorrupt,
    SpoolError,
    move_aside,
    system_uptime,
)
from tether.protocol.telemetry import Observation

DAY = 86400.0


def obs(tag: str, n: int) -> list[Observation]:
    return [Observation(f"{tag}/{i}", float(i), i) for i in range(n)]


def fill(path: Path, *, leave: int = 0) -> None:
    """Fill the file system of *path* until at most *leave* bytes are free."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        for _ in range(1 << 20):  # bounded: a few MiB hold far fewer blocks
            fs = os.statvfs(path)
            if fs.f_bavail * fs.f_frsize <= leave:
                return
            try:
                os.write(fd, block)
            except OSError:
                return
    finally:
        os.close(fd)


def free_bytes(where: Path) -> int:
    fs = os.statvfs(where)
    return fs.f_bavail * fs.f_frsize


# --- the file system's free space bounds the spool ------------------------------------------------


def test_the_spool_never_fills_its_file_system_it_drops_the_oldest_and_counts_them() -> None:
    with mounted_tmpfs("2m") as where:
        path = where / "spool.db"
        appended = 0
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
            headroom = s.disk_headroom
            assert headroom == 512 * 1024  # a quarter of a small file system
            assert s.reserve_held
            for n in range(300):  # some 6 MiB through a 2 MiB file system
                s.append("building", obs(f"b{n}", 400), now=1.0)
                appended += 400
                # the WAL may still grow into the headroom, never past it
                assert free_bytes(where) > 0
            depth = s.depth()
            report = s.drop_report()
        assert depth.observations > 0
        assert report["building"].total == appended - depth.observations
        assert report["building"].total > appended // 2
        # what is left free is the headroom: the agent's ledger still opens and writes there
        ledger = CommandLedger(where / "agent.db")
        try:
            ledger.set_value("config:connectors", {"version": 1, "data": {}})
            assert ledger.begin("cmd-1", "ping")
        finally:
            ledger.close()
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as again:
            kept = again.peek(max_items=10**6)
            assert sum(len(b.observations) for b in kept) == depth.observations
            assert kept[-1].last_seq == appended  # the newest are the ones kept


def test_a_file_system_filled_by_others_gets_the_reserve_back_at_open() -> None:
    with mounted_tmpfs("2m") as where:
        path = where / "spool.db"
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
            s.append("a", obs("x", 100), now=1.0)
            assert s.reserve_held
        fill(where / "logs")
        assert free_bytes(where) < 8192
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
            assert not s.reserve_held  # given back at once: the ledger needs room to open
            assert free_bytes(where) >= 64 * 1024
            assert s.depth().observations == 100
            # appends recycle what the spool holds rather than fail
            s.append("a", obs("y", 100), now=2.0)
            assert s.depth().observations == 100
            assert s.drop_report()["a"].total == 100


# --- the clock ------------------------------------------------------------------------------------


class FakeBoot:
    def __init__(self) -> None:
        self.boot = "boot-1"
        self.up = 100.0

    def __call__(self) -> tuple[str, float]:
        return self.boot, self.up


def test_a_wall_clock_set_right_after_days_wrong_drops_nothing_as_too_old(tmp_path: Path) -> None:
    """The gateway spooled for hours with its clock 8 days behind, then NTP set it right."""
    boot = FakeBoot()
    true_now = 2_000_000_000.0
    wrong = true_now - 8 * DAY
    path = tmp_path / "spool.db"
    with Spool.open(path, max_bytes=1 << 30, max_age=7 * DAY, uptime=boot) as s:
        for hour in range(5):
            boot.up = 100.0 + hour * 3600
            s.append("a", obs(f"h{hour}", 10), now=wrong + hour * 3600)
        boot.up += 60
        # the clock is set right: 8 days forward in a minute of boot time
        assert s.expire(now=true_now + 4 * 3600 + 60) == 0
        boot.up += 10
        s.append("a", obs("late", 10), now=true_now + 4 * 3600 + 70)
        assert s.depth().observations == 60
        assert s.drop_report() == {}
        # the oldest append is reported on the corrected wall clock: 4 h ago, not 8 days
        oldest = s.depth().oldest_ts
        assert oldest is not None
        assert abs(oldest - true_now) < 120
    # an agent restarted in the same boot measures from the same clock
    boot.up += 3600
    with Spool.open(path, max_bytes=1 << 30, max_age=7 * DAY, uptime=boot) as s:
        assert s.expire(now=true_now + 5 * 3600 + 70) == 0
        # and still drops what is really older than the bound: 7 days after the third hour
        boot.up += 7 * DAY - 3 * 3600
        assert s.expire(now=true_now + 7 * DAY + 2 * 3600 + 70) == 30
        assert s.depth().observations == 30


def test_a_reboot_into_an_old_clock_does_not_make_the_spool_clock_go_back(tmp_path: Path) -> None:
    boot = FakeBoot()
    path = tmp_path / "spool.db"
    with Spool.open(path, max_bytes=1 << 30, max_age=DAY, uptime=boot) as s:
        s.append("a", obs("x", 10), now=2_000_000_000.0)
    boot.boot, boot.up = "boot-2", 30.0  # no RTC: the clock starts years behind
    with Spool.open(path, max_bytes=1 << 30, max_age=DAY, uptime=boot) as s:
        s.append("a", obs("y", 10), now=1_000_000.0)
        boot.up += 60
        # NTP sets it right a minute later: nothing stored so far is a day old
        assert s.expire(now=2_000_000_000.0 + 120) == 0
        assert s.depth().observations == 20
        boot.up += DAY + 1
        assert s.expire(now=2_000_000_000.0 + DAY + 200) == 20


def test_without_a_boot_clock_the_given_time_is_taken_as_is(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "spool.db", max_bytes=1 << 30, max_age=60) as s:
        s.append("a", obs("x", 3), now=1000.0)
        assert s.expire(now=1061.0) == 3


async def test_the_agents_spool_measures_ages_on_the_boot_clock(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "spool.db", max_bytes=1 << 30, max_age=DAY)
    try:
        assert spool._spool._uptime is system_uptime
        await spool.append("a", obs("x", 3))
        assert await spool.expire() == 0
    finally:
        await spool.close()
    boot_id, up = system_uptime()
    assert boot_id
    assert up > 0


# --- a damaged spool ------------------------------------------------------------------------------


def test_a_damaged_spool_is_named_and_can_be_moved_aside_for_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
        s.append("a", obs("x", 5), now=1.0)
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(SpoolCorrupt, match=str(path)) as caught:
        Spool.open(path, max_bytes=1 << 30, max_age=1e9)
    assert "not a database" in str(caught.value)
    now = time.time()
    aside = move_aside(path, now=now)
    assert aside.name.startswith("spool.db.corrupt-")
    assert aside.read_bytes().startswith(b"this is not a database")
    with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
        first, last = s.append("a", obs("y", 5), now=now)
        # above anything the lost spool handed out: the cloud would take lower ones for
        # duplicates of what it already has
        assert first == int(now) * SEQ_FLOOR_PER_SECOND + 1
        assert last == first + 4
        assert s.depth().observations == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_read_only_directory_is_named(tmp_path: Path) -> None:
    with mounted_tmpfs("1m") as where:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        try:
            with pytest.raises(SpoolError, match=f"{where} is not writable"):
                Spool.open(where / "spool.db", max_bytes=1 << 30, max_age=1e9)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True)


# --- modes ----------------------------------------------------------------------------------------


def test_the_spool_and_its_side_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    old = os.umask(0o022)
    try:
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9) as s:
            s.append("a", obs("x", 5), now=1.0)
            wal = path.with_name("spool.db-wal")
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # a spool left readable by an older version is tightened when opened
        os.chmod(path, 0o644)
        with Spool.open(path, max_bytes=1 << 30, max_age=1e9):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_another_process_is_refused_while_the_spool_is_open(tmp_path: Path) -> None:
    """Across processes (POSIX locks: no descriptor of the file may be closed while it is held)."""
    path = tmp_path / "spool.db"
    probe = (
        "import sys; from pathlib import Path; from tether.gateway.spool import Spool\n"
        "try:\n"
        "    Spool.open(Path(sys.argv[1]), max_bytes=1 << 20, max_age=1.0).close()\n"
        "    print('opened')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    with Spool.open(path, max_bytes=1 << 20, max_age=1.0) as s:
        s.append("a", obs("x", 1), now=1.0)
        done = subprocess.run(
            [sys.executable, "-c", probe, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert done.stdout.strip() == "SpoolLocked"
