"""Tests for tether.gateway.ledger: at most once, private files, one agent, a full disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway.ledger import INTERRUPTED, CommandLedger, LedgerError, LedgerLocked


def test_a_command_begins_once_and_an_interrupted_one_is_failed(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "agent.db")
    assert ledger.begin("c1", "ping")
    assert not ledger.begin("c1", "ping")
    ledger.close()
    again = CommandLedger(tmp_path / "agent.db")
    try:
        assert again.recover_interrupted() == ["c1"]
        entry = again.get("c1")
        assert entry is not None
        assert (entry.state, entry.error) == ("failed", INTERRUPTED)
    finally:
        again.close()


def test_the_ledger_and_its_side_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    old = os.umask(0o022)
    try:
        ledger = CommandLedger(path)
        try:
            ledger.set_value("config:connectors", {"data": {"password": "field-bus"}})
            wal = path.with_name("agent.db-wal")
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
            assert not path.with_name("agent.db-shm").exists()  # exclusive: none needed
        finally:
            ledger.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        os.chmod(path, 0o644)  # as an older version left it
        CommandLedger(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_second_agent_on_the_same_ledger_is_refused(tmp_path: Path) -> None:
    first = CommandLedger(tmp_path / "agent.db")
    try:
        with pytest.raises(LedgerLocked, match="in use by another process"):
            CommandLedger(tmp_path / "agent.db")
    finally:
        first.close()
    CommandLedger(tmp_path / "agent.db").close()


def test_a_damaged_ledger_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(LedgerError, match=f"{path}: file is not a database"):
        CommandLedger(path)


def test_the_ledger_opens_on_a_full_disk() -> None:
    """WAL mode with a shared-memory file needs room for it (SQLITE_IOERR_SHMSIZE)."""
    with mounted_tmpfs("1m") as where:
        ledger = CommandLedger(where / "agent.db")
        ledger.set_value("config:connectors", {"version": 3})
        ledger.close()
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(1 << 20):  # bounded: 1 MiB holds far fewer blocks
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError:
                    break
        finally:
            os.close(fd)
        again = CommandLedger(where / "agent.db")
        try:
            assert again.get_value("config:connectors") == {"version": 3}
            assert again.recover_interrupted() == []
        finally:
            again.close()
