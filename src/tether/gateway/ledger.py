"""The agent's command ledger: each command id is executed at most once, across restarts.

A command is written down as ``running`` (and committed) before its handler starts. If the agent
dies while a handler runs, the next start finds the row and reports the command failed instead of
running it again. Final outcomes stay until the cloud acknowledges them, and are re-sent on every
new link until then.

The file also keeps the configuration the cloud pushed (field-bus credentials among it): it and
its side files are readable by their owner only. It is opened in exclusive locking mode: a
second agent on the same data directory is refused (:class:`LedgerLocked`), and WAL then needs
no shared-memory file, so an agent starts even on a full disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.gateway.spool import open_error, private_database

__all__ = ["CommandLedger", "LedgerEntry", "LedgerError", "LedgerLocked"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    error TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    acked_state TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

INTERRUPTED = "the agent restarted while this command ran; it was not run again"


class LedgerError(Exception):
    """The ledger's file cannot be used; the message names it."""


class LedgerLocked(LedgerError):
    """Another process (another agent on the same data directory) has the ledger open."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    command_id: str
    kind: str
    state: str
    result: dict[str, Any] | None
    error: str | None
    acked_state: str | None

    @property
    def unacked(self) -> bool:
        return self.acked_state != self.state


class CommandLedger:
    """A small SQLite file (synchronous=FULL: a recorded start survives power loss)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private_database(path)
        except OSError as exc:
            raise LedgerError(open_error(path, exc)) from None
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=0.5
            )
        except sqlite3.Error as exc:
            raise LedgerError(open_error(path, exc)) from None
        try:
            # Before the first access: no shared-memory file, and the lock is held until close.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # BEGIN IMMEDIATE takes the lock now: a second agent stops here.
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        except sqlite3.Error as exc:
            self._db.close()
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise LedgerLocked(f"{path} is in use by another process") from None
            raise LedgerError(open_error(path, exc)) from None
        with contextlib.suppress(OSError):
            private_database(path)  # the WAL now exists

    def close(self) -> None:
        self._db.close()

    def _row(self, row: tuple[Any, ...]) -> LedgerEntry:
        return LedgerEntry(
            command_id=row[0],
            kind=row[1],
            state=row[2],
            result=json.loads(row[3]) if row[3] is not None else None,
            error=row[4],
            acked_state=row[5],
        )

    def get(self, command_id: str) -> LedgerEntry | None:
        row = self._db.execute(
            "SELECT command_id, kind, state, result, error, acked_state FROM commands "
            "WHERE command_id = ?",
            (command_id,),
        ).fetchone()
        return self._row(row) if row else None

    def begin(self, command_id: str, kind: str) -> bool:
        """Record that *command_id* starts now; False if it was ever seen before."""
        now = time.time()
        cur = self._db.execute(
            "INSERT OR IGNORE INTO commands (command_id, kind, state, received_at, updated_at) "
            "VALUES (?, ?, 'running', ?, ?)",
            (command_id, kind, now, now),
        )
        return cur.rowcount == 1

    def finish(
        self, command_id: str, state: str, *, result: dict[str, Any] | None, error: str | None
    ) -> None:
        self._db.execute(
            "UPDATE commands SET state = ?, result = ?, error = ?, updated_at = ? "
            "WHERE command_id = ?",
            (
                state,
                json.dumps(result) if result is not None else None,
                error,
                time.time(),
                command_id,
            ),
        )

    def acknowledge(self, command_id: str, state: str) -> None:
        self._db.execute(
            "UPDATE commands SET acked_state = ? WHERE command_id = ?", (state, command_id)
        )

    def recover_interrupted(self) -> list[str]:
        """Mark commands left ``running`` by a previous process as failed; return their ids."""
        ids = [
            r[0] for r in self._db.execute("SELECT command_id FROM commands WHERE state='running'")
        ]
        for command_id in ids:
            self.finish(command_id, "failed", result=None, error=INTERRUPTED)
        return ids

    def unacknowledged(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT command_id, kind, state, result, error, acked_state FROM commands "
            "WHERE acked_state IS NULL OR acked_state != state ORDER BY updated_at"
        ).fetchall()
        return [self._row(r) for r in rows]

    def prune(self, *, older_than: float) -> int:
        """Forget acknowledged final outcomes older than *older_than* seconds."""
        cur = self._db.execute(
            "DELETE FROM commands WHERE acked_state = state AND state != 'running' "
            "AND updated_at < ?",
            (time.time() - older_than,),
        )
        return cur.rowcount

    def get_value(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_value(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
