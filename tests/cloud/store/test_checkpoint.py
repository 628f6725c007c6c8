"""The WAL checkpointer: no commit of a SQLite store checkpoints; its own thread does."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tether.cloud.store import Store
from tether.cloud.store.checkpoint import Checkpointer

PAGE = 4096
ROW = b"x" * 3000  # about one page per row


def _wal_file(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def _writer(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (v BLOB)")
    return conn


def _write_pages(conn: sqlite3.Connection, rows: int) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [(ROW,)] * rows)
    conn.execute("COMMIT")


def _frames(db: Path) -> int:
    """Frames in the log: its size in whole frames (a 32-byte header, 24 bytes per frame)."""
    size = _wal_file(db).stat().st_size
    return max(size - 32, 0) // (PAGE + 24)


async def test_a_round_copies_the_whole_log_and_the_log_starts_over(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    conn = _writer(db)
    checkpointer = Checkpointer(str(db), interval=3600)  # rounds only when asked
    checkpointer.start()
    try:
        _write_pages(conn, 1500)  # past the 1,000 pages where SQLite's own would have run
        written = _frames(db)
        assert written > 1500
        assert await asyncio.to_thread(checkpointer.run_now, 30)
        stats = checkpointer.stats
        assert stats.failures == 0
        assert stats.busy == 0
        assert stats.wal_pages >= 1500
        assert stats.copied_pages == stats.wal_pages  # nothing held back by a reader
        # All of it was copied: the next writer starts the log over instead of appending.
        _write_pages(conn, 1500)
        assert _frames(db) < written * 1.1  # appended, it would be twice as long
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3000
    finally:
        await asyncio.to_thread(checkpointer.close)
        conn.close()


async def test_what_a_reader_still_uses_stays_in_the_log_until_a_later_round(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cloud.db"
    conn = _writer(db)
    _write_pages(conn, 10)
    reader = sqlite3.connect(db, isolation_level=None)
    checkpointer = Checkpointer(str(db), interval=3600)
    checkpointer.start()
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 10  # holds a snapshot
        _write_pages(conn, 200)
        assert await asyncio.to_thread(checkpointer.run_now, 30)
        held = checkpointer.stats
        assert held.copied_pages < held.wal_pages  # the passive round did not wait for it
        reader.execute("COMMIT")
        assert await asyncio.to_thread(checkpointer.run_now, 30)
        assert checkpointer.stats.copied_pages == checkpointer.stats.wal_pages
    finally:
        await asyncio.to_thread(checkpointer.close)
        reader.close()
        conn.close()


async def test_a_failing_round_is_counted_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "cloud.db"
    db.write_bytes(b"this is not a database, but it is long enough to look like one" * 100)
    checkpointer = Checkpointer(str(db), interval=3600)
    checkpointer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="tether.cloud.store.checkpoint"):
            for _ in range(3):
                assert await asyncio.to_thread(checkpointer.run_now, 30)
        assert checkpointer.stats.failures == 3
        assert checkpointer.stats.rounds == 3
        failures = [r for r in caplog.records if "checkpoint" in r.getMessage()]
        assert len(failures) == 1
        assert "not a database" in failures[0].getMessage()
    finally:
        await asyncio.to_thread(checkpointer.close)


def test_a_non_positive_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        Checkpointer(str(tmp_path / "cloud.db"), interval=0)


async def test_a_file_store_checkpoints_on_its_own_thread_not_in_its_commits(
    tmp_path: Path,
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    try:
        checkpointer = store.checkpointer
        assert checkpointer is not None
        async with store.engine.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA wal_autocheckpoint")) == 0
        # The command path's writer thread has its own connection: the same setting.
        await store.create_gateway(gateway_id="gw-1", name="gw-1", now=datetime.now(UTC))
        assert store._writer is not None
        setting = await store._writer.run(
            lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        )
        assert setting == 0
        await store.audit(
            actor="admin",
            action="test.write",
            target=None,
            detail={"pad": "y" * 100_000},
            source=None,
            now=datetime.now(UTC),
        )
        rounds = checkpointer.stats.rounds
        assert await asyncio.to_thread(checkpointer.run_now, 30)
        assert checkpointer.stats.rounds > rounds
        assert checkpointer.stats.failures == 0
        assert checkpointer.stats.copied_pages == checkpointer.stats.wal_pages > 0
    finally:
        await store.close()
    assert not checkpointer._thread.is_alive()


async def test_an_in_memory_store_has_no_checkpointer() -> None:
    store = await Store.open("sqlite+aiosqlite:///:memory:")
    try:
        assert store.checkpointer is None
    finally:
        await store.close()


async def test_a_database_that_cannot_be_opened_ends_the_thread_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "no such directory" / "cloud.db"
    checkpointer = Checkpointer(str(path), interval=3600)
    with caplog.at_level(logging.ERROR, logger="tether.cloud.store.checkpoint"):
        checkpointer.start()
        await asyncio.to_thread(checkpointer._thread.join, 30)
    assert not checkpointer._thread.is_alive()
    assert any("could not open" in r.getMessage() for r in caplog.records)
    # Asked for a round, it answers that none will come (it does not wait for one).
    assert not await asyncio.to_thread(checkpointer.run_now, 30)
    assert checkpointer.stats.rounds == 0
    await asyncio.to_thread(checkpointer.close)
