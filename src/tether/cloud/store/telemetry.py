"""Telemetry in the store: observations, per-stream high-water marks, devices and points.

Exactly-once in the store: every (gateway, stream) has a high-water mark, the highest sequence
number committed. A batch is cut to what lies above the mark, its rows inserted and the mark
raised in the same transaction, so a batch sent twice (its acknowledgement lost) adds nothing.
Bulk paths: ``executemany`` on SQLite, ``COPY`` on PostgreSQL (asyncpg), inside the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.cloud.store.models import JSONDocument, UTCDateTime, metadata
from tether.cloud.store.store import dialect_insert, write_transaction
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

__all__ = [
    "BatchOutcome",
    "IncomingBatch",
    "ObservationRow",
    "PointRecord",
    "StreamRecord",
    "TelemetryStore",
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

_COLUMNS = ("gateway_id", "point_id", "ts", "value_num", "value_text", "quality")


@dataclass(frozen=True, slots=True)
class IncomingBatch:
    gateway_id: str
    stream: str
    first_seq: int
    last_seq: int
    observations: Sequence[Observation]


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
    return None, str(value)


class TelemetryStore:
    """Telemetry operations on the store's engine (see :attr:`Store.engine`)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name

    # -- ingest ------------------------------------------------------------------------------

    async def commit_batches(self, batches: Sequence[IncomingBatch]) -> list[BatchOutcome]:
        """Commit a group of batches in one transaction; outcomes in the same order."""
        if not batches:
            return []
        now = datetime.now(UTC)
        keys = list(dict.fromkeys((b.gateway_id, b.stream) for b in batches))
        async with write_transaction(self.engine) as conn:
            # Taking the write lock first (SQLite) and locking the marks (PostgreSQL) makes
            # two writers of the same stream queue up instead of both passing the same mark.
            await conn.execute(
                dialect_insert(self.dialect, telemetry_streams).on_conflict_do_nothing(),
                [{"gateway_id": g, "stream": s, "updated_at": now} for g, s in keys],
            )
            query = sa.select(
                telemetry_streams.c.gateway_id, telemetry_streams.c.stream, telemetry_streams.c.hwm
            ).where(sa.tuple_(telemetry_streams.c.gateway_id, telemetry_streams.c.stream).in_(keys))
            if self.dialect == "postgresql":
                query = query.with_for_update()
            marks = {(g, s): int(h) for g, s, h in (await conn.execute(query)).all()}
            start_marks = dict(marks)
            outcomes: list[BatchOutcome] = []
            rows: list[tuple[Any, ...]] = []
            tallies: dict[tuple[str, str], list[int]] = {k: [0, 0, 0] for k in keys}
            latest: dict[tuple[str, str], tuple[float, object]] = {}
            for batch in batches:
                key = (batch.gateway_id, batch.stream)
                mark = marks[key]
                if batch.last_seq <= mark:
                    outcome = BatchOutcome(0, len(batch.observations), 0)
                else:
                    skip = max(0, mark - batch.first_seq + 1)
                    gap = max(0, batch.first_seq - mark - 1)
                    fresh = batch.observations[skip:]
                    for o in fresh:
                        num, text = _split_value(o.value)
                        rows.append((batch.gateway_id, o.point_id, o.ts, num, text, o.quality))
                        pkey = (batch.gateway_id, o.point_id)
                        if pkey not in latest or latest[pkey][0] < o.ts:
                            latest[pkey] = (o.ts, o.value)
                    marks[key] = batch.last_seq
                    outcome = BatchOutcome(len(fresh), skip, gap)
                tally = tallies[key]
                tally[0] += outcome.accepted
                tally[1] += outcome.duplicates
                tally[2] += outcome.gap
                outcomes.append(outcome)
            if rows:
                await self._bulk_insert(conn, rows)
            changed = [
                {"g": g, "s": s, "h": marks[(g, s)], "a": t[0], "d": t[1], "gp": t[2], "u": now}
                for (g, s), t in tallies.items()
                if marks[(g, s)] != start_marks[(g, s)] or t[1]
            ]
            if changed:
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
                    changed,
                )
            if latest:
                await self._update_last_values(conn, latest, now)
        return outcomes

    async def _bulk_insert(self, conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
        if self.dialect == "postgresql":
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table("observations", records=rows, columns=_COLUMNS)
        else:
            await conn.exec_driver_sql(
                "INSERT INTO observations (gateway_id, point_id, ts, value_num, value_text, "
                "quality) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def _update_last_values(
        self,
        conn: AsyncConnection,
        latest: dict[tuple[str, str], tuple[float, object]],
        now: datetime,
    ) -> None:
        params = []
        for (gateway_id, point_id), (ts, value) in latest.items():
            num, text = _split_value(value)
            params.append({"g": gateway_id, "p": point_id, "t": ts, "n": num, "x": text, "u": now})
        await conn.execute(
            points.update()
            .where(
                points.c.gateway_id == sa.bindparam("g"),
                points.c.point_id == sa.bindparam("p"),
                sa.or_(points.c.last_ts.is_(None), points.c.last_ts < sa.bindparam("t")),
            )
            .values(
                last_ts=sa.bindparam("t"),
                last_value_num=sa.bindparam("n"),
                last_value_text=sa.bindparam("x"),
                updated_at=sa.bindparam("u"),
            ),
            params,
        )

    async def raw_insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert observation rows with the bulk path and nothing else (the benchmark's
        reference for what ingest costs on top)."""
        async with write_transaction(self.engine) as conn:
            await self._bulk_insert(conn, rows)

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
