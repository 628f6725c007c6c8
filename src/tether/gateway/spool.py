"""The gateway's spool: a bounded, durable store-and-forward queue of observations in SQLite.

Contract (DESIGN.md, "Nothing lost"):

* once :meth:`Spool.append` returns, its observations survive ``kill -9`` and power loss: each
  append is one transaction in WAL mode with ``synchronous=FULL`` (the WAL is fsynced at every
  commit). An append is all or nothing.
* every stream has its own sequence numbers, assigned at append, never reused: the highest one
  ever assigned is kept even when every row of the stream has been acknowledged or dropped.
* rows leave only by :meth:`Spool.ack` (after the cloud committed them) or by the bounds: when
  the spool holds more than ``max_bytes``, when an append would leave less than the headroom
  free on the file system (``disk_headroom``: room for the WAL, the agent's ledger and the
  reserve), or data older than ``max_age``, whole chunks are dropped oldest first and their
  observations are *counted* per stream, persistently, until the cloud has acknowledged the
  count (:meth:`Spool.drop_report`, :meth:`Spool.clear_drop_report`).
* ages are measured on the spool's own clock, which a step of the wall clock does not move
  (see :class:`_Clock`): a clock set right after days wrong drops nothing as too old.

Layout: one row ("chunk") holds up to ``chunk_size`` observations of one append, packed as one
msgpack array, with the sequence range it covers. Storing packed chunks instead of one row per
observation is the group commit that makes 50,000 durable observations/s cheap.

Errors::

    SpoolError
     ├── SpoolFull       the disk (not the bound) is full: nothing of the append was stored
     ├── SpoolLocked     another process holds the spool
     ├── SpoolCorrupt    the file is not a spool database (see :func:`move_aside`)
     ├── SpoolClosed     used after close()
     └── BatchTooLarge   one append alone is larger than max_bytes

:class:`AsyncSpool` runs the same operations in one dedicated thread so the agent's event loop
never waits on a disk, and folds appends that arrive together into one transaction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
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
    "SpoolCorrupt",
    "SpoolDepth",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "Uptime",
    "move_aside",
    "open_error",
    "private_database",
    "system_uptime",
]

SCHEMA_VERSION = 1
# Bytes counted per chunk on top of its payload: row header, index entries, page slack.
ROW_OVERHEAD = 64
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_RESERVE = 4 * 1024 * 1024
#: What the spool leaves free on its file system: the WAL (checkpointed at 1,000 pages, about
#: 4 MiB, and cut back to 8 MiB), the reserve (4 MiB) and the agent's ledger with its own WAL.
#: On a small file system it is a quarter of its size, and the WAL and reserve shrink to fit.
DEFAULT_HEADROOM = 16 * 1024 * 1024
#: Disk bytes an append may take for each byte it counts (page slack, overflow pages).
DISK_SLACK = 1.25
#: A difference between the wall clock and the boot clock larger than this is a step of the
#: wall clock (NTP slews the two alike; only a step moves one without the other).
CLOCK_STEP = 2.0
#: Sequence numbers of a spool started afresh begin above this many per second since the
#: epoch: above anything a lost spool could have handed out (the cloud takes what is at or
#: below a stream's high-water mark for a duplicate).
SEQ_FLOOR_PER_SECOND = 1_000_000

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


class SpoolCorrupt(SpoolError):
    """The file is not a (readable) spool database."""


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
#: (boot identifier, seconds since boot, suspend included): see :func:`system_uptime`.
Uptime = Callable[[], tuple[str, float]]

_boot_id: str | None = None


def system_uptime() -> tuple[str, float]:
    """This boot's identifier and ``CLOCK_BOOTTIME``: a clock no one sets, that a reboot
    restarts (the identifier then changes)."""
    global _boot_id
    if _boot_id is None:
        try:
            _boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:  # not Linux: the boot clock is trusted within this process only
            _boot_id = f"process-{os.getpid()}-{time.time_ns()}"
    boottime = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return _boot_id, time.clock_gettime(boottime)


def private_database(path: Path) -> None:
    """Create *path* (if missing) readable by its owner only, and tighten it and its WAL and
    shared-memory files if they exist: SQLite creates those with the database's own mode.

    An existing file is never opened here: closing any descriptor of a file releases every
    POSIX lock the process holds on it, SQLite's included.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    for name in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            each = path.with_name(path.name + name)
            if each.stat().st_mode & 0o077:
                os.chmod(each, 0o600)


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def open_error(path: Path, exc: sqlite3.Error | OSError) -> str:
    """What keeps the database *path* from opening, for a person: names the file and the fix."""
    code = _code(exc)
    if isinstance(exc, OSError):
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{path}: cannot open it: {path.parent} is not writable ({exc.strerror})"
        return f"{path}: {exc.strerror or exc}"
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        if not os.access(path.parent, os.W_OK):
            return f"{path}: cannot open it: {path.parent} is not writable"
        return f"{path}: cannot open it for writing ({exc})"
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return f"{path}: {exc} (the file is damaged)"
    if code == sqlite3.SQLITE_FULL:
        return f"{path}: the disk is full ({exc})"
    return f"{path}: {exc}"


def _translate(exc: sqlite3.Error, path: Path | None = None) -> SpoolError:
    code = _code(exc)
    if code == sqlite3.SQLITE_FULL:
        return SpoolFull(f"spool disk is full: {exc}")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return SpoolLocked(f"spool is in use by another process: {exc}")
    if path is not None and code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return SpoolCorrupt(open_error(path, exc))
    if path is not None:
        return SpoolError(open_error(path, exc))
    return SpoolError(f"spool storage error: {exc}")


def move_aside(path: Path, *, now: float) -> Path:
    """Rename the damaged spool *path* (and its side files) to ``<name>.corrupt-<time>`` and
    create a fresh spool there whose sequence numbers start above any the lost one used.

    Its observations cannot be read any more; keeping the file lets someone try. Returns the
    new name of the damaged file.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path.with_name(path.name + suffix), aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    private_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        Spool._init_schema(conn, "full", 1000, 8 * 1024 * 1024)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('seq_floor', ?)",
            (int(now) * SEQ_FLOOR_PER_SECOND,),
        )
    finally:
        conn.close()
    return aside


@dataclass(slots=True)
class _Clock:
    """The spool's clock: wall-clock time plus an offset that absorbs every step of the wall
    clock, so that ages (differences of spool times) are true elapsed time.

    Why not the wall clock alone: a gateway often runs days on a wrong clock (no RTC, NTP
    blocked) and is then set right; measured by it, everything spooled meanwhile would look
    days old and be dropped. A step shows as a change of the difference between the wall clock
    and the boot clock (:data:`Uptime`), which nobody sets: within one boot (this process or
    a previous agent of the same boot, read from the spool) the offset is corrected by it.
    Across a reboot elapsed time is known only from the wall clock: it is believed, except that
    the spool's clock never goes back (a gateway rebooting into 1970 keeps its data).
    """

    offset: float = 0.0
    boot: int = 0  # hash of the boot id of the anchor; 0 = none
    uptime: float = 0.0  # boot clock at the anchor
    wall: float = 0.0  # wall clock at the anchor
    last: float = 0.0  # highest spool time handed out

    KEYS = ("clock_offset_us", "clock_boot", "clock_uptime_us", "clock_wall_us", "clock_last_us")

    def load(self, meta: Mapping[str, int]) -> None:
        self.offset = meta.get("clock_offset_us", 0) / 1e6
        self.boot = meta.get("clock_boot", 0)
        self.uptime = meta.get("clock_uptime_us", 0) / 1e6
        self.wall = meta.get("clock_wall_us", 0) / 1e6
        self.last = meta.get("clock_last_us", 0) / 1e6

    def rows(self) -> list[tuple[str, int]]:
        micros = [round(v * 1e6) for v in (self.offset, self.uptime, self.wall, self.last)]
        return list(zip(self.KEYS, [micros[0], self.boot, *micros[1:]], strict=True))

    def advance(self, now: float, uptime: Uptime) -> float:
        """The spool time of the wall-clock reading *now* (correcting the offset first)."""
        boot_id, up = uptime()
        boot = int.from_bytes(hashlib.sha256(boot_id.encode()).digest()[:7], "big") or 1
        if boot == self.boot:
            step = now - (self.wall + (up - self.uptime))
            if abs(step) > CLOCK_STEP:
                self.offset -= step
        elif now + self.offset < self.last:
            self.offset = self.last - now
        self.boot, self.uptime, self.wall = boot, up, now
        self.last = max(self.last, now + self.offset)
        return now + self.offset


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
        disk_headroom: int | None = None,
        uptime: Uptime | None = None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.chunk_size = chunk_size
        self.reserve_bytes = reserve_bytes
        #: Bytes kept free on the file system (reserve included); None: no such bound.
        self.disk_headroom = disk_headroom
        self._uptime = uptime
        self._clock = _Clock()
        self._seq_floor = 0
        self._page_size = 4096
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

    def _free_bytes(self) -> int:
        """Free bytes on the file system beyond the headroom (negative: inside it); very large
        when there is no disk bound or the file system cannot say."""
        if self.disk_headroom is None:
            return 1 << 62
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return 1 << 62
        keep = self.disk_headroom - (self.reserve_bytes if self.reserve_held else 0)
        return fs.f_bavail * fs.f_frsize - keep

    def _hold_reserve(self) -> None:
        """Allocate the reserve if it is missing; a full disk leaves it missing, quietly."""
        if self.reserve_bytes <= 0 or self.reserve_path.exists():
            return
        if self._free_bytes() < 0:
            return  # the headroom is eaten into already: leave what is free to the others
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
        disk_headroom: int | None = DEFAULT_HEADROOM,
        uptime: Uptime | None = None,
    ) -> Spool:
        """Open (creating if needed) the spool at ``path``, holding an exclusive lock on it.

        ``synchronous="normal"`` survives the process being killed but may lose the last
        appends on power loss; keep the default unless the storage makes that acceptable.

        A full disk must not wedge the spool: acknowledging (which frees rows) itself needs a
        little room to write. So the spool keeps ``reserve_bytes`` allocated in a side file and
        gives them back the first time SQLite reports the disk full; the WAL is checkpointed
        every ``checkpoint_pages`` pages so that it stays small next to the database.

        ``disk_headroom`` (None: no such bound) is what appends leave free on the file system,
        for the WAL, the reserve and the agent's other files: an append that would eat into it
        drops the oldest chunks first, as the ``max_bytes`` bound does. On a file system
        smaller than four times the headroom, the headroom is a quarter of it, and the reserve
        and the WAL's checkpoint interval shrink to fit in it.

        ``uptime`` (:func:`system_uptime`) lets ages be measured across steps of the wall
        clock (see :class:`_Clock`); without it the ``now`` given to appends is taken as is.

        The database and its side files are made readable by their owner only.
        """
        if max_bytes <= 0 or max_age <= 0 or chunk_size <= 0 or checkpoint_pages <= 0:
            raise ValueError("max_bytes, max_age, chunk_size, checkpoint_pages must be positive")
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must not be negative")
        if disk_headroom is not None and disk_headroom < 0:
            raise ValueError("disk_headroom must not be negative")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        journal_limit = 8 * 1024 * 1024
        if disk_headroom is not None:
            with contextlib.suppress(OSError):
                fs = os.statvfs(path.parent)
                disk_headroom = min(disk_headroom, fs.f_blocks * fs.f_frsize // 4)
            reserve_bytes = min(reserve_bytes, disk_headroom // 4)
            checkpoint_pages = min(checkpoint_pages, max(16, disk_headroom // 4 // 4096))
            journal_limit = min(journal_limit, max(disk_headroom // 2, 64 * 4096))
        try:
            private_database(path)
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=lock_timeout
            )
        except OSError as exc:
            raise SpoolError(open_error(path, exc)) from exc
        except sqlite3.Error as exc:
            raise _translate(exc, path) from exc
        try:
            version = cls._init_schema(conn, synchronous, checkpoint_pages, journal_limit)
        except sqlite3.Error as exc:
            conn.close()
            raise _translate(exc, path) from exc
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
            disk_headroom=disk_headroom,
            uptime=uptime,
        )
        try:
            spool._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            spool._reload()
        except sqlite3.Error as exc:
            spool.close()
            raise _translate(exc, path) from exc
        with contextlib.suppress(OSError):
            private_database(path)  # the WAL now exists
        if spool._free_bytes() < 0:
            # The file system is full (something else filled it): give the reserve back now,
            # so that the agent's other files can open, rather than at the first failed write.
            spool._release_reserve()
        else:
            spool._hold_reserve()
        return spool

    @staticmethod
    def _init_schema(
        conn: sqlite3.Connection,
        synchronous: Synchronous,
        checkpoint_pages: int,
        journal_limit: int = 8 * 1024 * 1024,
    ) -> int:
        # Exclusive locking: a second agent on the same file fails here instead of interleaving
        # its sequence numbers with ours; WAL then needs no shared-memory file either.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool cannot use WAL journaling (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {int(journal_limit)}")
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
        meta = dict(db.execute("SELECT key, value FROM meta"))
        self._seq_floor = int(meta.get("seq_floor", 0))
        self._clock.load(meta)
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
        latest = max(now for _, now in prepared)

        def write(db: sqlite3.Connection, delta: _Delta) -> list[tuple[int, int]]:
            spool_now = self._now(db, latest)
            self._drop(db, delta, cutoff=spool_now - self.max_age, room_for=incoming)
            ranges: list[tuple[int, int]] = []
            rows: list[tuple[str, int, int, float, int, bytes]] = []
            for item, now in prepared:
                # Appends of one transaction arrived together: one that seems to predate the
                # latest by more than a clock step was dated across a step; date it now.
                lag = latest - now
                stored_at = spool_now - lag if 0 <= lag <= CLOCK_STEP else spool_now
                seq = delta.last_seq.get(item.stream) or self._state.last_seq.get(
                    item.stream, self._seq_floor
                )
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
            self._drop(db, delta, cutoff=self._now(db, now) - self.max_age, room_for=0)
            return delta.dropped

        return self._transaction(drop)

    def _now(self, db: sqlite3.Connection, now: float) -> float:
        """Inside a transaction: the spool time of the wall-clock reading *now*, its clock
        corrected and saved (see :class:`_Clock`)."""
        if self._uptime is None:
            return now
        spool_now = self._clock.advance(now, self._uptime)
        db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            self._clock.rows(),
        )
        return spool_now

    def _disk_shortfall(self, db: sqlite3.Connection, room_for: int) -> int:
        """Bytes that must be freed inside the file for an append of *room_for* bytes to leave
        the headroom free on the file system (pages freed by drops are reused by the file)."""
        if self.disk_headroom is None or room_for <= 0:
            return 0
        free_pages: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        need = int(room_for * DISK_SLACK) + 2 * self._page_size
        return need - free_pages * self._page_size - max(0, self._free_bytes())

    def _drop(self, db: sqlite3.Connection, delta: _Delta, *, cutoff: float, room_for: int) -> None:
        """Inside a transaction: drop expired chunks, then the oldest until ``room_for`` fits
        in the byte bound and on the file system."""
        victims: list[_Victim] = db.execute(
            "SELECT id, stream, first_seq, last_seq, nbytes FROM chunks"
            " WHERE stored_at < ?",  # no ORDER BY: the planner would scan by id
            (cutoff,),
        ).fetchall()
        freed = sum(v[4] for v in victims)
        held = self._state.nbytes - freed
        shortfall = self._disk_shortfall(db, room_for) - freed
        if held + room_for > self.max_bytes or shortfall > 0:
            expired = {v[0] for v in victims}
            cursor = db.execute(
                "SELECT id, stream, first_seq, last_seq, nbytes FROM chunks ORDER BY id"
            )
            try:
                for row in cursor:
                    if held + room_for <= self.max_bytes and shortfall <= 0:
                        break
                    if row[0] not in expired:
                        victims.append(row)
                        held -= row[4]
                        shortfall -= row[4]
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
        if oldest is not None:
            oldest -= self._clock.offset  # back on the wall clock, as it reads now
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
        disk_headroom: int | None = DEFAULT_HEADROOM,
        clock: Callable[[], float] | None = None,
        uptime: Uptime | None = None,
    ) -> AsyncSpool:
        """Open the spool in its own thread; ``clock`` dates appends given no ``now``.

        Without a ``clock``, appends are dated by the wall clock and ages measured across its
        steps with :func:`system_uptime` (unless another ``uptime`` is given); a test's own
        ``clock`` is taken as is unless it comes with its ``uptime``.
        """
        if clock is None:
            clock, uptime = time.time, uptime or system_uptime
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
                    disk_headroom=disk_headroom,
                    uptime=uptime,
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
