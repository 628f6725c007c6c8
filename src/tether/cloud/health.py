"""Gateway health and logs on the cloud side, and the fleet's Prometheus metrics.

Health reports and log batches arrive over any tier as link messages; they are stored (see
:mod:`tether.cloud.store.health`) and acknowledged. ``GET /metrics`` exposes the fleet in the
Prometheus text format for a scraper holding an API token with read access.

What a gateway wrote is stored as both dialects hold it (:func:`tether.cloud.storable.storable`):
a NUL in a log message, a log record's fields or a report becomes U+FFFD, a NaN or an infinity in
a document becomes null; a report or a log record whose time is not a finite number is stored at
the cloud's time. So none of them fails its write and none is sent again forever.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from tether.cloud.storable import storable
from tether.cloud.store.health import HEALTH_FIGURES, HealthStore
from tether.cloud.tlsserver import STATS as TLS_STATS
from tether.protocol.messages import (
    HealthReport,
    LogBatch,
    LogBatchAck,
    Message,
    NetcheckReport,
)

__all__ = ["ApiStats", "FleetCollector", "HealthService", "metrics_handler"]

log = logging.getLogger(__name__)

_LEVELS = {"debug", "info", "warning", "error", "critical"}


def _time_or(ts: float, now: float) -> float:
    """*ts*, or *now* if it is not a finite number (SQLite holds NaN as NULL, which the time
    columns refuse, where PostgreSQL stores it)."""
    return ts if math.isfinite(ts) else now


class HealthService:
    def __init__(self, store: HealthStore) -> None:
        self.store = store
        self.reports = 0
        self.log_records = 0
        self.log_dropped_on_gateways = 0

    async def on_health(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, HealthReport)
        now = time.time()
        ts = message.ts if abs(message.ts - now) < 86400 else now  # a wild clock (or NaN)
        await self.store.add_report(gateway_id, ts, storable(dict(message.data)))
        self.reports += 1
        return []

    async def on_netcheck(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, NetcheckReport)
        ts = _time_or(message.ts, time.time())
        await self.store.set_preflight(gateway_id, ts, storable(dict(message.report)))
        log.warning(
            # quoted: what a gateway sends cannot start a log line of its own
            "gateway %s ran its preflight: %r",
            gateway_id,
            message.report.get("status", "unknown"),
        )
        return []

    async def on_logs(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, LogBatch)
        now = time.time()
        records = [
            {
                "ts": _time_or(r.ts, now),
                "level": r.level if r.level in _LEVELS else "info",
                "source": r.source[:128],
                "message": r.message[:8192],
                "customer_data": r.customer_data,
                "fields": dict(r.fields) or None,
            }
            for r in message.records
        ]
        self.log_records += await self.store.add_logs(gateway_id, storable(records))
        self.log_dropped_on_gateways += message.dropped
        return [LogBatchAck(seq=message.seq)]


#: Upper bounds (seconds) of the API request duration histogram's buckets.
API_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiStats:
    """The operator API's requests answered by this process: counted by route (its template,
    never the path a caller wrote), method and status, and timed into a histogram."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        #: (method, route) -> per-bucket counts (the last: above every bound), sum of seconds.
        self.durations: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        timing = self.durations.get((method, route))
        if timing is None:
            timing = self.durations[(method, route)] = ([0] * (len(API_BUCKETS) + 1), [0.0])
        timing[0][bisect.bisect_left(API_BUCKETS, seconds)] += 1
        timing[1][0] += seconds

    def families(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "tether_api_requests",
            "Operator API requests answered by this process",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.counts.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        seconds = HistogramMetricFamily(
            "tether_api_request_seconds",
            "Time to answer an operator API request, by route",
            labels=["method", "route"],
        )
        for (method, route), (buckets, total) in sorted(self.durations.items()):
            cumulative, running = [], 0
            for bound, count in zip((*API_BUCKETS, float("inf")), buckets, strict=True):
                running += count
                cumulative.append((_bound(bound), running))
            seconds.add_metric([method, route], cumulative, sum_value=total[0])
        yield seconds


def _labelled_counter(
    name: str, help_text: str, label: str, counts: dict[str, int]
) -> Iterator[Any]:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class FleetCollector(Collector):
    """Reads a snapshot prepared just before each scrape (collect() itself cannot await).

    The serving process's own figures come too, under Prometheus's usual names
    (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``,
    ``python_info``...): with ``--workers``, each scrape is answered by one worker."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}
        self._own = (ProcessCollector(registry=None), PlatformCollector(registry=None))

    def collect(self) -> Iterator[Any]:
        for own in self._own:
            yield from own.collect()
        snap = self.snapshot
        gateways = GaugeMetricFamily("tether_gateways", "Gateways by link state", labels=["state"])
        for state, count in snap.get("states", {}).items():
            gateways.add_metric([state], count)
        yield gateways
        tiers = GaugeMetricFamily(
            "tether_gateways_tier", "Linked gateways by link tier", labels=["tier"]
        )
        for tier, count in snap.get("tiers", {}).items():
            tiers.add_metric([tier], count)
        yield tiers
        links = GaugeMetricFamily("tether_process_links", "WebSocket links held by this process")
        links.add_metric([], snap.get("links", 0))
        yield links
        queued = GaugeMetricFamily(
            "tether_ingest_queued_observations",
            "Observations waiting for a group commit in this process (links wait when it is full)",
        )
        queued.add_metric([], snap.get("ingest_queued", 0))
        yield queued
        if "wal_pages" in snap:  # a SQLite store
            wal = GaugeMetricFamily(
                "tether_sqlite_wal_pages",
                "Pages in the SQLite write-ahead log at its last checkpoint",
            )
            wal.add_metric([], snap["wal_pages"])
            yield wal
            failures = CounterMetricFamily(
                "tether_sqlite_checkpoint_failures",
                "WAL checkpoints that failed (each is retried a second later)",
            )
            failures.add_metric([], snap["checkpoint_failures"])
            yield failures
        commands = GaugeMetricFamily(
            "tether_commands", "Recent commands by state", labels=["state"]
        )
        for state, count in snap.get("commands", {}).items():
            commands.add_metric([state], count)
        yield commands
        for name, value, help_text in (
            ("tether_ingest_observations", "ingest_observations", "Observations committed"),
            ("tether_ingest_duplicates", "ingest_duplicates", "Duplicate observations skipped"),
            ("tether_ingest_batches_rejected", "ingest_rejected", "Telemetry batches refused"),
            ("tether_ingest_batches", "ingest_batches", "Telemetry batches committed"),
            ("tether_ingest_groups", "ingest_groups", "Group commits of telemetry batches"),
            (
                "tether_ingest_group_failures",
                "ingest_failures",
                "Group commits that failed (their batches deferred, sent again)",
            ),
            ("tether_health_reports", "health_reports", "Health reports received"),
            ("tether_links_opened", "links_opened", "Links this process opened (Hello accepted)"),
            (
                "tether_links_replaced",
                "links_replaced",
                "Links taken over by a newer link of the same gateway",
            ),
            ("tether_tls_handshakes", "tls_completed", "TLS handshakes this process completed"),
            (
                "tether_tls_handshake_timeouts",
                "tls_timed_out",
                "TLS handshakes that did not finish in time",
            ),
            (
                "tether_accept_pauses",
                "accept_pauses",
                "Times this process stopped accepting for a second, out of descriptors",
            ),
            ("tether_gateway_log_records", "log_records", "Gateway log records received"),
            (
                "tether_gateway_log_records_dropped",
                "log_dropped",
                "Log records gateways dropped from their full buffers",
            ),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], snap.get(value, 0))
            yield counter
        api = snap.get("api")
        if isinstance(api, ApiStats):
            yield from api.families()
        yield from _labelled_counter(
            "tether_links_closed",
            "Links of this process that ended, by close code (connection-lost: without one)",
            "code",
            snap.get("links_closed", {}),
        )
        yield from _labelled_counter(
            "tether_tls_handshake_failures",
            "TLS handshakes this process refused or lost, by OpenSSL's reason",
            "reason",
            snap.get("tls_failed", {}),
        )
        for figure in HEALTH_FIGURES:
            gauge = GaugeMetricFamily(
                f"tether_gateway_{figure}",
                f"Latest {figure.replace('_', ' ')} reported by the gateway",
                labels=["gateway"],
            )
            for gateway_id, figures in snap.get("health", {}).items():
                value = figures.get(figure)
                if value is not None:
                    gauge.add_metric([gateway_id], value)
            yield gauge


async def snapshot(state: Any) -> dict[str, Any]:
    gateways = await state.store.list_gateways()
    states: dict[str, int] = {"linked": 0, "offline": 0, "revoked": 0}
    tiers: dict[str, int] = {}
    for g in gateways:
        key = "revoked" if g.revoked else ("linked" if g.linked else "offline")
        states[key] += 1
        if g.linked and not g.revoked and g.tier:
            tiers[g.tier] = tiers.get(g.tier, 0) + 1
    commands: dict[str, int] = {}
    for c in await state.store.list_commands(limit=1000):
        commands[c.state.value] = commands.get(c.state.value, 0) + 1
    store_figures: dict[str, int] = {}
    checkpointer = state.store.checkpointer
    if checkpointer is not None:
        store_figures["wal_pages"] = checkpointer.stats.wal_pages
        store_figures["checkpoint_failures"] = checkpointer.stats.failures
    return {
        **store_figures,
        "states": states,
        "tiers": tiers,
        "links": len(state.hub),
        "commands": commands,
        "ingest_observations": state.ingest.stats.observations,
        "ingest_duplicates": state.ingest.stats.duplicates,
        "ingest_rejected": state.ingest.stats.rejected,
        "ingest_batches": state.ingest.stats.batches,
        "ingest_groups": state.ingest.stats.groups,
        "ingest_failures": state.ingest.stats.failures,
        "ingest_queued": state.ingest.queued_rows,
        "health_reports": state.health.reports,
        "log_records": state.health.log_records,
        "log_dropped": state.health.log_dropped_on_gateways,
        "health": await state.health.store.latest_all(),
        "api": state.api_stats,
        "links_opened": state.hub.opened_total,
        "links_closed": dict(state.hub.closed_total),
        "links_replaced": state.hub.replaced_total,
        "tls_completed": TLS_STATS.completed,
        "tls_failed": dict(TLS_STATS.failed),
        "tls_timed_out": TLS_STATS.timed_out,
        "accept_pauses": TLS_STATS.accept_pauses,
        "at": datetime.now(UTC).isoformat(),
    }


async def metrics_handler(
    request: web.Request, state: Any, collector: FleetCollector, registry: CollectorRegistry
) -> web.Response:
    collector.snapshot = await snapshot(state)
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
