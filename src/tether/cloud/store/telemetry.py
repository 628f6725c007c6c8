"""Telemetry in the store: observations, per-stream high-water marks, devices and points.

Exactly-once in the store: every (gateway, stream) has a high-water mark, the highest sequence
number committed. A batch is cut to what lies above the mark, its rows inserted and the mark
raised in the same transaction, so a batch sent twice (its acknowledgement lost) adds nothing.
Bulk paths: multi-row ``INSERT ... VALUES`` statements on SQLite (thousands of rows per statement:
one step of the statement, with the GIL released, inserts them all, where ``executemany`` would
take the GIL back between rows and wait behind the event loop each time), ``COPY`` on
PostgreSQL (asyncpg), inside the transaction.

A text value is stored with its NUL characters as U+FFFD on both dialects (PostgreSQL refuses
NUL in text): see :mod:`tether.cloud.storable`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import chain, islice, repeat
from operator import le
from typing import Any, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.cloud.storable import storable_text
from tether.cloud.store.models import JSONDocument, UTCDateTime, metadata
from tether.cloud.store.store import dialect_insert, write_transaction
from tether.protocol.telemetry import (
    DeviceInfo,
    Observation,
    ObservationColumns,
    PointInfo,
    observation_columns,
)

__all__ = [
    "BatchOutcome",
    "BatchRows",
    "GroupWriter",
    "IncomingBatch",
    "ObservationRow",
    "PointRecord",
    "StreamRecord",
    "TelemetryStore",
    "batch_rows",
    "devices",
    "observations",
    "points",
    "telemetry_streams",
]

_ID = sa.String(64)

telemetry_streams = sa.Table(
    "telemetry_streams",
    metadata,
    sa.Column("gateway_id", _ID, primary_key=True),
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("hwm", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("accepted", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("duplicates", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("gaps", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("dropped_reported", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
)

observations = sa.Table(
    "observations",
    metadata,
    sa.Column("gateway_id", _ID, nullable=False),
    sa.Column("point_id", sa.String(255), nullable=False),
    sa.Column("ts", sa.Float(precision=53), nullable=False),
    sa.Column("value_num", sa.Float(precision=53), nullable=True),
    sa.Column("value_text", sa.Text(), nullable=True),
    sa.Column("quality", sa.String(16), nullable=False),
    sa.Index("ix_observations_gateway_id_point_id_ts", "gateway_id", "point_id", "ts"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("gateway_id", _ID, primary_key=True),
    sa.Column("device_id", sa.String(255), primary_key=True),
    sa.Column("connector", sa.String(128), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("vendor", sa.String(255), nullable=False, server_default=""),
    sa.Column("model", sa.String(255), nullable=False, server_default=""),
    sa.Column("location", sa.String(255), nullable=False, server_default=""),
    sa.Column("attributes", JSONDocument, nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

points = sa.Table(
    "points",
    metadata,
    sa.Column("gateway_id", _ID, primary_key=True),
    sa.Column("point_id", sa.String(255), primary_key=True),
    sa.Column("device_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("unit", sa.String(32), nullable=False, server_default=""),
    sa.Column("writable", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
    sa.Column("last_ts", sa.Float(precision=53), nullable=True),
    sa.Column("last_value_num", sa.Float(precision=53), nullable=True),
    sa.Column("last_value_text", sa.Text(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

_T = TypeVar("_T")
_Key = tuple[str, str]  # (gateway, stream)

_COLUMNS = ("gateway_id", "point_id", "ts", "value_num", "value_text", "quality")
_SQLITE_INSERT = (
    "INSERT INTO observations (gateway_id, point_id, ts, value_num, value_text, quality) VALUES "
)
#: Rows per multi-row INSERT statement on SQLite, largest first: a run of rows takes as many
#: statements of the largest size as fit, then of the next (a handful of statement texts, each
#: compiled once and kept in the connection's statement cache). 4096 rows of 6 columns stay under
#: SQLite's 32,766 parameters per statement.
SQLITE_ROWS_PER_STATEMENT = (4096, 512, 64, 8, 1)
_SQLITE_ENSURE_STREAM = (
    "INSERT INTO telemetry_streams (gateway_id, stream, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
#: Streams, or points, per keyed statement on SQLite. A group's keys go in as few statements as
#: that allows, each a ``VALUES`` list joined to the table by its primary key (one step, one
#: hand-over of the GIL, where a statement per key costs one each), padded up to a power of two
#: with rows of NULL keys that match nothing, so that a handful of statement texts serve every
#: group size from the connection's statement cache.
SQLITE_KEYS_PER_STATEMENT = 512
_POSTGRES_LOCK_MARKS = (
    postgresql.insert(telemetry_streams)
    .on_conflict_do_update(
        index_elements=["gateway_id", "stream"], set_={"hwm": telemetry_streams.c.hwm}
    )
    .returning(telemetry_streams.c.gateway_id, telemetry_streams.c.stream, telemetry_streams.c.hwm)
)
# All of a group's points in one statement.
_POSTGRES_SET_LAST = (
    "UPDATE points SET last_ts = n.t, last_value_num = n.num, last_value_text = n.txt, "
    "updated_at = $6 FROM unnest($1::varchar[], $2::varchar[], $3::float8[], $4::float8[], "
    "$5::text[]) AS n(g, p, t, num, txt) WHERE points.gateway_id = n.g AND points.point_id = n.p "
    "AND (points.last_ts IS NULL OR points.last_ts <= n.t)"
)
_NUMERIC = frozenset((float, int, bool))
#: The group writer's SQLite page cache, in KiB (a negative ``cache_size``): a group of many
#: gateways inserts into as many places of the observations index, which the default 2 MiB
#: cannot hold, so pages spilled mid-transaction were read back again.
WRITER_CACHE = -16384

#: A point's newest value in a batch: (ts, value_num, value_text).
Latest = tuple[float, float | None, str | None]


@dataclass(frozen=True, slots=True)
class BatchRows:
    """A batch as the store writes it, column by column (values split into number and text),
    and the newest value of each of its points."""

    point_ids: list[str]
    ts: list[float]
    nums: list[float | None]
    texts: list[str | None] | None  # None: the batch holds no text value
    qualities: list[str]
    latest: dict[str, Latest]

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self, gateway_id: str) -> Iterator[tuple[Any, ...]]:
        """The observation rows (``_COLUMNS`` order), each made as the bulk path takes it."""
        texts: Iterable[str | None] = repeat(None) if self.texts is None else self.texts
        return zip(
            repeat(gateway_id),
            self.point_ids,
            self.ts,
            self.nums,
            texts,
            self.qualities,
            strict=False,
        )


def batch_rows(
    observations: Sequence[Observation], columns: ObservationColumns | None = None
) -> BatchRows:
    """What the store writes of ``observations`` (``columns`` if the caller has them already).

    Numeric values (the usual case) take C-level passes over whole columns; a batch holding
    text, or observations out of time order, takes a loop over its rows. A text value's NUL
    characters become U+FFFD, in its row and in its point's newest value.
    """
    point_ids, ts, values, qualities = columns or observation_columns(observations)
    nums: list[float | None]
    texts: list[str | None] | None
    if set(map(type, values)) <= _NUMERIC:
        nums, texts = list(map(float, values)), None
    else:
        split = [_split_value(v) for v in values]
        nums, texts = [num for num, _ in split], [text for _, text in split]
    every_text: Iterable[str | None] = repeat(None) if texts is None else texts
    if all(map(le, ts, islice(ts, 1, None))):
        # In time order: a point's newest value is its last (a dict keeps the last of a key).
        latest: dict[str, Latest] = dict(
            zip(point_ids, zip(ts, nums, every_text, strict=False), strict=False)
        )
    else:
        latest = {}
        for point_id, t, num, text in zip(point_ids, ts, nums, every_text, strict=False):
            seen = latest.get(point_id)
            if seen is None or seen[0] <= t:
                latest[point_id] = (t, num, text)
    return BatchRows(point_ids, ts, nums, texts, qualities, latest)


@dataclass(frozen=True, slots=True)
class IncomingBatch:
    """A validated batch of one gateway's stream, ready to commit. ``rows`` may be prepared by
    the caller (outside the transaction); otherwise :meth:`TelemetryStore.commit_batches`
    prepares them before it begins."""

    gateway_id: str
    stream: str
    first_seq: int
    last_seq: int
    observations: Sequence[Observation]
    rows: BatchRows | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    accepted: int
    duplicates: int
    gap: int  # sequence numbers skipped before this batch (dropped on the gateway)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    stream: str
    hwm: int
    accepted: int
    duplicates: int
    gaps: int
    dropped_reported: int


@dataclass(frozen=True, slots=True)
class PointRecord:
    point_id: str
    device_id: str
    name: str
    kind: str
    unit: str
    writable: bool
    last_ts: float | None
    last_value: float | str | None


@dataclass(frozen=True, slots=True)
class ObservationRow:
    point_id: str
    ts: float
    value: float | str | None
    quality: str


def _split_value(value: object) -> tuple[float | None, str | None]:
    if isinstance(value, bool):
        return (1.0 if value else 0.0), None
    if isinstance(value, int | float):
        return float(value), None
    return None, storable_text(str(value))


@dataclass(slots=True)
class _Plan:
    """What one group's transaction writes, given the marks it read."""

    outcomes: list[BatchOutcome]
    rows: list[Iterator[tuple[Any, ...]]]  # each accepted batch's rows
    streams: list[tuple[str, str, int, int, int, int]]  # (gateway, stream, hwm, +acc, +dup, +gap)
    latest: dict[tuple[str, str], Latest]  # (gateway, point) -> newest value


def _plan(
    batches: Sequence[IncomingBatch],
    prepared: Sequence[BatchRows],
    marks: dict[tuple[str, str], int],
) -> _Plan:
    """Cut each batch to what lies above its stream's mark, advancing the marks in order."""
    start = dict(marks)
    marks = dict(marks)
    tallies = {key: [0, 0, 0] for key in marks}
    plan = _Plan([], [], [], {})
    latest = plan.latest
    for batch, whole in zip(batches, prepared, strict=True):
        key = (batch.gateway_id, batch.stream)
        mark = marks[key]
        if batch.last_seq <= mark:
            outcome = BatchOutcome(0, len(batch.observations), 0)
        else:
            skip = max(0, mark - batch.first_seq + 1)
            gap = max(0, batch.first_seq - mark - 1)
            # A batch partly sent before (rare): its new tail only.
            ready = batch_rows(batch.observations[skip:]) if skip else whole
            gateway_id = batch.gateway_id
            plan.rows.append(ready.rows(gateway_id))
            for point_id, newest in ready.latest.items():
                seen = latest.get((gateway_id, point_id))
                if seen is None or seen[0] <= newest[0]:
                    latest[(gateway_id, point_id)] = newest
            marks[key] = batch.last_seq
            outcome = BatchOutcome(len(ready), skip, gap)
        tally = tallies[key]
        tally[0] += outcome.accepted
        tally[1] += outcome.duplicates
        tally[2] += outcome.gap
        plan.outcomes.append(outcome)
    plan.streams = [
        (g, s, marks[(g, s)], accepted, duplicates, gaps)
        for (g, s), (accepted, duplicates, gaps) in tallies.items()
        if marks[(g, s)] != start[(g, s)] or duplicates
    ]
    return plan


def _sqlite_commit(
    db: sqlite3.Connection,
    batches: Sequence[IncomingBatch],
    prepared: Sequence[BatchRows],
    stamp: Any,
) -> list[BatchOutcome]:
    """A group's whole transaction on SQLite, run on the connection's own thread."""
    keys = list(dict.fromkeys((b.gateway_id, b.stream) for b in batches))
    with _sqlite_transaction(db):
        # BEGIN IMMEDIATE took the write lock: no other writer can pass these marks meanwhile.
        marks = _sqlite_marks(db, keys)
        new = [key for key in keys if key not in marks]
        if new:  # a stream's first batch
            db.executemany(_SQLITE_ENSURE_STREAM, [(g, s, stamp) for g, s in new])
            marks.update(dict.fromkeys(new, 0))
        plan = _plan(batches, prepared, marks)
        if plan.rows:
            _sqlite_insert_rows(db, chain.from_iterable(plan.rows))
        if plan.streams:
            _sqlite_keyed(db, _SQLITE_ADVANCE, plan.streams, 6, stamp)
        if plan.latest:
            # Ties on time go to the later observation, within a group as across groups.
            rows = [(g, p, t, num, text) for (g, p), (t, num, text) in plan.latest.items()]
            _sqlite_keyed(db, _SQLITE_SET_LAST, rows, 5, stamp)
    return plan.outcomes


def _padded_keys(count: int) -> int:
    return max(8, 1 << (count - 1).bit_length())


def _values(rows: int, width: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return ",".join((row,) * rows)


# Keyed statements on SQLite: ``ROWS`` stands for the list of ``VALUES`` rows.
_SQLITE_MARKS = (
    # One result row (an aggregate): fetching a row per stream would hand the GIL over each time.
    "SELECT json_group_array(json_array(t.gateway_id, t.stream, t.hwm)) FROM (VALUES ROWS) AS v "
    "CROSS JOIN telemetry_streams AS t ON t.gateway_id = v.column1 AND t.stream = v.column2"
)
_SQLITE_ADVANCE = (
    "UPDATE telemetry_streams SET hwm = v.column3, accepted = accepted + v.column4, "
    "duplicates = duplicates + v.column5, gaps = gaps + v.column6, updated_at = ? "
    "FROM (VALUES ROWS) AS v "
    "WHERE telemetry_streams.gateway_id = v.column1 AND telemetry_streams.stream = v.column2"
)
_SQLITE_SET_LAST = (
    "UPDATE points SET last_ts = v.column3, last_value_num = v.column4, "
    "last_value_text = v.column5, updated_at = ? FROM (VALUES ROWS) AS v "
    "WHERE points.gateway_id = v.column1 AND points.point_id = v.column2 "
    "AND (points.last_ts IS NULL OR points.last_ts <= v.column3)"
)


@functools.cache
def _keyed_statement(template: str, keys: int, width: int) -> str:
    """*template* with ``ROWS`` replaced by *keys* ``VALUES`` rows of *width* parameters."""
    return template.replace("ROWS", _values(keys, width))


def _chunks(rows: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(rows), SQLITE_KEYS_PER_STATEMENT):
        yield rows[start : start + SQLITE_KEYS_PER_STATEMENT]


def _sqlite_marks(db: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> dict[_Key, int]:
    """The high-water marks of those of ``keys`` (gateway, stream) that have a stream row."""
    marks: dict[_Key, int] = {}
    for chunk in _chunks(keys):
        size = _padded_keys(len(chunk))
        params: list[str | None] = list(chain.from_iterable(chunk))
        params.extend(repeat(None, 2 * (size - len(chunk))))
        (found,) = db.execute(_keyed_statement(_SQLITE_MARKS, size, 2), params).fetchone()
        for gateway_id, stream, hwm in json.loads(found):
            marks[(gateway_id, stream)] = int(hwm)
    return marks


def _sqlite_keyed(
    db: sqlite3.Connection,
    template: str,
    rows: Sequence[tuple[Any, ...]],
    width: int,
    stamp: Any,
) -> None:
    """Run a keyed ``UPDATE ... FROM (VALUES ...)`` (its first parameter the time stamp):
    ``rows`` of *width* values lead with the two key columns."""
    for chunk in _chunks(rows):
        size = _padded_keys(len(chunk))
        params: list[Any] = [stamp]
        params.extend(chain.from_iterable(chunk))
        params.extend(repeat(None, width * (size - len(chunk))))
        db.execute(_keyed_statement(template, size, width), params)


def _set_cache(db: sqlite3.Connection, pages: int) -> int:
    """Set the connection's page cache size (``PRAGMA cache_size``); the size it had."""
    usual = int(db.execute("PRAGMA cache_size").fetchone()[0])
    db.execute(f"PRAGMA cache_size = {int(pages)}")
    return usual


@functools.cache
def _sqlite_insert_statement(rows: int) -> str:
    return _SQLITE_INSERT + ",".join(("(?,?,?,?,?,?)",) * rows)


def _sqlite_insert_rows(db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert observation rows (``_COLUMNS`` order) with multi-row statements."""
    values = list(chain.from_iterable(rows))
    width = len(_COLUMNS)
    count, rest = divmod(len(values), width)
    if rest:
        raise ValueError(f"each observation row must have {width} values")
    done = 0
    for size in SQLITE_ROWS_PER_STATEMENT:
        statement = _sqlite_insert_statement(size)
        while count - done >= size:
            db.execute(statement, values[done * width : (done + size) * width])
            done += size


def _sqlite_insert(db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    with _sqlite_transaction(db):
        _sqlite_insert_rows(db, rows)


@contextmanager
def _sqlite_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the connection is in autocommit
    mode: see the store's engine set-up)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    db.execute("COMMIT")


async def _in_sqlite_thread(driver: Any, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``work`` with the sqlite3 connection under an aiosqlite connection, on that
    connection's thread: a whole transaction for one hand-over between the event loop and the
    thread (each statement awaited apart would wait its turn behind the loop's other work)."""
    connection: sqlite3.Connection = driver._conn
    result: _T = await driver._execute(work, connection)
    return result


def _driver_errors(dialect: str) -> tuple[type[BaseException], ...]:
    """What the driver itself raises (statements run on its own connection bypass SQLAlchemy's
    translation)."""
    if dialect == "postgresql":
        return (asyncpg.PostgresError, asyncpg.InterfaceError)
    return (sqlite3.Error,)


async def _driver(conn: AsyncConnection) -> Any:
    """The driver's own connection (aiosqlite or asyncpg) under a SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:
        raise RuntimeError("the connection was invalidated")
    return driver


class GroupWriter:
    """Group commits on one connection held between them (:meth:`TelemetryStore.writer`).

    Holding it keeps its page cache warm from one group to the next (SQLite drops a
    connection's cache whenever another connection wrote) and spares a pool checkout per group.
    On SQLite each group is one transaction handed to the connection's thread whole, with a page
    cache large enough for the index pages a group of many gateways touches.
    """

    def __init__(self, store: TelemetryStore, conn: AsyncConnection, driver: Any) -> None:
        self._store = store
        self._conn = conn
        self._driver = driver  # aiosqlite's connection on SQLite, else None

    async def commit(self, batches: Sequence[IncomingBatch]) -> list[BatchOutcome]:
        """Commit a group of batches in one transaction; outcomes in the same order."""
        if not batches:
            return []
        store = self._store
        # Everything done per row happens before the transaction begins.
        prepared = [b.rows or batch_rows(b.observations) for b in batches]
        now = datetime.now(UTC)
        if self._driver is None:
            return await store._postgres_commit(self._conn, batches, prepared, now)
        with store._on_driver("telemetry group commit"):
            return await _in_sqlite_thread(
                self._driver,
                partial(
                    _sqlite_commit, batches=batches, prepared=prepared, stamp=store._stamp(now)
                ),
            )


class TelemetryStore:
    """Telemetry operations on the store's engine (see :attr:`Store.engine`)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._driver_errors = _driver_errors(self.dialect)
        stamp_type = points.c.updated_at.type.dialect_impl(engine.dialect)
        self._stamp_processor = stamp_type.bind_processor(engine.dialect)

    @contextmanager
    def _on_driver(self, statement: str) -> Iterator[None]:
        """Driver errors raised as SQLAlchemy's, as every other statement's are."""
        try:
            yield
        except self._driver_errors as exc:
            raise sa.exc.DBAPIError(statement, None, exc) from exc

    # -- ingest ------------------------------------------------------------------------------

    async def commit_batches(self, batches: Sequence[IncomingBatch]) -> list[BatchOutcome]:
        """Commit a group of batches in one transaction; outcomes in the same order."""
        async with self.writer() as writer:
            return await writer.commit(batches)

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[GroupWriter]:
        """A connection held for a run of group commits (see :class:`GroupWriter`)."""
        async with self.engine.connect() as conn:
            if self.dialect != "sqlite":
                yield GroupWriter(self, conn, None)
                return
            driver = await _driver(conn)
            with self._on_driver("PRAGMA cache_size"):
                usual = await _in_sqlite_thread(driver, partial(_set_cache, pages=WRITER_CACHE))
            try:
                yield GroupWriter(self, conn, driver)
            finally:
                with contextlib.suppress(sqlite3.Error, ValueError):  # a connection gone bad
                    await _in_sqlite_thread(driver, partial(_set_cache, pages=usual))

    async def _postgres_commit(
        self,
        conn: AsyncConnection,
        batches: Sequence[IncomingBatch],
        prepared: Sequence[BatchRows],
        now: datetime,
    ) -> list[BatchOutcome]:
        keys = list(dict.fromkeys((b.gateway_id, b.stream) for b in batches))
        async with conn.begin():
            # One statement creates the streams' rows if need be, locks them and reads their
            # marks: two writers of the same stream queue up instead of both passing a mark.
            marks = {
                (g, s): int(h)
                for g, s, h in await conn.execute(
                    _POSTGRES_LOCK_MARKS.values(
                        [{"gateway_id": g, "stream": s, "updated_at": now} for g, s in keys]
                    )
                )
            }
            plan = _plan(batches, prepared, marks)
            driver = await _driver(conn)
            if plan.rows:
                with self._on_driver("COPY observations"):
                    await driver.copy_records_to_table(
                        "observations", records=chain.from_iterable(plan.rows), columns=_COLUMNS
                    )
            if plan.streams:
                await conn.execute(
                    telemetry_streams.update()
                    .where(
                        telemetry_streams.c.gateway_id == sa.bindparam("g"),
                        telemetry_streams.c.stream == sa.bindparam("s"),
                    )
                    .values(
                        hwm=sa.bindparam("h"),
                        accepted=telemetry_streams.c.accepted + sa.bindparam("a"),
                        duplicates=telemetry_streams.c.duplicates + sa.bindparam("d"),
                        gaps=telemetry_streams.c.gaps + sa.bindparam("gp"),
                        updated_at=sa.bindparam("u"),
                    ),
                    [
                        {"g": g, "s": s, "h": h, "a": a, "d": d, "gp": gp, "u": now}
                        for g, s, h, a, d, gp in plan.streams
                    ],
                )
            if plan.latest:
                g, p = zip(*plan.latest, strict=True)
                t, num, text = zip(*plan.latest.values(), strict=True)
                with self._on_driver(_POSTGRES_SET_LAST):
                    await driver.execute(
                        _POSTGRES_SET_LAST,
                        list(g),
                        list(p),
                        list(t),
                        list(num),
                        list(text),
                        self._stamp(now),
                    )
        return plan.outcomes

    def _stamp(self, now: datetime) -> Any:
        """``now`` as the driver takes it for an ``updated_at`` column."""
        return now if self._stamp_processor is None else self._stamp_processor(now)

    async def raw_insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert observation rows with the bulk path and nothing else (the benchmark's
        reference for what ingest costs on top): ``COPY`` on PostgreSQL, on SQLite multi-row
        ``INSERT`` statements in one transaction handed to the connection's thread whole, as
        ingest's group commit is."""
        if self.dialect == "sqlite":
            async with self.engine.connect() as conn:
                driver = await _driver(conn)
                with self._on_driver(_SQLITE_INSERT):
                    await _in_sqlite_thread(driver, partial(_sqlite_insert, rows=rows))
            return
        async with write_transaction(self.engine) as conn:
            driver = await _driver(conn)
            with self._on_driver("COPY observations"):
                await driver.copy_records_to_table("observations", records=rows, columns=_COLUMNS)

    async def record_drops(self, gateway_id: str, stream: str, total: int) -> None:
        now = datetime.now(UTC)
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                dialect_insert(self.dialect, telemetry_streams).on_conflict_do_nothing(),
                [{"gateway_id": gateway_id, "stream": stream, "updated_at": now}],
            )
            await conn.execute(
                telemetry_streams.update()
                .where(
                    telemetry_streams.c.gateway_id == gateway_id,
                    telemetry_streams.c.stream == stream,
                    telemetry_streams.c.dropped_reported < total,
                )
                .values(dropped_reported=total, updated_at=now)
            )

    async def record_discovery(
        self,
        gateway_id: str,
        connector: str,
        found_devices: Sequence[DeviceInfo],
        found_points: Sequence[PointInfo],
    ) -> None:
        now = datetime.now(UTC)
        async with write_transaction(self.engine) as conn:
            if found_devices:
                stmt = dialect_insert(self.dialect, devices)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["gateway_id", "device_id"],
                        set_={
                            c: stmt.excluded[c]
                            for c in (
                                "connector",
                                "name",
                                "kind",
                                "vendor",
                                "model",
                                "location",
                                "attributes",
                                "updated_at",
                            )
                        },
                    ),
                    [
                        {
                            "gateway_id": gateway_id,
                            "device_id": d.device_id,
                            "connector": connector,
                            "name": d.name,
                            "kind": d.kind,
                            "vendor": d.vendor,
                            "model": d.model,
                            "location": d.location,
                            "attributes": dict(d.attributes),
                            "updated_at": now,
                        }
                        for d in found_devices
                    ],
                )
            if found_points:
                stmt = dialect_insert(self.dialect, points)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["gateway_id", "point_id"],
                        set_={
                            c: stmt.excluded[c]
                            for c in (
                                "device_id",
                                "name",
                                "kind",
                                "unit",
                                "writable",
                                "description",
                                "updated_at",
                            )
                        },
                    ),
                    [
                        {
                            "gateway_id": gateway_id,
                            "point_id": p.point_id,
                            "device_id": p.device_id,
                            "name": p.name,
                            "kind": p.kind,
                            "unit": p.unit,
                            "writable": p.writable,
                            "description": p.description,
                            "updated_at": now,
                        }
                        for p in found_points
                    ],
                )

    # -- queries -----------------------------------------------------------------------------

    async def streams(self, gateway_id: str) -> list[StreamRecord]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(telemetry_streams)
                .where(telemetry_streams.c.gateway_id == gateway_id)
                .order_by(telemetry_streams.c.stream)
            )
            return [
                StreamRecord(r.stream, r.hwm, r.accepted, r.duplicates, r.gaps, r.dropped_reported)
                for r in result
            ]

    async def list_points(self, gateway_id: str) -> list[PointRecord]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(points)
                .where(points.c.gateway_id == gateway_id)
                .order_by(points.c.point_id)
            )
            return [
                PointRecord(
                    r.point_id,
                    r.device_id,
                    r.name,
                    r.kind,
                    r.unit,
                    r.writable,
                    r.last_ts,
                    r.last_value_num if r.last_value_text is None else r.last_value_text,
                )
                for r in result
            ]

    async def list_devices(self, gateway_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(devices)
                .where(devices.c.gateway_id == gateway_id)
                .order_by(devices.c.device_id)
            )
            return [dict(r._mapping) for r in result]

    async def query(
        self,
        gateway_id: str,
        *,
        point_id: str | None,
        since: float | None,
        until: float | None,
        limit: int,
        after: float | None = None,
    ) -> list[ObservationRow]:
        """Observations oldest first; ``after`` (exclusive) serves a live tail's cursor."""
        q = sa.select(
            observations.c.point_id,
            observations.c.ts,
            observations.c.value_num,
            observations.c.value_text,
            observations.c.quality,
        ).where(observations.c.gateway_id == gateway_id)
        if point_id is not None:
            q = q.where(observations.c.point_id == point_id)
        if since is not None:
            q = q.where(observations.c.ts >= since)
        if until is not None:
            q = q.where(observations.c.ts < until)
        if after is not None:
            q = q.where(observations.c.ts > after)
        q = q.order_by(observations.c.ts).limit(limit)
        async with self.engine.connect() as conn:
            return [
                ObservationRow(
                    r.point_id,
                    r.ts,
                    r.value_num if r.value_text is None else r.value_text,
                    r.quality,
                )
                for r in await conn.execute(q)
            ]

    async def count(self, gateway_id: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(observations)
        if gateway_id is not None:
            q = q.where(observations.c.gateway_id == gateway_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())
