"""The console's pages: fleet, gateway, network requirements, enrollment, audit, users, account.

Pages are server-rendered; the parts that change (a gateway's state, its commands, its points)
are templates of their own, served again as JSON by each page's ``…/live`` route, which the
page's small script polls to swap them in place. Without the script the pages still work: each
form posts, the console runs the operator API's own handler for it, then redirects back.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from aiohttp import web

from tether.cloud import accounts as acc
from tether.cloud import api
from tether.cloud.console import charts, network
from tether.cloud.console.pages import (
    DASH,
    PREFIX,
    ApiRefused,
    ConsoleRoute,
    Ctx,
    call_api,
    json_response,
)
from tether.cloud.store.health import HEALTH_FIGURES, figure, health_reports
from tether.cloud.store.records import ROLES, CommandRecord, GatewayRecord
from tether.cloud.store.store import AuditFilter, AuditFilterInvalid
from tether.cloud.store.telemetry import observations
from tether.protocol.commands import DIAGNOSTIC_COMMAND_KINDS, FINAL_STATES

__all__ = ["ROUTES", "gateway_alerts"]

_FINAL = {s.value for s in FINAL_STATES}
CERT_WARNING: Final = timedelta(days=14)
SPARK_WINDOW: Final = 900.0  # seconds of values behind each sparkline
COMMAND_KINDS: Final = ("ping", "metrics", "set-config", "restart-service", "reboot", "shutdown")
TTL_CHOICES: Final = (
    ("60", "1 minute"),
    ("600", "10 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
)
TIERS: Final = {"ws": "WebSocket", "longpoll": "HTTPS long-poll", "poll": "periodic poll"}


# --- fleet ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    level: str  # "bad", "warn" or "info"
    text: str


@dataclass(frozen=True, slots=True)
class GatewayRow:
    gateway: GatewayRecord
    status: str  # "linked", "offline" or "revoked"
    alerts: tuple[Alert, ...]
    spool: float | None = None  # observations waiting on the gateway, from its last report

    @property
    def tier(self) -> str:
        return TIERS.get(self.gateway.tier or "", self.gateway.tier or DASH)

    @property
    def search(self) -> str:
        g = self.gateway
        return " ".join(
            x for x in (g.gateway_id, g.name, self.status, self.tier, g.agent_version, g.peer) if x
        ).lower()


#: Health figures that raise an alert at or above this level (percent).
HEALTH_LIMITS: Final = {"cpu_percent": "CPU", "memory_percent": "memory", "disk_percent": "disk"}
HEALTH_ALERT: Final = 90.0


def gateway_alerts(
    g: GatewayRecord, now: datetime, figures: dict[str, float | None] | None = None
) -> tuple[Alert, ...]:
    """What needs a person's attention: from the gateway's record and its last health report."""
    if g.revoked:
        return (Alert("bad", "revoked"),)
    alerts: list[Alert] = []
    for key, name in HEALTH_LIMITS.items():
        value = (figures or {}).get(key)
        if value is not None and value >= HEALTH_ALERT:
            alerts.append(Alert("warn", f"{name} {value:.0f} %"))
    dropped = (figures or {}).get("spool_dropped")
    if dropped:
        alerts.append(Alert("bad", f"{dropped:.0f} observations dropped"))
    if not g.linked:
        if g.last_seen is None:
            alerts.append(Alert("warn", "never linked"))
        else:
            quiet = now - g.last_seen
            level = "bad" if quiet > timedelta(hours=1) else "warn"
            alerts.append(Alert(level, f"offline for {_span(quiet)}"))
    if g.cert_not_after is not None:
        left = g.cert_not_after - now
        if left <= timedelta(0):
            alerts.append(Alert("bad", "certificate expired"))
        elif left <= CERT_WARNING:
            alerts.append(Alert("warn", f"certificate expires in {_span(left)}"))
    return tuple(alerts)


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _status(g: GatewayRecord) -> str:
    return "revoked" if g.revoked else "linked" if g.linked else "offline"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """An agent version in the order releases come: 0.10.0 after 0.9.2 (numbers as numbers)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+-]", version)
    )


def _alert_weight(r: GatewayRow) -> tuple[int, int, int]:
    levels = [a.level for a in r.alerts]
    return levels.count("bad"), levels.count("warn"), len(levels)


_STATUS_RANK: Final = {"offline": 0, "linked": 1, "revoked": 2}
_TIER_RANK: Final = {"ws": 0, "longpoll": 1, "poll": 2}


@dataclass(frozen=True, slots=True)
class FleetColumn:
    """A column of the fleet table that sorts: its ``sort`` value, its header, the order a
    first click asks for, and the value rows sort by (None: no value, listed last either way)."""

    key: str
    label: str
    first: str  # "asc" or "desc"
    value: Callable[[GatewayRow, datetime], Any]
    css: str = ""
    title: str = ""


FLEET_COLUMNS: Final = {
    c.key: c
    for c in (
        FleetColumn("name", "Gateway", "asc", lambda r, now: r.gateway.name.casefold()),
        FleetColumn("state", "State", "asc", lambda r, now: _STATUS_RANK[r.status]),
        FleetColumn("tier", "Tier", "asc", lambda r, now: _TIER_RANK.get(r.gateway.tier or "")),
        FleetColumn(
            "last_seen",
            "Last seen",
            "asc",  # the longest silent first
            lambda r, now: now if r.status == "linked" else r.gateway.last_seen,
        ),
        FleetColumn(
            "agent",
            "Agent",
            "asc",  # the oldest agents first
            lambda r, now: (
                None if not r.gateway.agent_version else _version_key(r.gateway.agent_version)
            ),
        ),
        FleetColumn(
            "spool",
            "Spool",
            "desc",  # the fullest first
            lambda r, now: r.spool,
            css="num",
            title="Observations waiting on the gateway",
        ),
        FleetColumn("cert", "Certificate", "asc", lambda r, now: r.gateway.cert_not_after),
        FleetColumn("alerts", "Alerts", "desc", lambda r, now: _alert_weight(r)),
    )
}
#: The fleet's order when none is asked for: offline gateways first, then linked, then revoked.
FLEET_SORT: Final = "state"


def fleet_order(query: Mapping[str, str]) -> tuple[str, str]:
    """The (column, "asc" | "desc") a request asks for; the default for what is not a column."""
    sort = query.get("sort", "")
    if sort not in FLEET_COLUMNS:
        sort = FLEET_SORT
    order = query.get("order", "")
    if order not in ("asc", "desc"):
        order = FLEET_COLUMNS[sort].first
    return sort, order


def sort_fleet(rows: list[GatewayRow], sort: str, order: str, now: datetime) -> list[GatewayRow]:
    """*rows* by column *sort* in *order*; equal values by name then id, and rows without a
    value (never seen, no agent version, no health report…) last, in either order."""
    column = FLEET_COLUMNS[sort]
    by_name = sorted(rows, key=lambda r: (r.gateway.name.casefold(), r.gateway.gateway_id))
    valued = [(column.value(r, now), r) for r in by_name]
    present = [(v, r) for v, r in valued if v is not None]
    present.sort(key=lambda pair: pair[0], reverse=order == "desc")  # stable: names stay in order
    return [r for _, r in present] + [r for v, r in valued if v is None]


@dataclass(frozen=True, slots=True)
class SortHeader:
    """A header of the fleet table: a link that sorts by its column (or turns the order over)."""

    label: str
    href: str
    aria_sort: str | None  # "ascending" or "descending" on the sorted column only
    css: str
    title: str


def _sort_headers(sort: str, order: str, kept: dict[str, str]) -> list[SortHeader]:
    headers = []
    for column in FLEET_COLUMNS.values():
        current = column.key == sort
        ask = ("desc" if order == "asc" else "asc") if current else column.first
        query = urlencode({**kept, "sort": column.key, "order": ask})
        headers.append(
            SortHeader(
                label=column.label,
                href=f"{PREFIX}/?{query}",
                aria_sort=("ascending" if order == "asc" else "descending") if current else None,
                css=column.css,
                title=column.title,
            )
        )
    return headers


async def _fleet(ctx: Ctx) -> dict[str, Any]:
    now = datetime.now(UTC)
    health = await ctx.state.health.store.latest_all()
    rows = [
        GatewayRow(
            gateway=g,
            status=_status(g),
            alerts=gateway_alerts(g, now, health.get(g.gateway_id)),
            spool=health.get(g.gateway_id, {}).get("spool_depth"),
        )
        for g in await ctx.state.store.list_gateways()
    ]
    sort, order = fleet_order(ctx.request.query)
    rows = sort_fleet(rows, sort, order, now)
    counts = {s: sum(r.status == s for r in rows) for s in ("linked", "offline", "revoked")}
    q = ctx.request.query.get("q", "").strip().lower()
    status = ctx.request.query.get("status", "")
    shown = [
        r
        for r in rows
        if (not q or all(word in r.search for word in q.split()))
        and (not status or r.status == status)
    ]
    kept = {k: v for k, v in (("q", ctx.request.query.get("q", "")), ("status", status)) if v}
    return {
        "rows": shown,
        "total": len(rows),
        "counts": counts,
        "alerting": sum(bool(r.alerts) for r in rows),
        "q": ctx.request.query.get("q", ""),
        "status": status,
        "sort": sort,
        "order": order,
        "sort_label": FLEET_COLUMNS[sort].label,
        "headers": _sort_headers(sort, order, kept),
        "now": now,
    }


async def fleet_page(ctx: Ctx) -> web.StreamResponse:
    return ctx.page("fleet.html", nav="fleet", title="Fleet", **await _fleet(ctx))


async def fleet_live(ctx: Ctx) -> web.StreamResponse:
    data = await _fleet(ctx)
    return json_response(
        {
            "regions": {
                "fleet-summary": ctx.fragment("_fleet_summary.html", **data),
                "fleet-rows": ctx.fragment("_fleet_rows.html", **data),
            }
        }
    )


# --- one gateway ----------------------------------------------------------------------------


@dataclass(slots=True)
class PointView:
    point_id: str
    name: str
    kind: str
    unit: str
    writable: bool
    last_ts: float | None
    last_value: float | str | None
    spark: Any = None


@dataclass(slots=True)
class DeviceView:
    device_id: str
    name: str
    kind: str
    model: str
    location: str
    points: list[PointView] = field(default_factory=list)


async def _recent_values(
    ctx: Ctx, gateway_id: str, point_ids: list[str], since: float
) -> dict[str, list[tuple[float, float]]]:
    """Numeric values of the points since *since*, per point, oldest first (one query)."""
    if not point_ids:
        return {}
    o = observations.c
    query = (
        sa.select(o.point_id, o.ts, o.value_num)
        .where(
            o.gateway_id == gateway_id,
            o.point_id.in_(point_ids),
            o.ts >= since,
            o.value_num.is_not(None),
        )
        .order_by(o.point_id, o.ts)
        .limit(200 * len(point_ids))
    )
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    async with ctx.state.telemetry.engine.connect() as conn:
        for point_id, ts, value in await conn.execute(query):
            if value is not None and math.isfinite(value):
                out[point_id].append((float(ts), float(value)))
    return out


async def _devices(ctx: Ctx, gateway_id: str) -> list[DeviceView]:
    telemetry = ctx.state.telemetry
    devices = {
        d["device_id"]: DeviceView(
            device_id=d["device_id"],
            name=d["name"],
            kind=d["kind"],
            model=d["model"],
            location=d["location"],
        )
        for d in await telemetry.list_devices(gateway_id)
    }
    points = await telemetry.list_points(gateway_id)
    numeric = [p.point_id for p in points if p.kind != "text"]
    series = await _recent_values(
        ctx, gateway_id, numeric, datetime.now(UTC).timestamp() - SPARK_WINDOW
    )
    for p in points:
        view = PointView(
            point_id=p.point_id,
            name=p.name,
            kind=p.kind,
            unit=p.unit,
            writable=p.writable,
            last_ts=p.last_ts,
            last_value=p.last_value,
        )
        if p.point_id in series or p.kind != "text":
            view.spark = charts.sparkline(
                series.get(p.point_id, []),
                width=96,
                height=24,
                step=p.kind == "boolean",
                label=p.name,
                unit=p.unit,
            )
        device = devices.get(p.device_id)
        if device is None:
            device = devices[p.device_id] = DeviceView(p.device_id, p.device_id, "", "", "")
        device.points.append(view)
    return list(devices.values())


def _latest_metrics(commands: list[CommandRecord]) -> CommandRecord | None:
    for c in commands:
        if c.kind == "metrics" and c.state.value == "succeeded" and c.result:
            return c
    return None


def _result_summary(c: CommandRecord) -> str:
    if c.error:
        return c.error
    result = c.result
    if not result:
        return ""
    if c.kind == "ping" and result.get("pong"):
        version = result.get("agent_version")
        return f"pong from agent {version}" if version else "pong"
    if c.kind == "metrics":
        parts = []
        for key, label in (("cpu_percent", "CPU"),):
            if isinstance(result.get(key), int | float):
                parts.append(f"{label} {result[key]:.0f} %")
        memory = result.get("memory")
        if isinstance(memory, dict) and isinstance(memory.get("percent"), int | float):
            parts.append(f"memory {memory['percent']:.0f} %")
        return ", ".join(parts)
    text = ", ".join(f"{k}: {v}" for k, v in list(result.items())[:3])
    return text[:120]


def _duration(c: CommandRecord) -> str:
    if c.finished_at is None:
        return ""
    ms = (c.finished_at - c.created_at).total_seconds() * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.0f} s"


HEALTH_WINDOW: Final = 86400.0  # seconds of health history in the charts
LOG_LINES: Final = 40


async def _gateway(ctx: Ctx, gateway_id: str, regions: set[str] | None) -> dict[str, Any]:
    """The gateway page's data; with *regions*, only what those regions need."""

    def wanted(name: str) -> bool:
        return regions is None or name in regions

    state = ctx.state
    record = await state.store.get_gateway(gateway_id)
    if record is None:
        raise web.HTTPNotFound()
    now = datetime.now(UTC)
    latest = await state.health.store.latest(gateway_id)
    figures = None
    if latest is not None:
        figures = {name: figure(latest, path) for name, path in HEALTH_FIGURES.items()}
    data: dict[str, Any] = {
        "g": record,
        "status": _status(record),
        "alerts": gateway_alerts(record, now, figures),
        "tier_name": TIERS.get(record.tier or "", record.tier or DASH),
        "now": now,
        "sent": ctx.request.query.get("sent", ""),
        "can_command": ctx.can("command"),
        "diagnostic_kinds": DIAGNOSTIC_COMMAND_KINDS,
        "report": latest,
    }
    data.update(await _support_access(ctx, record, now, full=regions is None))
    if wanted("gw-status"):
        data["link"] = await state.links.get(gateway_id)
        data["identity"] = _identity(await _latest_identity(ctx, gateway_id))
    if wanted("gw-commands") or wanted("gw-health"):
        commands = await state.store.list_commands(gateway_id=gateway_id, limit=20)
        data["commands"] = commands
        data["summaries"] = {c.command_id: _result_summary(c) for c in commands}
        data["durations"] = {c.command_id: _duration(c) for c in commands}
        data["final"] = _FINAL
    if wanted("gw-health"):
        data.update(await _health(ctx, gateway_id, latest, data["commands"]))
    # Devices, points and their values are the customer's building data: a role that needs a
    # support grant sees them only under one for this gateway (the API says the same).
    data["data_hidden"] = data["needs_grant"] and data["my_grant"] is None
    if wanted("gw-points"):
        data["devices"] = [] if data["data_hidden"] else await _devices(ctx, gateway_id)
    if wanted("gw-streams"):
        data["streams"] = await state.telemetry.streams(gateway_id)
    if wanted("gw-logs"):
        data["logs"] = list(
            reversed(
                await state.health.store.logs(
                    gateway_id, limit=LOG_LINES, include_customer_data=ctx.user.role != "support"
                )
            )
        )
    if wanted("gw-preflight"):
        data["preflight"] = await state.health.store.preflight(gateway_id)
    if regions is None:
        data["config"] = await state.service.config.all_for(gateway_id)
    return data


#: Who may give a support grant, as the console says it ("an admin or operator").
GRANTERS: Final = " or ".join(role for role in ROLES if role in api.PERMISSIONS["grant"])


async def _support_access(
    ctx: Ctx, g: GatewayRecord, now: datetime, *, full: bool
) -> dict[str, Any]:
    """Who may diagnose the gateway: a support role only under its own grant for it (which
    it is shown), the others by their role. With *full*, what the page's "Support access"
    card needs: the grants that count now, and the support users one may be given to."""
    needs_grant = api.needs_grant(ctx.user.role)
    my_grant = None
    if needs_grant:
        my_grant = await ctx.state.store.active_support_grant(
            gateway_id=g.gateway_id,
            username=ctx.user.username,
            scope=api.DIAGNOSE_SCOPE,
            now=now,
        )
    data: dict[str, Any] = {
        "needs_grant": needs_grant,
        "my_grant": my_grant,
        # Support sends and cancels only the diagnostic kinds (ping, metrics), under a grant.
        "can_diagnose": ctx.can("command") or (ctx.can("diagnose") and my_grant is not None),
        "granters": GRANTERS,
    }
    if full and ctx.can("grant"):
        data["grants"] = await ctx.state.store.list_support_grants(
            gateway_id=g.gateway_id, active_at=now
        )
        data["support_users"] = [
            u.username
            for u in await ctx.accounts.users.list_users()
            if api.needs_grant(u.role) and not u.disabled
        ]
    return data


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _section(report: dict[str, Any] | None, *path: str) -> dict[str, Any]:
    value: Any = report or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


async def _latest_identity(ctx: Ctx, gateway_id: str) -> dict[str, Any] | None:
    """The newest report that carried the network identity (sent when it changes)."""
    r = health_reports.c
    query = (
        sa.select(r.data)
        .where(r.gateway_id == gateway_id, r.data["network_identity"].as_string().is_not(None))
        .order_by(r.ts.desc())
        .limit(1)
    )
    async with ctx.state.telemetry.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return dict(row.data) if row is not None else None


def _identity(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """Host name and interfaces (loopback left out) from the latest health report."""
    identity = _section(report, "network_identity")
    if not identity:
        return None
    interfaces = [
        {
            "name": name,
            "mac": info.get("mac") or "",
            "addresses": [*info.get("ipv4", []), *info.get("ipv6", [])],
            "up": bool(info.get("up")),
        }
        for name, info in sorted(_section(identity, "interfaces").items())
        if isinstance(info, dict) and name != "lo"
    ]
    interfaces.sort(key=lambda i: (not i["up"], i["name"]))
    return {"hostname": identity.get("hostname") or "", "interfaces": interfaces}


async def _health(
    ctx: Ctx, gateway_id: str, latest: dict[str, Any] | None, commands: list[CommandRecord]
) -> dict[str, Any]:
    """Gauges of the latest report (or of a ``metrics`` result), and charts over a day."""
    out: dict[str, Any] = {"charts": [], "gauges": [], "metrics": None, "facts": []}
    if latest is not None:
        system = _section(latest, "system")
        out["gauges"] = [
            charts.gauge(_num(system.get("cpu_percent")), label="CPU"),
            charts.gauge(_num(_section(system, "memory").get("percent")), label="Memory"),
            charts.gauge(_num(_section(system, "disk").get("percent")), label="Disk"),
        ]
        spool = _section(latest, "spool")
        uploader = _section(latest, "uploader")
        clock = _section(latest, "time")
        out["facts"] = [
            ("Spool", f"{_count(spool.get('observations'))} observations waiting"),
            ("Dropped on the gateway", _count(spool.get("dropped"))),
            ("Uploaded", f"{_count(uploader.get('observations_acked'))} observations acknowledged"),
            (
                "Clock",
                "NTP synchronized" if clock.get("ntp_synchronized") else "not NTP synchronized",
            ),
        ]
        since = datetime.now(UTC).timestamp() - HEALTH_WINDOW
        series = await ctx.state.health.store.series(gateway_id, since=since)

        def line(name: str) -> list[tuple[float, float]]:
            return [(p.ts, v) for p in series if (v := p.figures.get(name)) is not None]

        out["charts"] = [
            charts.line_chart(
                {
                    "CPU": line("cpu_percent"),
                    "memory": line("memory_percent"),
                    "disk": line("disk_percent"),
                },
                title="CPU, memory and disk",
                unit="%",
                y_max=100.0,
            ),
            charts.line_chart(
                {"waiting": line("spool_depth"), "dropped": line("spool_dropped")},
                title="Spool (observations)",
            ),
        ]
        if line("net_rx_bps") or line("net_tx_bps"):
            out["charts"].append(
                charts.line_chart(
                    {"received": line("net_rx_bps"), "sent": line("net_tx_bps")},
                    title="Network (bytes/s)",
                )
            )
        if line("temperature_max"):
            out["charts"].append(
                charts.line_chart(
                    {"hottest": line("temperature_max")}, title="Temperature", unit="°C"
                )
            )
    else:
        metrics = _latest_metrics(commands)
        out["metrics"] = metrics
        out["gauges"] = _gauges(metrics)
    return out


def _gauges(metrics: CommandRecord | None) -> list[Any]:
    """Gauges from a ``metrics`` command's result (before any health report arrived)."""
    if metrics is None or not metrics.result:
        return []
    result: dict[str, Any] = dict(metrics.result)
    return [
        charts.gauge(_num(result.get("cpu_percent")), label="CPU"),
        charts.gauge(_num(_section(result, "memory").get("percent")), label="Memory"),
        charts.gauge(_num(_section(result, "disk").get("percent")), label="Disk"),
    ]


def _count(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:,.0f}"


_GATEWAY_REGIONS: Final = {
    "gw-status": "_gateway_status.html",
    "gw-commands": "_gateway_commands.html",
    "gw-health": "_gateway_health.html",
    "gw-points": "_gateway_points.html",
    "gw-streams": "_gateway_streams.html",
    "gw-logs": "_gateway_logs.html",
    "gw-preflight": "_gateway_preflight.html",
}


async def gateway_page(ctx: Ctx) -> web.StreamResponse:
    gateway_id = ctx.request.match_info["gateway_id"]
    try:
        data = await _gateway(ctx, gateway_id, None)
    except web.HTTPNotFound:
        return ctx.page(
            "error.html",
            code=404,
            title="Unknown gateway",
            message=f"There is no gateway {gateway_id!r}.",
        )
    return ctx.page(
        "gateway.html",
        nav="fleet",
        title=data["g"].name,
        kinds=_kinds(ctx),
        ttls=TTL_CHOICES,
        form_error=None,
        form={"kind": "ping", "args": "{}", "ttl": "3600"},
        grant_error=None,
        grant_form=GRANT_FORM,
        **data,
    )


async def gateway_live(ctx: Ctx) -> web.StreamResponse:
    gateway_id = ctx.request.match_info["gateway_id"]
    asked = set(ctx.request.query.get("regions", "").split(",")) & set(_GATEWAY_REGIONS)
    regions = asked or set(_GATEWAY_REGIONS)
    try:
        data = await _gateway(ctx, gateway_id, regions)
    except web.HTTPNotFound:
        return json_response({"error": "no such gateway"}, status=404)
    return json_response(
        {"regions": {n: ctx.fragment(_GATEWAY_REGIONS[n], **data) for n in sorted(regions)}}
    )


async def _form(ctx: Ctx) -> dict[str, str]:
    form = await ctx.request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _kinds(ctx: Ctx) -> tuple[str, ...]:
    """The command kinds offered to this user: all, or the diagnostic ones alone."""
    if ctx.can("command"):
        return COMMAND_KINDS
    return tuple(k for k in COMMAND_KINDS if k in DIAGNOSTIC_COMMAND_KINDS)


async def send_command(ctx: Ctx) -> web.StreamResponse:
    gateway_id = ctx.request.match_info["gateway_id"]
    form = await _form(ctx)
    kind = form.get("kind", "").strip()
    raw_args = form.get("args", "").strip() or "{}"
    ttl = form.get("ttl", "3600")
    error = None
    try:
        ttl_seconds = float(ttl)
    except ValueError:
        ttl_seconds = math.nan
    if not math.isfinite(ttl_seconds):
        error, status = "Expires after: a number of seconds.", 400
    else:
        try:
            args = json.loads(raw_args)
            if not isinstance(args, dict):
                raise ValueError('arguments must be a JSON object, e.g. {"log_level": "debug"}')
            body = {"kind": kind, "args": args, "ttl_seconds": ttl_seconds}
            command = await call_api(ctx, api.send_command, body, gateway_id=gateway_id)
        except ValueError as exc:
            error, status = f"Arguments: {exc}", 400
        except ApiRefused as exc:
            error, status = exc.args[0], exc.status
    if error is None:
        raise web.HTTPSeeOther(
            location=f"{PREFIX}/gateways/{gateway_id}?sent={command.id}#commands"
        )
    return await _gateway_with_error(
        ctx, gateway_id, error, status, form={"kind": kind, "args": raw_args, "ttl": ttl}
    )


async def _gateway_with_error(
    ctx: Ctx,
    gateway_id: str,
    error: str,
    status: int,
    *,
    form: dict[str, str] | None = None,
    grant_form: dict[str, str] | None = None,
) -> web.Response:
    """The gateway page again after a refused action, the refusal shown where it was asked:
    above its commands, or with *grant_form*, in its "Support access" card."""
    try:
        data = await _gateway(ctx, gateway_id, None)
    except web.HTTPNotFound:
        return ctx.page("error.html", code=404, title="Unknown gateway", message=error)
    return ctx.page(
        "gateway.html",
        code=status,
        nav="fleet",
        title=data["g"].name,
        kinds=_kinds(ctx),
        ttls=TTL_CHOICES,
        form_error=error if grant_form is None else None,
        form=form or {"kind": "ping", "args": "{}", "ttl": "3600"},
        grant_error=error if grant_form is not None else None,
        grant_form=grant_form or GRANT_FORM,
        **data,
    )


async def cancel_command(ctx: Ctx) -> web.StreamResponse:
    command_id = ctx.request.match_info["command_id"]
    record = await ctx.state.store.get_command(command_id)
    if record is None:
        raise web.HTTPNotFound()
    try:
        await call_api(ctx, api.cancel_command, command_id=command_id)
    except ApiRefused as exc:  # it moved on meanwhile: say so, and show where it is now
        now = await ctx.state.store.get_command(command_id)
        state = (now or record).state.value
        return await _gateway_with_error(
            ctx,
            record.gateway_id,
            f"{record.kind} was not cancelled: it is already {state} ({exc}).",
            exc.status,
        )
    raise web.HTTPSeeOther(location=f"{PREFIX}/gateways/{record.gateway_id}#commands")


#: The "Support access" form's fields as the page first shows them.
GRANT_FORM: Final = {"user": "", "hours": "4", "reason": ""}


async def grant_support(ctx: Ctx) -> web.StreamResponse:
    """Give a support user access to this gateway for some hours (the API's handler)."""
    gateway_id = ctx.request.match_info["gateway_id"]
    form = await _form(ctx)
    kept = {name: form.get(name, default).strip() for name, default in GRANT_FORM.items()}
    try:
        hours = float(kept["hours"])
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours):
        return await _gateway_with_error(
            ctx, gateway_id, "Hours: a number of hours.", 400, grant_form=kept
        )
    body = {"user": kept["user"], "hours": hours, "reason": kept["reason"]}
    try:
        await call_api(ctx, api.create_support_grant, body, gateway_id=gateway_id)
    except ApiRefused as exc:
        return await _gateway_with_error(ctx, gateway_id, str(exc), exc.status, grant_form=kept)
    raise web.HTTPSeeOther(location=f"{PREFIX}/gateways/{quote(gateway_id, safe='')}#support")


async def revoke_support_grant(ctx: Ctx) -> web.StreamResponse:
    """End a support grant before its time; back to its gateway's page."""
    grant_id = ctx.request.match_info["grant_id"]
    grant = await ctx.state.store.get_support_grant(grant_id)
    if grant is None:
        raise web.HTTPNotFound()
    try:
        await call_api(ctx, api.revoke_support_grant, grant_id=grant_id)
    except ApiRefused as exc:
        return await _gateway_with_error(
            ctx, grant.gateway_id, str(exc), exc.status, grant_form=dict(GRANT_FORM)
        )
    location = f"{PREFIX}/gateways/{quote(grant.gateway_id, safe='')}#support"
    raise web.HTTPSeeOther(location=location)


async def revoke_gateway(ctx: Ctx) -> web.StreamResponse:
    gateway_id = ctx.request.match_info["gateway_id"]
    try:
        await call_api(ctx, api.revoke_gateway, gateway_id=gateway_id)
    except ApiRefused as exc:
        return ctx.page("error.html", code=exc.status, title="Not revoked", message=str(exc))
    raise web.HTTPSeeOther(location=f"{PREFIX}/gateways/{gateway_id}")


# --- network requirements -------------------------------------------------------------------


async def network_page(ctx: Ctx) -> web.StreamResponse:
    try:
        deployment = network.deployment_manifest(ctx.state.settings, ctx.state.ca)
    except network.SettingsError as exc:
        return ctx.page(
            "error.html",
            code=500,
            title="No manifest",
            message=f"The cloud's settings do not describe a deployment: {exc}",
        )
    rules = network.rule_files(deployment.manifest)
    return ctx.page(
        "network.html",
        nav="network",
        title="Network requirements",
        manifest=deployment.manifest,
        note=deployment.note,
        body=network.document_body(deployment.manifest),
        documents=network.DOCUMENT_FORMATS,
        rules=rules,
    )


async def network_document(ctx: Ctx) -> web.StreamResponse:
    fmt = ctx.request.match_info["fmt"]
    if fmt not in network.DOCUMENT_FORMATS:
        raise web.HTTPNotFound()
    manifest = network.deployment_manifest(ctx.state.settings, ctx.state.ca).manifest
    text = network.render_document(manifest, fmt)
    return _download(text, f"tether-network-requirements-{manifest.version}.{fmt}", fmt)


async def network_rules(ctx: Ctx) -> web.StreamResponse:
    fmt = ctx.request.match_info["fmt"]
    name = ctx.request.match_info["name"]
    if fmt not in network.RULE_FORMATS:
        raise web.HTTPNotFound()
    manifest = network.deployment_manifest(ctx.state.settings, ctx.state.ca).manifest
    files = dict(network.build_rules(manifest, fmt).files)
    if name not in files:
        raise web.HTTPNotFound()
    return _download(files[name], name, None)


def _download(text: str, filename: str, fmt: str | None) -> web.Response:
    content_type = network.DOCUMENT_TYPES.get(fmt or "", "text/plain; charset=utf-8")
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in filename)
    response = web.Response(
        body=text.encode("utf-8"),
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{safe}"',
        },
    )
    return response


# --- enrollment tokens ----------------------------------------------------------------------


async def _tokens_page(
    ctx: Ctx, *, created: Any = None, error: str | None = None, status: int = 200
) -> web.Response:
    now = datetime.now(UTC)
    tokens = await ctx.state.store.list_enrollment_tokens()
    return ctx.page(
        "tokens.html",
        code=status,
        nav="tokens",
        title="Enrollment tokens",
        tokens=tokens,
        created=created,
        error=error,
        now=now,
        default_hours=int(ctx.state.settings.enrollment_token_ttl.total_seconds() // 3600) or 1,
    )


async def tokens_page(ctx: Ctx) -> web.StreamResponse:
    return await _tokens_page(ctx)


async def create_token(ctx: Ctx) -> web.StreamResponse:
    form = await _form(ctx)
    name = form.get("name", "").strip() or None
    try:
        hours = float(form.get("hours", "24") or "24")
        if not 1 <= hours <= 720:  # also refuses NaN
            raise ValueError
    except ValueError:
        return await _tokens_page(ctx, error="Valid for: 1 to 720 hours.", status=400)
    try:
        created = await call_api(ctx, api.create_token, {"name": name, "ttl_seconds": hours * 3600})
    except ApiRefused as exc:
        return await _tokens_page(ctx, error=str(exc), status=exc.status)
    return await _tokens_page(ctx, created=created)


async def revoke_token(ctx: Ctx) -> web.StreamResponse:
    token_id = ctx.request.match_info["enrollment_token_id"]
    try:
        await call_api(ctx, api.revoke_token, enrollment_token_id=token_id)
    except ApiRefused as exc:
        return await _tokens_page(ctx, error=str(exc), status=exc.status)
    raise web.HTTPSeeOther(location=f"{PREFIX}/tokens")


# --- audit ----------------------------------------------------------------------------------


#: Audit entries on one page of the console.
AUDIT_PAGE: Final = 100


def _form_time(at: datetime | None) -> str:
    """A time as a ``datetime-local`` field holds it (the console's times are UTC)."""
    if at is None:
        return ""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S" if at.second else "%Y-%m-%dT%H:%M")


async def audit_page(ctx: Ctx) -> web.StreamResponse:
    """The audit log, newest first, a page at a time, filtered by the server: times without
    an offset are UTC, as every time the console shows."""
    query = ctx.request.query
    try:
        before = int(query.get("before", "0"))
    except ValueError:
        before = 0
    error = None
    try:
        where = AuditFilter.from_query(query, assume=UTC)
    except AuditFilterInvalid as exc:
        where, error = AuditFilter(), str(exc)
    form = {name: query.get(name, "").strip() for name in ("actor", "action", "target")}
    form |= {"since": _form_time(where.since), "until": _form_time(where.until)}
    entries = []
    if error is None:
        entries = await ctx.accounts.users.audit_before(
            before_id=before if before > 0 else None, limit=AUDIT_PAGE + 1, where=where
        )
    more = len(entries) > AUDIT_PAGE
    entries = entries[:AUDIT_PAGE]
    kept = where.query_items()  # what every link of the page keeps: the filters, in UTC
    return ctx.page(
        "audit.html",
        code=400 if error else 200,
        nav="audit",
        title="Audit log",
        entries=entries,
        error=error,
        form=form,
        filtered=where.narrowed or error is not None,
        newest=f"{PREFIX}/audit" + (f"?{urlencode(kept)}" if kept else ""),
        older=f"{PREFIX}/audit?{urlencode({**kept, 'before': entries[-1].audit_id})}"
        if more and entries
        else None,
        before=before,
        export={fmt: urlencode({"format": fmt, **kept}) for fmt in ("jsonl", "csv")},
    )


# --- users ----------------------------------------------------------------------------------


async def _users_page(
    ctx: Ctx,
    *,
    message: str | None = None,
    secret: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    users = await ctx.accounts.users.list_users()
    return ctx.page(
        "users.html",
        code=status,
        nav="users",
        title="Users",
        users=users,
        roles=ROLES,
        message=message,
        secret=secret,
        error=error,
    )


async def users_page(ctx: Ctx) -> web.StreamResponse:
    return await _users_page(ctx)


async def create_user(ctx: Ctx) -> web.StreamResponse:
    form = await _form(ctx)
    username = form.get("username", "")
    body = {
        "username": username,
        "role": form.get("role", "viewer"),
        "password": form.get("password") or None,
    }
    try:
        created = await call_api(ctx, acc.create_user, body)
    except ApiRefused as exc:
        return await _users_page(ctx, error=str(exc), status=exc.status)
    secret = (
        {"label": f"Password for {created.user.username}", "value": created.password}
        if created.password
        else None
    )
    return await _users_page(
        ctx, message=f"User {created.user.username} created.", secret=secret, status=201
    )


async def user_action(ctx: Ctx) -> web.StreamResponse:
    username = ctx.request.match_info["username"]
    action = ctx.request.match_info["action"]
    form = await _form(ctx)
    secret = None
    try:
        if action == "role":
            user = await call_api(
                ctx, acc.set_user_role, {"role": form.get("role", "")}, username=username
            )
            message = f"{username} is now {user.role}."
        elif action == "disable":
            await call_api(ctx, acc.disable_user, username=username)
            message = (
                f"{username} is disabled: their sessions ended and their API tokens are revoked."
            )
        elif action == "enable":
            await call_api(ctx, acc.enable_user, username=username)
            message = f"{username} may log in again."
        elif action == "password":
            out = await call_api(ctx, acc.set_user_password, {"password": None}, username=username)
            message = f"New password set for {username}; their sessions ended."
            secret = {"label": f"New password for {username}", "value": out.password}
        else:
            raise web.HTTPNotFound()
    except ApiRefused as exc:
        return await _users_page(ctx, error=str(exc), status=exc.status)
    return await _users_page(ctx, message=message, secret=secret)


# --- own account ----------------------------------------------------------------------------


async def _account_page(
    ctx: Ctx,
    *,
    message: str | None = None,
    secret: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    tokens = await ctx.accounts.users.tokens_of(ctx.user.user_id)
    return ctx.page(
        "account.html",
        code=status,
        nav="account",
        title="Your account",
        tokens=tokens,
        session=ctx.session,
        idle_minutes=int(ctx.accounts.policy.session_idle.total_seconds() // 60),
        message=message,
        secret=secret,
        error=error,
    )


async def account_page(ctx: Ctx) -> web.StreamResponse:
    return await _account_page(ctx)


async def account_action(ctx: Ctx) -> web.StreamResponse:
    action = ctx.request.match_info["action"]
    form = await _form(ctx)
    secret = None
    try:
        if action == "password":
            if form.get("new_password", "") != form.get("confirm_password", ""):
                return await _account_page(ctx, error="The new passwords differ.", status=400)
            await call_api(
                ctx,
                acc.change_own_password,
                {
                    "current_password": form.get("current_password", ""),
                    "new_password": form.get("new_password", ""),
                },
            )
            message = "Password changed; your other sessions ended."
        elif action == "token":
            days = float(form.get("days", "90") or "0")
            if not math.isfinite(days) or days < 0:
                raise ValueError
            ttl = days * 86400 if days else None
            out = await call_api(
                ctx, acc.create_own_token, {"label": form.get("label", ""), "ttl_seconds": ttl}
            )
            message = f"API token {out.token.label} created."
            secret = {"label": "API token (TETHER_TOKEN)", "value": out.secret}
        elif action == "revoke":
            await call_api(ctx, acc.revoke_own_token, token_id=form.get("token_id", ""))
            message = "API token revoked."
        else:
            raise web.HTTPNotFound()
    except ValueError:
        return await _account_page(ctx, error="Valid for: a number of days.", status=400)
    except ApiRefused as exc:
        return await _account_page(ctx, error=str(exc), status=exc.status)
    return await _account_page(ctx, message=message, secret=secret)


# --- sign out -------------------------------------------------------------------------------


async def logout(ctx: Ctx) -> web.StreamResponse:
    secret = ctx.request.cookies.get(acc.SESSION_COOKIE)
    if secret:
        await ctx.accounts.logout(secret, source=ctx.source)
    response = web.HTTPSeeOther(location=f"{PREFIX}/login?bye=1")
    response.del_cookie(acc.SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


# --- the table ------------------------------------------------------------------------------

P = PREFIX
ROUTES: tuple[ConsoleRoute, ...] = (
    ConsoleRoute("GET", f"{P}/", fleet_page, "read", "Fleet overview"),
    ConsoleRoute("GET", f"{P}/live/fleet", fleet_live, "read", "Fleet regions (refresh)"),
    ConsoleRoute("GET", f"{P}/gateways/{{gateway_id}}", gateway_page, "read", "A gateway"),
    ConsoleRoute(
        "GET", f"{P}/gateways/{{gateway_id}}/live", gateway_live, "read", "Gateway regions"
    ),
    ConsoleRoute(
        "POST", f"{P}/gateways/{{gateway_id}}/commands", send_command, "diagnose", "Send a command"
    ),
    ConsoleRoute(
        "POST", f"{P}/commands/{{command_id}}/cancel", cancel_command, "diagnose", "Cancel"
    ),
    ConsoleRoute("POST", f"{P}/gateways/{{gateway_id}}/revoke", revoke_gateway, "revoke", "Revoke"),
    ConsoleRoute(
        "POST",
        f"{P}/gateways/{{gateway_id}}/support-grants",
        grant_support,
        "grant",
        "Give a support user access",
    ),
    ConsoleRoute(
        "POST",
        f"{P}/support-grants/{{grant_id}}/revoke",
        revoke_support_grant,
        "diagnose",
        "End a support grant",
    ),
    ConsoleRoute("GET", f"{P}/network", network_page, "read", "Network requirements"),
    ConsoleRoute(
        "GET", f"{P}/network/document.{{fmt}}", network_document, "read", "Document download"
    ),
    ConsoleRoute(
        "GET", f"{P}/network/rules/{{fmt}}/{{name}}", network_rules, "read", "Firewall download"
    ),
    ConsoleRoute("GET", f"{P}/tokens", tokens_page, "enroll", "Enrollment tokens"),
    ConsoleRoute("POST", f"{P}/tokens", create_token, "enroll", "Create an enrollment token"),
    ConsoleRoute(
        "POST",
        f"{P}/tokens/{{enrollment_token_id}}/revoke",
        revoke_token,
        "enroll",
        "Revoke an enrollment token",
    ),
    ConsoleRoute("GET", f"{P}/audit", audit_page, "audit", "Audit log"),
    ConsoleRoute("GET", f"{P}/users", users_page, "users", "Users"),
    ConsoleRoute("POST", f"{P}/users", create_user, "users", "Create a user"),
    ConsoleRoute(
        "POST", f"{P}/users/{{username}}/{{action}}", user_action, "users", "Change a user"
    ),
    ConsoleRoute("GET", f"{P}/account", account_page, "read", "Your account"),
    ConsoleRoute("POST", f"{P}/account/{{action}}", account_action, "read", "Change your account"),
    ConsoleRoute("POST", f"{P}/logout", logout, "read", "Log out"),
)
