"""The cloud side of health and logs over a real store: reports stored (a wild clock is not
history), log batches stored and acknowledged (a batch sent again after a lost ack is stored
once), the preflight a gateway ran, and the fleet's Prometheus text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tether.cloud.health import FleetCollector, HealthService
from tether.cloud.store import Store
from tether.cloud.store.health import HEALTH_FIGURES, HealthStore
from tether.protocol.messages import (
    HealthReport,
    LogBatch,
    LogBatchAck,
    LogRecord,
    NetcheckReport,
)

GW = "gw-1"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[HealthService]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    try:
        yield HealthService(HealthStore(store.engine))
    finally:
        await store.close()


async def test_a_health_report_is_stored_with_its_time(service: HealthService) -> None:
    ts = time.time() - 30
    replies = await service.on_health(GW, HealthReport(ts=ts, data={"system": {"cpu_percent": 7}}))
    assert replies == []
    latest = await service.store.latest(GW)
    assert latest == {"ts": ts, "system": {"cpu_percent": 7}}
    assert service.reports == 1


async def test_a_report_from_a_wild_clock_is_stored_at_the_clouds_time(
    service: HealthService,
) -> None:
    before = time.time()
    await service.on_health(GW, HealthReport(ts=86400.0, data={}))  # 1970
    latest = await service.store.latest(GW)
    assert latest is not None
    assert before <= latest["ts"] <= time.time()


def _record(ts: float, message: str, **extra: Any) -> LogRecord:
    return LogRecord(
        ts=ts, level="info", source="agent:tether.gateway.link", message=message, **extra
    )


async def test_a_log_batch_is_stored_and_acknowledged(service: HealthService) -> None:
    t = time.time()
    batch = LogBatch(
        seq=7,
        records=[
            _record(t, "linked"),
            LogRecord(ts=t + 1, level="shout", source="x" * 300, message="m" * 10000),
            _record(t + 2, "zone 4 is 21 degC", customer_data=True, fields={"point": "z4"}),
        ],
        dropped=4,
    )
    assert await service.on_logs(GW, batch) == [LogBatchAck(seq=7)]
    rows = await service.store.logs(GW)
    assert [r.message[:6] for r in rows] == ["linked", "mmmmmm", "zone 4"]
    assert rows[1].level == "info"  # an unknown level is stored as info
    assert len(rows[1].source) == 128
    assert len(rows[1].message) == 8192
    assert rows[2].customer_data is True
    assert rows[2].fields == {"point": "z4"}
    assert rows[0].fields is None
    assert service.log_records == 3
    assert service.log_dropped_on_gateways == 4


async def test_a_batch_sent_again_after_a_lost_ack_is_stored_once(service: HealthService) -> None:
    t = time.time()
    first = LogBatch(seq=1, records=[_record(t, "one"), _record(t + 1, "two")])
    assert await service.on_logs(GW, first) == [LogBatchAck(seq=1)]
    # The ack was lost with the link; on the next link the agent sends the head of its buffer
    # again (under a new sequence number), with what was logged since.
    again = LogBatch(
        seq=2, records=[_record(t, "one"), _record(t + 1, "two"), _record(t + 2, "three")]
    )
    assert await service.on_logs(GW, again) == [LogBatchAck(seq=2)]
    assert [r.message for r in await service.store.logs(GW)] == ["one", "two", "three"]
    # The same text at another time, or from another gateway, is a record of its own.
    await service.on_logs(GW, LogBatch(seq=3, records=[_record(t + 3, "one")]))
    await service.on_logs("gw-2", LogBatch(seq=1, records=[_record(t, "one")]))
    assert [r.message for r in await service.store.logs(GW)] == ["one", "two", "three", "one"]
    assert [r.message for r in await service.store.logs("gw-2")] == ["one"]


async def test_the_preflight_report_is_kept_with_its_status(service: HealthService) -> None:
    report = {"status": "fail", "results": [{"check": "websocket", "status": "fail"}]}
    assert await service.on_netcheck(GW, NetcheckReport(ts=123.0, report=report)) == []
    assert await service.store.preflight(GW) == {"ts": 123.0, "status": "fail", "report": report}


def _families(collector: FleetCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        family.name: [(dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_the_fleet_collector_renders_prometheus_text() -> None:
    collector = FleetCollector()
    collector.snapshot = {
        "states": {"linked": 2, "offline": 1, "revoked": 0},
        "tiers": {"ws": 1, "long-poll": 1},
        "links": 1,
        "commands": {"succeeded": 5, "queued": 1},
        "ingest_observations": 1000,
        "ingest_duplicates": 3,
        "ingest_rejected": 0,
        "ingest_batches": 40,
        "ingest_groups": 9,
        "ingest_failures": 1,
        "ingest_queued": 4000,
        "wal_pages": 120,
        "checkpoint_failures": 2,
        "health_reports": 12,
        "log_records": 40,
        "log_dropped": 6,
        "health": {
            "gw-1": {**dict.fromkeys(HEALTH_FIGURES), "cpu_percent": 12.5, "spool_depth": 30.0},
            "gw-2": {**dict.fromkeys(HEALTH_FIGURES), "cpu_percent": 80.0},
        },
    }
    families = _families(collector)
    assert sorted(families["tether_gateways"], key=lambda s: s[0]["state"]) == [
        ({"state": "linked"}, 2.0),
        ({"state": "offline"}, 1.0),
        ({"state": "revoked"}, 0.0),
    ]
    assert sorted(families["tether_gateways_tier"], key=lambda s: s[0]["tier"]) == [
        ({"tier": "long-poll"}, 1.0),
        ({"tier": "ws"}, 1.0),
    ]
    assert families["tether_process_links"] == [({}, 1.0)]
    assert ({"state": "succeeded"}, 5.0) in families["tether_commands"]
    # Counters: the parser names the family without _total, the sample with it.
    assert families["tether_ingest_observations"] == [({}, 1000.0)]
    assert families["tether_ingest_batches"] == [({}, 40.0)]
    assert families["tether_ingest_groups"] == [({}, 9.0)]
    assert families["tether_ingest_group_failures"] == [({}, 1.0)]
    assert families["tether_ingest_queued_observations"] == [({}, 4000.0)]
    assert families["tether_sqlite_wal_pages"] == [({}, 120.0)]
    assert families["tether_sqlite_checkpoint_failures"] == [({}, 2.0)]
    assert families["tether_health_reports"] == [({}, 12.0)]
    assert families["tether_gateway_log_records"] == [({}, 40.0)]
    assert families["tether_gateway_log_records_dropped"] == [({}, 6.0)]
    assert sorted(families["tether_gateway_cpu_percent"], key=lambda s: s[0]["gateway"]) == [
        ({"gateway": "gw-1"}, 12.5),
        ({"gateway": "gw-2"}, 80.0),
    ]
    # A figure a gateway did not report is absent, not zero.
    assert families["tether_gateway_spool_depth"] == [({"gateway": "gw-1"}, 30.0)]
    assert families["tether_gateway_memory_percent"] == []
    for figure in HEALTH_FIGURES:
        assert f"tether_gateway_{figure}" in families


def test_a_store_without_a_wal_has_no_sqlite_figures() -> None:
    collector = FleetCollector()
    collector.snapshot = {"links": 0}  # PostgreSQL: no "wal_pages"
    families = _families(collector)
    assert "tether_sqlite_wal_pages" not in families
    assert "tether_sqlite_checkpoint_failures" not in families
    assert families["tether_process_links"] == [({}, 0.0)]


def test_an_empty_fleet_renders_zeros_not_errors() -> None:
    families = _families(FleetCollector())
    assert families["tether_gateways"] == []
    assert families["tether_process_links"] == [({}, 0.0)]
    assert families["tether_health_reports"] == [({}, 0.0)]
