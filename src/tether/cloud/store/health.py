"""Gateway health reports and logs in the store, with retention and hourly downsampling.

A health report keeps its whole document (JSON) and, as columns, the few figures a fleet view
charts; reports older than the raw retention are folded into hourly averages, which are kept
longer. Logs are kept for their own retention; a record flagged as possibly carrying customer
data can be filtered out of views by whoever must not see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from tether.cloud.store.models import JSONDocument, metadata
from tether.cloud.store.store import write_transaction
from tether.protocol.config import LOG_LEVEL_NAMES

__all__ = [
    "HEALTH_FIGURES",
    "LOG_LEVELS",
    "HealthPoint",
    "HealthStore",
    "LogRow",
    "gateway_logs",
    "gateway_preflight",
    "health_hourly",
    "health_reports",
]

#: The figures kept as columns (and averaged hourly): name → where in the report.
HEALTH_FIGURES: dict[str, tuple[str, ...]] = {
    "cpu_percent": ("system", "cpu_percent"),
    "memory_percent": ("system", "memory", "percent"),
    "disk_percent": ("system", "disk", "percent"),
    "temperature_max": ("system", "temperature_max"),
    "net_rx_bps": ("network", "rx_bps"),
    "net_tx_bps": ("network", "tx_bps"),
    "spool_depth": ("spool", "observations"),
    "spool_dropped": ("spool", "dropped"),
}

_F = sa.Float(precision=53)

health_reports = sa.Table(
    "health_reports",
    metadata,
    sa.Column("gateway_id", sa.String(64), nullable=False),
    sa.Column("ts", _F, nullable=False),
    *(sa.Column(name, _F, nullable=True) for name in HEALTH_FIGURES),
    sa.Column("data", JSONDocument, nullable=False),
    sa.Index("ix_health_reports_gateway_id_ts", "gateway_id", "ts"),
)

health_hourly = sa.Table(
    "health_hourly",
    metadata,
    sa.Column("gateway_id", sa.String(64), primary_key=True),
    sa.Column("hour", _F, primary_key=True),
    sa.Column("reports", sa.Integer(), nullable=False),
    *(sa.Column(name, _F, nullable=True) for name in HEALTH_FIGURES),
)

gateway_preflight = sa.Table(
    "gateway_preflight",
    metadata,
    sa.Column("gateway_id", sa.String(64), primary_key=True),
    sa.Column("ts", _F, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("report", JSONDocument, nullable=False),
)

gateway_logs = sa.Table(
    "gateway_logs",
    metadata,
    sa.Column("gateway_id", sa.String(64), nullable=False),
    sa.Column("ts", _F, nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("customer_data", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("fields", JSONDocument, nullable=True),
    sa.Index("ix_gateway_logs_gateway_id_ts", "gateway_id", "ts"),
)


def figure(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _merge(a: float | None, a_reports: int, b: float | None, b_reports: int) -> float | None:
    """Two hourly averages of one figure as one, weighted by the reports behind each."""
    if a is None or b is None:
        return b if a is None else a
    return (a * a_reports + b * b_reports) / (a_reports + b_reports)


@dataclass(frozen=True, slots=True)
class HealthPoint:
    ts: float
    figures: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class LogRow:
    ts: float
    level: str
    source: str
    message: str
    customer_data: bool
    fields: dict[str, Any] | None


class HealthStore:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def add_report(self, gateway_id: str, ts: float, data: dict[str, Any]) -> None:
        row = {"gateway_id": gateway_id, "ts": ts, "data": data}
        row.update({name: figure(data, path) for name, path in HEALTH_FIGURES.items()})
        async with write_transaction(self.engine) as conn:
            await conn.execute(health_reports.insert(), [row])

    async def latest(self, gateway_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(health_reports.c.ts, health_reports.c.data)
                    .where(health_reports.c.gateway_id == gateway_id)
                    .order_by(health_reports.c.ts.desc())
                    .limit(1)
                )
            ).one_or_none()
        return {"ts": row.ts, **row.data} if row is not None else None

    async def latest_all(self) -> dict[str, dict[str, float | None]]:
        """The newest figures of every gateway (for the fleet's Prometheus gauges)."""
        newest = (
            sa.select(health_reports.c.gateway_id, sa.func.max(health_reports.c.ts).label("ts"))
            .group_by(health_reports.c.gateway_id)
            .subquery()
        )
        q = sa.select(health_reports).join(
            newest,
            sa.and_(
                health_reports.c.gateway_id == newest.c.gateway_id,
                health_reports.c.ts == newest.c.ts,
            ),
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {r.gateway_id: {n: getattr(r, n) for n in HEALTH_FIGURES} for r in rows}

    async def series(
        self, gateway_id: str, *, since: float, until: float | None = None
    ) -> list[HealthPoint]:
        """Figures over time: hourly averages where raw reports were folded, then raw ones."""
        until = until if until is not None else datetime.now(UTC).timestamp() + 60
        cols = [getattr(health_hourly.c, n) for n in HEALTH_FIGURES]
        raw_cols = [getattr(health_reports.c, n) for n in HEALTH_FIGURES]
        async with self.engine.connect() as conn:
            hourly = (
                await conn.execute(
                    sa.select(health_hourly.c.hour, *cols)
                    .where(
                        health_hourly.c.gateway_id == gateway_id,
                        health_hourly.c.hour >= since - 3600,
                        health_hourly.c.hour < until,
                    )
                    .order_by(health_hourly.c.hour)
                )
            ).all()
            raw = (
                await conn.execute(
                    sa.select(health_reports.c.ts, *raw_cols)
                    .where(
                        health_reports.c.gateway_id == gateway_id,
                        health_reports.c.ts >= since,
                        health_reports.c.ts < until,
                    )
                    .order_by(health_reports.c.ts)
                )
            ).all()
        names = list(HEALTH_FIGURES)
        out = [HealthPoint(r[0] + 1800, dict(zip(names, r[1:], strict=True))) for r in hourly]
        out += [HealthPoint(r[0], dict(zip(names, r[1:], strict=True))) for r in raw]
        return out

    async def downsample(
        self, *, now: datetime, raw_retention: timedelta, hourly_retention: timedelta
    ) -> int:
        """Fold raw reports older than the raw retention into hourly averages; drop what
        is older than the hourly retention. Returns the raw reports folded."""
        cutoff = (now - raw_retention).timestamp()
        cutoff -= cutoff % 3600  # whole hours only, so no hour is folded twice
        hour = sa.func.floor(health_reports.c.ts / 3600) * 3600
        async with write_transaction(self.engine) as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        health_reports.c.gateway_id,
                        hour.label("hour"),
                        sa.func.count().label("n"),
                        *(
                            sa.func.avg(getattr(health_reports.c, n)).label(n)
                            for n in HEALTH_FIGURES
                        ),
                    )
                    .where(health_reports.c.ts < cutoff)
                    .group_by(health_reports.c.gateway_id, hour)
                )
            ).all()
            if rows:
                folded = {
                    (r.gateway_id, float(r.hour)): {
                        "gateway_id": r.gateway_id,
                        "hour": float(r.hour),
                        "reports": int(r.n),
                        **{n: getattr(r, n) for n in HEALTH_FIGURES},
                    }
                    for r in rows
                }
                # A report that arrived late may fall in an hour folded before: merge with it.
                earlier = (
                    await conn.execute(
                        sa.select(health_hourly).where(
                            health_hourly.c.hour.in_({hour for _, hour in folded})
                        )
                    )
                ).all()
                for old in earlier:
                    new = folded.get((old.gateway_id, old.hour))
                    if new is None:
                        continue
                    await conn.execute(
                        health_hourly.delete().where(
                            health_hourly.c.gateway_id == old.gateway_id,
                            health_hourly.c.hour == old.hour,
                        )
                    )
                    for n in HEALTH_FIGURES:
                        new[n] = _merge(getattr(old, n), old.reports, new[n], new["reports"])
                    new["reports"] += old.reports
                await conn.execute(health_hourly.insert(), list(folded.values()))
                await conn.execute(health_reports.delete().where(health_reports.c.ts < cutoff))
            await conn.execute(
                health_hourly.delete().where(
                    health_hourly.c.hour < (now - hourly_retention).timestamp()
                )
            )
            await conn.execute(
                gateway_logs.delete().where(
                    gateway_logs.c.ts < (now - hourly_retention).timestamp()
                )
            )
        return sum(int(r.n) for r in rows)

    async def set_preflight(self, gateway_id: str, ts: float, report: dict[str, Any]) -> None:
        status = str(report.get("status", "unknown"))[:16]
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                gateway_preflight.delete().where(gateway_preflight.c.gateway_id == gateway_id)
            )
            await conn.execute(
                gateway_preflight.insert(),
                [{"gateway_id": gateway_id, "ts": ts, "status": status, "report": report}],
            )

    async def preflight(self, gateway_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(gateway_preflight).where(gateway_preflight.c.gateway_id == gateway_id)
                )
            ).one_or_none()
        if row is None:
            return None
        return {"ts": row.ts, "status": row.status, "report": row.report}

    async def add_logs(self, gateway_id: str, records: list[dict[str, Any]]) -> int:
        """Store *records*, skipping any this gateway already stored (same time, source and
        message): a batch sent again after its ack was lost. Returns how many were new."""
        if not records:
            return 0
        async with write_transaction(self.engine) as conn:
            stored = {
                (r.ts, r.source, r.message)
                for r in await conn.execute(
                    sa.select(gateway_logs.c.ts, gateway_logs.c.source, gateway_logs.c.message)
                    .where(gateway_logs.c.gateway_id == gateway_id)
                    .where(gateway_logs.c.ts.in_({r["ts"] for r in records}))
                )
            }
            new = [r for r in records if (r["ts"], r["source"], r["message"]) not in stored]
            if new:
                await conn.execute(
                    gateway_logs.insert(), [{"gateway_id": gateway_id, **r} for r in new]
                )
        return len(new)

    async def logs(
        self,
        gateway_id: str,
        *,
        after: float | None = None,
        level: str | None = None,
        limit: int = 200,
        include_customer_data: bool = True,
    ) -> list[LogRow]:
        q = sa.select(gateway_logs).where(gateway_logs.c.gateway_id == gateway_id)
        if after is not None:
            q = q.where(gateway_logs.c.ts > after)
        if level is not None:
            q = q.where(gateway_logs.c.level.in_(_LEVELS_FROM.get(level, (level,))))
        if not include_customer_data:
            q = q.where(gateway_logs.c.customer_data.is_(False))
        if after is None:
            q = q.order_by(gateway_logs.c.ts.desc()).limit(limit)
        else:
            q = q.order_by(gateway_logs.c.ts).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        out = [LogRow(r.ts, r.level, r.source, r.message, r.customer_data, r.fields) for r in rows]
        return sorted(out, key=lambda r: r.ts)


#: Log levels, lowest first: a query for one level finds it and every level above it.
LOG_LEVELS: Final = LOG_LEVEL_NAMES
_LEVELS_FROM = {lvl: LOG_LEVELS[i:] for i, lvl in enumerate(LOG_LEVELS)}
