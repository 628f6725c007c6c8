"""The gateway's spool: a bounded, durable store-and-forward queue of observations in SQLite.

Contract (DESIGN.md, "Nothing lost"):

* once :meth:`Spool.append` returns, its observations survive ``kill -9`` and power loss: each
  append is one transaction in WAL mode with ``synchronous=FULL`` (the WAL is fsynced at every
  commit). An append is all or nothing.
* every stream has its own sequence numbers, assigned at append, never reused: the highest one
  ever assigned is kept even when every row of the stream has been acknowledged or dropped.
* rows leave only by :meth:`Spool.ack` (after the cloud committed them) or by the bounds: when
  the spool holds more than ``max_bytes`` or data older than ``max_age``, whole chunks are
  dropped oldest first and their observations are *counted* per stream, persistently, until the
  cloud has acknowledged the count (:meth:`Spool.drop_report`, :meth:`Spool.clear_drop_report`).

Layout: one row ("chunk") holds up to ``chunk_size`` observations of one append, packed as one
msgpack array, with the sequence range it covers. Storing packed chunks instead of one row per
observation is the group commit that makes 50,000 durable observations/s cheap.

Errors::

    SpoolError
     ├── SpoolFull       the disk (not the bound) is full: nothing of the append was stored
     ├── SpoolLocked     another process holds the spool
     ├── SpoolClosed     used after close()
     └── BatchTooLarge   one append alone is larger than max_bytes

:class:`AsyncSpool` runs the same operations in one dedicated thread so the agent's event loop
never waits on a disk, and folds appends that arrive together into one transaction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from tether.protocol.telemetry import Observation, decode_observations, encode_observations

__all__ = [
    "AsyncSpool",
    "BatchTooLarge",
    "DropCount",
    "PreparedAppend",
    "Spool",
    "SpoolBatch",
    "SpoolClosed",
    "SpoolDepth",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
]

SCHEMA_VERSION = 1
# Bytes counted per chunk on top of its payload: row header, index entries, page slack.
ROW_OVERHEAD = 64
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_RESERVE = 4 * 1024 * 1024

Synchronous = Literal["full", "normal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    stream           TEXT PRIMARY KEY,
    last_seq         INTEGER NOT NULL DEFAULT 0,  -- highest sequence number ever assigned
    dropped          INTEGER NOT NULL DEFAULT 0,  -- observations dropped by the bounds, ever
    dropped_reported INTEGER NOT NULL DEFAULT 0,  -- of which the cloud acknowledged the report
    last_dropped_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id        INTEGER PRIMARY KEY,                -- insertion order: oldest first
    stream    TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    nbytes    INTEGER NOT NULL,
    data      BLOB NOT NULL                       -- last: skipped rows never load it
);
CREATE INDEX IF NOT EXISTS chunks_by_stream ON chunks (stream, last_seq);
CREATE INDEX IF NOT EXISTS chunks_by_age ON chunks (stored_at);
"""


class SpoolError(Exception):
    """The spool could not do what was asked; nothing was changed."""


class SpoolFull(SpoolError):
    """The file system is full. The append was not stored; what was stored before is intact."""


class SpoolLocked(SpoolError):
    """Another process (or connection) has this spool open."""


class SpoolClosed(SpoolError):
    """The spool was used after :meth:`Spool.close`."""


class BatchTooLarge(SpoolError):
    """One append is larger than the whole spool may be; split it."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Consecutive observations of one stream: sequence numbers ``first_seq..last_seq``."""

    stream: str
    first_seq: int
    last_seq: int
    observations: list[Observation]


@dataclass(frozen=True, slots=True)
class SpoolDepth:
    """What the spool holds: observation count, bytes, time of the oldest append, streams."""

    observations: int
    bytes: int
    oldest_ts: float | None
    streams: int


@dataclass(frozen=True, slots=True)
class DropCount:
    """Observations of one stream dropped by the bounds.

    ``total`` counts every drop ever and only grows, so a report that is sent twice (its
    acknowledgement lost) is harmless: the cloud keeps the largest total it has seen.
    ``reported`` is the total the cloud has acknowledged; ``pending`` is what it has not seen.
    """

    total: int
    reported: int
    last_seq: int  # highest sequence number dropped

    @property
    def pending(self) -> int:
        return self.total - self.reported


@dataclass(slots=True)
class PreparedAppend:
    """One append checked and encoded by :meth:`Spool.prepare`, ready for :meth:`Spool.commit`."""

    stream: str
    count: int
    chunks: list[tuple[int, bytes]]  # (observation count, packed observations)
    nbytes: int


@dataclass(slots=True)
class _State:
    """In-memory mirror of what the file holds, so that depth() and appends need no scans."""

    last_seq: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # observations held, per stream
    observations: int = 0
    nbytes: int = 0


@dataclass(slots=True)
class _Delta:
    """What one transaction changes in :class:`_State`, applied only once it has committed."""

    last_seq: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    dropped: int = 0

    def add(self, stream: str, count: int, nbytes: int) -> None:
        self.count[stream] = self.count.get(stream, 0) + count
        self.nbytes += nbytes

    def apply(self, state: _State) -> None:
        state.last_seq.update(self.last_seq)
        for stream, count in self.count.items():
            held = state.pending.get(stream, 0) + count
            if held:
                state.pending[stream] = held
            else:
                state.pending.pop(stream, None)
            state.observations += count
        state.nbytes += self.nbytes


T = TypeVar("T")
_Victim = tuple[int, str, int, int, int]  # id, stream, first_seq, last_seq, nbytes


def _translate(exc: sqlite3.Error) -> SpoolError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return SpoolFull(f"spool disk is full: {exc}")
    if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return SpoolLocked(f"spool is in use by another process: {exc}")
    return SpoolError(f"spool storage error: {exc}")


class Spool:
    """The durable queue. Not thread-safe: use it from one thread (or through AsyncSpool)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        chunk_size: int,
        reserve_bytes: int = 0,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.chunk_size = chunk_size
        self.reserve_bytes = reserve_bytes
        self._state = _State()
        self._stale = False
        self.transactions = 0  # committed write transactions, for health reports and tests

    @property
    def reserve_path(self) -> Path:
        """A file of ``reserve_bytes`` given back to the file system when the disk fills up."""
        return self.path.with_name(self.path.name + "-reserve")

    @property
    def reserve_held(self) -> bool:
        return self.reserve_bytes > 0 and self.reserve_path.exists()

    def _hold_reserve(self) -> None:
        """Allocate the reserve if it is missing; a full disk leaves it missing, quietly."""
        if self.reserve_bytes <= 0 or self.reserve_path.exists():
            return
        partial = self.reserve_path.with_name(self.reserve_path.name + ".new")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.reserve_path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()

    def _release_reserve(self) -> None:
        """The disk is full: free the reserve so acknowledgements (which free rows) still work."""
        with contextlib.suppress(FileNotFoundError):
            self.reserve_path.unlink()
        if self._conn is not None:
            # Move the WAL into the database while there is room; a partial checkpoint is safe.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(RESTART)")

    # --- opening and closing --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        synchronous: Synchronous = "full",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        lock_timeout: float = 0.5,
        reserve_bytes: int = DEFAULT_RESERVE,
        checkpoint_pages: int = 1000,
    ) -> Spool:
        """Open (creating if needed) the spool at ``path``, holding an exclusive lock on it.

        ``synchronous="normal"`` survives the process being killed but may lose the last
        appends on power loss; keep the default unless the storage makes that acceptable.

        A full disk must not wedge the spool: acknowledging (which frees rows) itself needs a
        little room to write. So the spool keeps ``reserve_bytes`` allocated in a side file and
        gives them back the first time SQLite reports the disk full; the WAL is checkpointed
        every ``checkpoint_pages`` pages so that it stays small next to the database.
        """
        if max_bytes <= 0 or max_age <= 0 or chunk_size <= 0 or checkpoint_pages <= 0:
            raise ValueError("max_bytes, max_age, chunk_size, checkpoint_pages must be positive")
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must not be negative")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=lock_timeout
            )
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        try:
            version = cls._init_schema(conn, synchronous, checkpoint_pages)
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc) from exc
        except SpoolError:
            conn.close()
            raise
        if version != SCHEMA_VERSION:
            conn.close()
            raise SpoolError(f"spool {path} has schema {version}, expected {SCHEMA_VERSION}")
        spool = cls(
            conn,
            path,
            max_bytes=max_bytes,
            max_age=max_age,
            chunk_size=chunk_size,
            reserve_bytes=reserve_bytes,
        )
        try:
            spool._reload()
        except sqlite3.Error as exc:
            spool.close()
            raise _translate(exc) from exc
        spool._hold_reserve()
        return spool

    @staticmethod
    def _init_schema(
        conn: sqlite3.Connection, synchronous: Synchronous, checkpoint_pages: int
    ) -> int:
        # Exclusive locking: a second agent on the same file fails here instead of interleaving
        # its sequence numbers with ours; WAL then needs no shared-memory file either.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool cannot use WAL journaling (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA journal_size_limit = 8388608")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}")
        # Builds with SECURE_DELETE (Debian's) zero every freed page: acknowledging would then
        # write as much as it frees, and need room on a full disk to do so.
        conn.execute("PRAGMA secure_delete = FAST")
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
            (SCHEMA_VERSION,),
        )
        version: int = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        return version

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolClosed("spool is closed")
        return self._conn

    def _reload(self) -> None:
        """Rebuild the in-memory mirror from the file (at open, and after a failed write)."""
        db = self._db()
        state = _State()
        for stream, last_seq in db.execute("SELECT stream, last_seq FROM streams"):
            state.last_seq[stream] = last_seq
        rows = db.execute(
            "SELECT stream, sum(last_seq - first_seq + 1), sum(nbytes) FROM chunks GROUP BY stream"
        )
        for stream, count, nbytes in rows:
            state.pending[stream] = count
            state.observations += count
            state.nbytes += nbytes
        self._state = state

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Checkpoint the WAL into the database and close. Idempotent."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the WAL is replayed at the next open; skipping the checkpoint loses nothing
        finally:
            conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transactions -----------------------------------------------------------------------------

    def _transaction(self, work: Callable[[sqlite3.Connection, _Delta], T]) -> T:
        db = self._db()
        delta = _Delta()
        try:
            if self._stale:
                self._reload()
                self._stale = False
            db.execute("BEGIN IMMEDIATE")
            result = work(db, delta)
            db.execute("COMMIT")
            self.transactions += 1
        except sqlite3.Error as exc:
            self._abort(db)
            error = _translate(exc)
            if isinstance(error, SpoolFull):
                self._release_reserve()
            raise error from exc
        except BaseException:
            self._abort(db)
            raise
        delta.apply(self._state)
        return result

    def _abort(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR).
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        # Believe the file, not the mirror: a COMMIT that reported an error may still have
        # landed, and its sequence numbers must never be handed out a second time.
        try:
            self._reload()
        except sqlite3.Error:
            self._stale = True  # reloaded before the next transaction, or that one fails

    # --- writing ----------------------------------------------------------------------------------

    def prepare(self, stream: str, observations: Sequence[Observation]) -> PreparedAppend:
        """Check and encode one append (no I/O). Raises ValueError or BatchTooLarge."""
        if not stream:
            raise ValueError("stream name must not be empty")
        if not observations:
            raise ValueError("an append needs at least one observation")
        items = list(observations)
        size = self.chunk_size
        chunks = [
            (len(part), encode_observations(part))
            for part in (items[i : i + size] for i in range(0, len(items), size))
        ]
        nbytes = sum(len(data) + ROW_OVERHEAD for _, data in chunks)
        if nbytes > self.max_bytes:
            raise BatchTooLarge(
                f"an append of {len(items)} observations ({nbytes} bytes) exceeds the spool"
                f" bound of {self.max_bytes} bytes"
            )
        return PreparedAppend(stream, len(items), chunks, nbytes)

    def append(
        self, stream: str, observations: Sequence[Observation], *, now: float
    ) -> tuple[int, int]:
        """Store observations durably; return the ``(first_seq, last_seq)`` assigned to them."""
        return self.commit([(self.prepare(stream, observations), now)])[0]

    def append_many(
        self, items: Iterable[tuple[str, Sequence[Observation]]], *, now: float
    ) -> list[tuple[int, int]]:
        """Store several appends in one transaction (all or nothing); ranges in order."""
        return self.commit([(self.prepare(stream, obs), now) for stream, obs in items])

    def commit(self, prepared: Sequence[tuple[PreparedAppend, float]]) -> list[tuple[int, int]]:
        """Store prepared appends, each with its time of arrival, in one transaction."""
        if not prepared:
            return []
        incoming = sum(item.nbytes for item, _ in prepared)
        if incoming > self.max_bytes:
            raise BatchTooLarge(f"{incoming} bytes in one transaction exceed the spool bound")
        cutoff = max(now for _, now in prepared) - self.max_age

        def write(db: sqlite3.Connection, delta: _Delta) -> list[tuple[int, int]]:
            self._drop(db, delta, cutoff=cutoff, room_for=incoming)
            ranges: list[tuple[int, int]] = []
            rows: list[tuple[str, int, int, float, int, bytes]] = []
            for item, stored_at in prepared:
                seq = delta.last_seq.get(item.stream) or self._state.last_seq.get(item.stream, 0)
                ranges.append((seq + 1, seq + item.count))
                for count, data in item.chunks:
                    nbytes = len(data) + ROW_OVERHEAD
                    rows.append((item.stream, seq + 1, seq + count, stored_at, nbytes, data))
                    seq += count
                delta.last_seq[item.stream] = seq
                delta.add(item.stream, item.count, item.nbytes)
            db.executemany(
                "INSERT INTO chunks (stream, first_seq, last_seq, stored_at, nbytes, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO streams (stream, last_seq) VALUES (?, ?)"
                " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                list(delta.last_seq.items()),
            )
            return ranges

        return self._transaction(write)

    def ack(self, stream: str, up_to_seq: int) -> int:
        """Delete every observation of ``stream`` up to ``up_to_seq`` (the cloud committed them).

        Returns how many were deleted. Acknowledging what is already gone is a no-op, so a
        repeated acknowledgement is harmless.
        """
        if not self._state.pending.get(stream):
            self._db()
            return 0

        def delete(db: sqlite3.Connection, delta: _Delta) -> int:
            count, nbytes = db.execute(
                "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(nbytes), 0)"
                " FROM chunks WHERE stream = ? AND last_seq <= ?",
                (stream, up_to_seq),
            ).fetchone()
            db.execute("DELETE FROM chunks WHERE stream = ? AND last_seq <= ?", (stream, up_to_seq))
            # At most one chunk straddles the acknowledged sequence number: keep its tail.
            row = db.execute(
                "SELECT id, first_seq, nbytes, data FROM chunks"
                " WHERE stream = ? AND last_seq > ? ORDER BY last_seq LIMIT 1",
                (stream, up_to_seq),
            ).fetchone()
            if row is not None and row[1] <= up_to_seq:
                chunk_id, first, old_nbytes, data = row
                tail = decode_observations(data)[up_to_seq - first + 1 :]
                packed = encode_observations(tail)
                db.execute(
                    "UPDATE chunks SET first_seq = ?, nbytes = ?, data = ? WHERE id = ?",
                    (up_to_seq + 1, len(packed) + ROW_OVERHEAD, packed, chunk_id),
                )
                count += up_to_seq - first + 1
                nbytes += old_nbytes - (len(packed) + ROW_OVERHEAD)
            delta.add(stream, -count, -nbytes)
            return int(count)

        deleted = self._transaction(delete)
        self._hold_reserve()  # after a full disk, take the reserve back as soon as there is room
        return deleted

    # --- bounds -----------------------------------------------------------------------------------

    def expire(self, *, now: float) -> int:
        """Drop (and count) what is older than ``max_age``; returns how many were dropped."""

        def drop(db: sqlite3.Connection, delta: _Delta) -> int:
            self._drop(db, delta, cutoff=now - self.max_age, room_for=0)
            return delta.dropped

        return self._transaction(drop)

    def _drop(self, db: sqlite3.Connection, delta: _Delta, *, cutoff: float, room_for: int) -> None:
        """Inside a transaction: drop expired chunks, then the oldest until ``room_for`` fits."""
        victims: list[_Victim] = db.execute(
            "SELECT id, stream, first_seq, last_seq, nbytes FROM chunks"
            " WHERE stored_at < ?",  # no ORDER BY: the planner would scan by id
            (cutoff,),
        ).fetchall()
        held = self._state.nbytes - sum(v[4] for v in victims)
        if held + room_for > self.max_bytes:
            expired = {v[0] for v in victims}
            cursor = db.execute(
                "SELECT id, stream, first_seq, last_seq, nbytes FROM chunks ORDER BY id"
            )
            try:
                for row in cursor:
                    if held + room_for <= self.max_bytes:
                        break
                    if row[0] not in expired:
                        victims.append(row)
                        held -= row[4]
            finally:
                cursor.close()
        if not victims:
            return
        db.executemany("DELETE FROM chunks WHERE id = ?", [(v[0],) for v in victims])
        per_stream: dict[str, tuple[int, int]] = {}
        for _, stream, first, last, nbytes in victims:
            count, top = per_stream.get(stream, (0, 0))
            per_stream[stream] = (count + last - first + 1, max(top, last))
            delta.add(stream, -(last - first + 1), -nbytes)
            delta.dropped += last - first + 1
        db.executemany(
            "UPDATE streams SET dropped = dropped + ?,"
            " last_dropped_seq = max(last_dropped_seq, ?) WHERE stream = ?",
            [(count, top, stream) for stream, (count, top) in per_stream.items()],
        )

    def drop_report(self, *, include_reported: bool = False) -> dict[str, DropCount]:
        """Drops per stream that the cloud has not acknowledged yet (or all, if asked)."""
        try:
            rows = self._db().execute(
                "SELECT stream, dropped, dropped_reported, last_dropped_seq FROM streams"
                " WHERE dropped > dropped_reported OR (? AND dropped > 0)",
                (include_reported,),
            )
            return {row[0]: DropCount(row[1], row[2], row[3]) for row in rows}
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def clear_drop_report(self, stream: str, upto_count: int) -> None:
        """Record that the cloud has stored a drop ``total`` of ``upto_count`` for ``stream``.

        Drops counted after that report stay pending; an older acknowledgement arriving late
        changes nothing.
        """

        def clear(db: sqlite3.Connection, delta: _Delta) -> None:
            db.execute(
                "UPDATE streams SET dropped_reported = max(dropped_reported, min(?, dropped))"
                " WHERE stream = ?",
                (upto_count, stream),
            )

        self._transaction(clear)

    # --- reading ----------------------------------------------------------------------------------

    def peek(
        self,
        stream: str | None = None,
        *,
        max_items: int,
        after: Mapping[str, int] | None = None,
    ) -> list[SpoolBatch]:
        """Up to ``max_items`` observations, oldest first, as batches of consecutive sequences.

        ``after`` maps a stream to the highest sequence number already in flight: only what
        follows it is returned, so the uploader never sends the same data twice while waiting
        for an acknowledgement. Peeking changes nothing.
        """
        if max_items <= 0:
            raise ValueError("max_items must be positive")
        after = after or {}
        db = self._db()
        columns = "SELECT stream, first_seq, last_seq, data FROM chunks"
        if stream is not None:
            sql = f"{columns} WHERE stream = ? AND last_seq > ? ORDER BY last_seq"
            params: list[str | int] = [stream, after.get(stream, 0)]
        elif after:
            cases = " ".join("WHEN ? THEN ?" for _ in after)
            sql = f"{columns} WHERE last_seq > CASE stream {cases} ELSE 0 END ORDER BY id"
            params = [value for pair in after.items() for value in pair]
        else:
            sql = f"{columns} ORDER BY id"
            params = []
        batches: list[SpoolBatch] = []
        latest: dict[str, int] = {}  # stream -> index of its last batch, to merge adjacent rows
        budget = max_items
        try:
            cursor = db.execute(sql, params)
            try:
                for name, first, last, data in cursor:
                    start = max(first, after.get(name, 0) + 1)
                    take = min(last - start + 1, budget)
                    observations = decode_observations(data)[start - first : start - first + take]
                    index = latest.get(name)
                    if index is not None and batches[index].last_seq + 1 == start:
                        merged = batches[index]
                        merged.observations.extend(observations)
                        batches[index] = SpoolBatch(
                            name, merged.first_seq, start + take - 1, merged.observations
                        )
                    else:
                        latest[name] = len(batches)
                        batches.append(SpoolBatch(name, start, start + take - 1, observations))
                    budget -= take
                    if budget == 0:
                        break
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return batches

    def depth(self) -> SpoolDepth:
        """How much is waiting: observations, bytes, time of the oldest append, streams."""
        try:
            oldest = self._db().execute("SELECT min(stored_at) FROM chunks").fetchone()[0]
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        state = self._state
        return SpoolDepth(state.observations, state.nbytes, oldest, len(state.pending))

    def last_seqs(self) -> dict[str, int]:
        """The highest sequence number ever assigned, per stream."""
        self._db()
        return dict(self._state.last_seq)


@dataclass(slots=True)
class _PendingAppend:
    stream: str
    observations: Sequence[Observation]
    now: float
    future: asyncio.Future[tuple[int, int]]


class AsyncSpool:
    """The spool for an event loop: every operation runs in one dedicated thread.

    Appends that arrive while the thread is busy are committed together in one transaction
    (group commit), so many small submits from many connectors cost one fsync.
    """

    def __init__(
        self,
        spool: Spool,
        executor: concurrent.futures.ThreadPoolExecutor,
        clock: Callable[[], float],
    ) -> None:
        self._spool = spool
        self._executor = executor
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[_PendingAppend] = []
        self._flush_scheduled = False
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_bytes: int,
        max_age: float,
        synchronous: Synchronous = "full",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        reserve_bytes: int = DEFAULT_RESERVE,
        checkpoint_pages: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> AsyncSpool:
        """Open the spool in its own thread; ``clock`` dates appends given no ``now``."""
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tether-spool")
        loop = asyncio.get_running_loop()
        try:
            spool = await loop.run_in_executor(
                executor,
                lambda: Spool.open(
                    path,
                    max_bytes=max_bytes,
                    max_age=max_age,
                    synchronous=synchronous,
                    chunk_size=chunk_size,
                    reserve_bytes=reserve_bytes,
                    checkpoint_pages=checkpoint_pages,
                ),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(spool, executor, clock)

    @property
    def path(self) -> Path:
        return self._spool.path

    @property
    def transactions(self) -> int:
        """Write transactions committed so far (appends share them: see the class docstring)."""
        return self._spool.transactions

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise SpoolClosed("spool is closed")
        return await self._loop.run_in_executor(self._executor, fn)

    async def append(
        self, stream: str, observations: Sequence[Observation], *, now: float | None = None
    ) -> tuple[int, int]:
        """Store observations durably (see :meth:`Spool.append`), sharing a transaction."""
        if self._closed:
            raise SpoolClosed("spool is closed")
        future: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        item = _PendingAppend(
            stream, tuple(observations), self._clock() if now is None else now, future
        )
        with self._lock:
            self._pending.append(item)
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._executor.submit(self._flush)
        return await future

    def _flush(self) -> None:
        """In the spool thread: commit every append waiting, in as few transactions as fit."""
        with self._lock:
            waiting, self._pending = self._pending, []
            self._flush_scheduled = False
        groups: list[list[tuple[PreparedAppend, _PendingAppend]]] = [[]]
        room = self._spool.max_bytes
        for item in waiting:
            try:
                prepared = self._spool.prepare(item.stream, item.observations)
            except (ValueError, SpoolError) as exc:
                self._settle(item.future, exc)
                continue
            if prepared.nbytes > room:
                groups.append([])
                room = self._spool.max_bytes
            groups[-1].append((prepared, item))
            room -= prepared.nbytes
        for group in groups:
            if not group:
                continue
            try:
                ranges = self._spool.commit([(prepared, item.now) for prepared, item in group])
            except SpoolError as exc:
                for _, item in group:
                    self._settle(item.future, _copy_error(exc))
                continue
            except BaseException as exc:
                for _, item in group:
                    self._settle(item.future, SpoolError(f"spool failed: {exc!r}"))
                raise
            for (_, item), value in zip(group, ranges, strict=True):
                self._settle(item.future, value)

    def _settle(
        self, future: asyncio.Future[tuple[int, int]], outcome: tuple[int, int] | BaseException
    ) -> None:
        def settle() -> None:
            if future.done():
                return  # the caller gave up waiting; what was stored stays stored
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(settle)

    async def peek(
        self,
        stream: str | None = None,
        *,
        max_items: int,
        after: Mapping[str, int] | None = None,
    ) -> list[SpoolBatch]:
        snapshot = dict(after) if after is not None else None
        return await self._run(
            lambda: self._spool.peek(stream, max_items=max_items, after=snapshot)
        )

    async def ack(self, stream: str, up_to_seq: int) -> int:
        return await self._run(lambda: self._spool.ack(stream, up_to_seq))

    async def expire(self, *, now: float | None = None) -> int:
        moment = self._clock() if now is None else now
        return await self._run(lambda: self._spool.expire(now=moment))

    async def drop_report(self, *, include_reported: bool = False) -> dict[str, DropCount]:
        return await self._run(lambda: self._spool.drop_report(include_reported=include_reported))

    async def clear_drop_report(self, stream: str, upto_count: int) -> None:
        await self._run(lambda: self._spool.clear_drop_report(stream, upto_count))

    async def depth(self) -> SpoolDepth:
        return await self._run(self._spool.depth)

    async def last_seqs(self) -> dict[str, int]:
        return await self._run(self._spool.last_seqs)

    async def close(self) -> None:
        """Finish every queued operation, then close the spool and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._loop.run_in_executor(self._executor, self._spool.close)
        finally:
            self._executor.shutdown(wait=False)


def _copy_error(exc: SpoolError) -> SpoolError:
    """A fresh exception per waiter: one instance raised in many tasks shares a traceback."""
    copy = type(exc)(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy
