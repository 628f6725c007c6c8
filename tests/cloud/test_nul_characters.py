"""A NUL character (U+0000) in what a gateway sends, on SQLite and on a real PostgreSQL (which
refuses NUL in text and jsonb): in an identifier it is refused for good, in free text and JSON
documents it is stored as U+FFFD. Either way the write never fails, so the message is never
answered "send it again later" to fail again forever; the store's contents are asserted."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.support.ingest import started
from tests.support.postgres import PostgresServer, postgres_server

from tether.cloud.health import HealthService
from tether.cloud.ingest import IngestPipeline
from tether.cloud.service import GatewayService, hello_facts
from tether.cloud.store import Store
from tether.cloud.store.health import HealthStore
from tether.cloud.store.links import LinkStore
from tether.cloud.store.telemetry import TelemetryStore, points
from tether.protocol.commands import CommandState
from tether.protocol.messages import (
    CommandUpdate,
    CommandUpdateAck,
    ConfigAck,
    Discovery,
    DiscoveryAck,
    DropReport,
    ErrorReport,
    HealthReport,
    Hello,
    LogBatch,
    LogBatchAck,
    LogRecord,
    NetcheckReport,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

__all__ = ["postgres_server"]  # the fixture, for the PostgreSQL runs

GW = "gw-1"
T0 = 1_718_000_000.0
NUL = "\x00"
FFFD = "\ufffd"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store with one gateway: a SQLite file, or a new database on a real PostgreSQL."""
    server: PostgresServer | None = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = await server.create_database()
    opened = await Store.open(url)
    try:
        for gateway_id in (GW, "gw-2", "gw-3"):
            await opened.create_gateway(
                gateway_id=gateway_id, name=gateway_id, now=datetime.now(UTC)
            )
        yield opened
    finally:
        await opened.close()
        if server is not None:
            await server.drop_database(url)


@pytest.fixture
def telemetry(store: Store) -> TelemetryStore:
    return TelemetryStore(store.engine)


@pytest.fixture
async def pipeline(telemetry: TelemetryStore) -> AsyncIterator[IngestPipeline]:
    async with started(IngestPipeline(telemetry)) as running:
        yield running


def _batch(stream: str, first: int, values: list[Observation]) -> TelemetryBatch:
    return TelemetryBatch(stream, first, first + len(values) - 1, values)


async def _stored(telemetry: TelemetryStore, gateway_id: str = GW) -> list[tuple[str, Any]]:
    rows = await telemetry.query(gateway_id, point_id=None, since=None, until=None, limit=1000)
    return [(r.point_id, r.value) for r in rows]


# --- telemetry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([Observation(f"b1/p{NUL}", T0, 1.0)], id="numeric"),
        pytest.param([Observation(f"b1/p{NUL}", T0, "text")], id="text"),
        pytest.param(
            [Observation(f"b1/p{n}", T0 + n, float(n)) for n in range(50)]
            + [Observation(f"{NUL}b1/last", T0 + 50, 1.0)],
            id="one-of-many",
        ),
    ],
)
async def test_a_nul_in_a_point_id_refuses_the_batch_for_good(
    pipeline: IngestPipeline, telemetry: TelemetryStore, values: list[Observation]
) -> None:
    [reply] = await pipeline.on_batch(GW, _batch("sim", 1, values))
    assert isinstance(reply, TelemetryReject)
    assert reply.permanent
    assert "NUL" in reply.reason
    assert "\\x00" in reply.reason  # the offending id named, quoted
    assert NUL not in reply.reason
    assert (pipeline.stats.rejected, pipeline.stats.failures) == (1, 0)
    assert await _stored(telemetry) == []
    assert await telemetry.streams(GW) == []


async def test_a_nul_in_a_stream_name_refuses_the_batch_for_good(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    [reply] = await pipeline.on_batch(GW, _batch(f"sim{NUL}", 1, [Observation("p", T0, 1.0)]))
    assert isinstance(reply, TelemetryReject)
    assert reply.permanent
    assert await telemetry.streams(GW) == []


async def test_a_nul_in_a_text_value_is_stored_as_fffd(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    found = Discovery(
        connector="sim",
        devices=[DeviceInfo(device_id="b1/d", name="d", kind="meter")],
        points=[PointInfo(point_id="b1/status", device_id="b1/d", name="status", kind="text")],
    )
    assert await pipeline.on_discovery(GW, found) == [DiscoveryAck(connector="sim", points=1)]
    values = [Observation("b1/status", T0, f"a{NUL}b"), Observation("b1/n", T0 + 1, 2.0)]
    [reply] = await pipeline.on_batch(GW, _batch("sim", 1, values))
    assert reply == TelemetryAck(stream="sim", last_seq=2, accepted=2, duplicates=0)
    assert await _stored(telemetry) == [("b1/status", f"a{FFFD}b"), ("b1/n", 2.0)]
    [point] = await telemetry.list_points(GW)
    assert point.last_value == f"a{FFFD}b"  # the point's newest value too


async def test_a_resent_batch_cut_to_its_new_tail_stores_its_text_as_fffd(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    first = [Observation("b1/t", T0 + n, f"{n}{NUL}") for n in range(2)]
    [ack] = await pipeline.on_batch(GW, _batch("sim", 1, first))
    assert isinstance(ack, TelemetryAck)
    # Its ack lost, sent again with one more: only the new tail is stored (rows made anew).
    again = [*first, Observation("b1/t", T0 + 2, f"2{NUL}{NUL}")]
    [reply] = await pipeline.on_batch(GW, _batch("sim", 1, again))
    assert reply == TelemetryAck(stream="sim", last_seq=3, accepted=1, duplicates=2)
    assert [v for _, v in await _stored(telemetry)] == [f"0{FFFD}", f"1{FFFD}", f"2{FFFD}{FFFD}"]


async def test_a_nul_point_id_does_not_fail_other_gateways_batches_of_its_group(
    telemetry: TelemetryStore,
) -> None:
    pipeline = IngestPipeline(telemetry, writers=1)
    # Queued before the writer runs: the valid batches share one group commit.
    tasks = [
        asyncio.create_task(pipeline.on_batch("gw-2", _batch("sim", 1, [Observation("p", T0, 1)]))),
        asyncio.create_task(
            pipeline.on_batch(GW, _batch("sim", 1, [Observation(f"p{NUL}", T0, 2.0)]))
        ),
        asyncio.create_task(pipeline.on_batch("gw-3", _batch("sim", 1, [Observation("q", T0, 3)]))),
    ]
    await asyncio.sleep(0)  # every on_batch has queued (or been refused)
    async with started(pipeline):
        [[valid], [refused], [other]] = await asyncio.gather(*tasks)
    assert isinstance(refused, TelemetryReject)
    assert refused.permanent
    assert valid == TelemetryAck(stream="sim", last_seq=1, accepted=1, duplicates=0)
    assert other == TelemetryAck(stream="sim", last_seq=1, accepted=1, duplicates=0)
    assert (pipeline.stats.groups, pipeline.stats.batches, pipeline.stats.failures) == (1, 2, 0)
    assert await _stored(telemetry, "gw-2") == [("p", 1.0)]
    assert await _stored(telemetry, "gw-3") == [("q", 3.0)]
    assert await _stored(telemetry, GW) == []


async def test_a_drop_report_of_a_stream_named_with_a_nul_is_refused(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    [refused] = await pipeline.on_drop_report(GW, DropReport(stream=f"s{NUL}", dropped_total=3))
    assert isinstance(refused, ErrorReport)
    assert refused.code == "invalid"
    assert await telemetry.streams(GW) == []


# --- discovery ------------------------------------------------------------------------------


async def test_discovery_leaves_out_ids_with_a_nul_and_stores_text_nul_as_fffd(
    pipeline: IngestPipeline, store: Store, telemetry: TelemetryStore
) -> None:
    found = Discovery(
        connector="bacnet",
        devices=[
            DeviceInfo(
                device_id="b1/ahu",
                name=f"AHU{NUL}1",
                kind=f"ahu{NUL}",
                vendor=f"v{NUL}",
                model=f"m{NUL}",
                location=f"roof{NUL}",
                attributes={f"k{NUL}": f"v{NUL}", "plain": "yes"},
            ),
            DeviceInfo(device_id=f"b1/{NUL}odd", name="odd", kind="meter"),
        ],
        points=[
            PointInfo(
                point_id="b1/ahu/sat",
                device_id="b1/ahu",
                name=f"SAT{NUL}",
                unit=f"°C{NUL}",
                description=f"supply{NUL}air",
            ),
            PointInfo(point_id=f"b1/ahu/{NUL}", device_id="b1/ahu", name="bad id"),
            PointInfo(point_id="b1/ahu/rat", device_id=f"b1/{NUL}", name="bad device"),
        ],
    )
    answers = await pipeline.on_discovery(GW, found)
    assert answers[0] == DiscoveryAck(connector="bacnet", points=1)
    [report] = answers[1:]
    assert isinstance(report, ErrorReport)
    assert report.code == "invalid"
    assert "1 device(s) and 2 point(s) left out" in report.message
    assert "holds a NUL character" in report.message
    [device] = await telemetry.list_devices(GW)
    assert {k: device[k] for k in ("device_id", "name", "kind", "vendor", "model", "location")} == {
        "device_id": "b1/ahu",
        "name": f"AHU{FFFD}1",
        "kind": f"ahu{FFFD}",
        "vendor": f"v{FFFD}",
        "model": f"m{FFFD}",
        "location": f"roof{FFFD}",
    }
    assert device["attributes"] == {f"k{FFFD}": f"v{FFFD}", "plain": "yes"}
    [point] = await telemetry.list_points(GW)
    assert (point.point_id, point.name, point.unit) == ("b1/ahu/sat", f"SAT{FFFD}", f"°C{FFFD}")
    async with store.engine.connect() as conn:
        description = (await conn.execute(sa.select(points.c.description))).scalar_one()
    assert description == f"supply{FFFD}air"


async def test_a_discovery_from_a_connector_named_with_a_nul_is_refused(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    found = Discovery(
        connector=f"sim{NUL}",
        devices=[DeviceInfo(device_id="d", name="d", kind="k")],
        points=[],
    )
    [refused] = await pipeline.on_discovery(GW, found)
    assert isinstance(refused, ErrorReport)
    assert (refused.code, refused.message) == (
        "invalid",
        "discovery: connector name holds a NUL character",
    )
    assert await telemetry.list_devices(GW) == []


# --- health, preflight and logs -------------------------------------------------------------


@pytest.fixture
def health(store: Store) -> HealthService:
    return HealthService(HealthStore(store.engine))


async def test_a_health_report_with_nul_and_nan_is_stored(health: HealthService) -> None:
    data = {
        "system": {"cpu_percent": math.nan, "memory": {"percent": 12.5}, "host": f"gw{NUL}"},
        f"odd{NUL}key": [f"a{NUL}", math.inf, 3],
    }
    ts = time.time()
    assert await health.on_health(GW, HealthReport(ts=ts, data=data)) == []
    assert await health.store.latest(GW) == {
        "ts": ts,
        "system": {"cpu_percent": None, "memory": {"percent": 12.5}, "host": f"gw{FFFD}"},
        f"odd{FFFD}key": [f"a{FFFD}", None, 3],
    }
    [point] = await health.store.series(GW, since=ts - 1)
    assert (point.figures["cpu_percent"], point.figures["memory_percent"]) == (None, 12.5)


async def test_a_preflight_report_with_a_nul_is_stored(health: HealthService) -> None:
    report = {"status": f"fail{NUL}", "checks": [{"name": f"dns{NUL}", "detail": f"x{NUL}y"}]}
    await health.on_netcheck(GW, NetcheckReport(ts=T0, report=report))
    assert await health.store.preflight(GW) == {
        "ts": T0,
        "status": f"fail{FFFD}",
        "report": {
            "status": f"fail{FFFD}",
            "checks": [{"name": f"dns{FFFD}", "detail": f"x{FFFD}y"}],
        },
    }


async def test_log_records_with_a_nul_are_stored_once_and_acknowledged(
    health: HealthService,
) -> None:
    batch = LogBatch(
        seq=7,
        records=[
            LogRecord(
                ts=T0,
                level="warning",
                source=f"connector:{NUL}bacnet",
                message=f"read{NUL}failed",
                fields={f"k{NUL}": f"v{NUL}", "n": math.nan},
            ),
            LogRecord(ts=T0 + 1, level=f"info{NUL}", source="agent", message="plain"),
        ],
    )
    assert await health.on_logs(GW, batch) == [LogBatchAck(seq=7)]
    # Sent again (its ack lost): the same records, found as stored, are not stored twice.
    assert await health.on_logs(GW, batch) == [LogBatchAck(seq=7)]
    assert health.log_records == 2
    first, second = await health.store.logs(GW)
    assert (first.source, first.message) == (f"connector:{FFFD}bacnet", f"read{FFFD}failed")
    assert first.fields == {f"k{FFFD}": f"v{FFFD}", "n": None}
    assert (second.level, second.message) == ("info", "plain")


# --- commands, configuration, the Hello -----------------------------------------------------


async def _delivered_command(store: Store) -> str:
    now = datetime.now(UTC)
    record = await store.create_command(
        gateway_id=GW,
        kind="ping",
        args={},
        expires_at=now + timedelta(hours=1),
        created_by="t",
        now=now,
    )
    assert await store.deliver_commands([record.command_id], now=now) == {record.command_id}
    return record.command_id


async def test_a_command_update_with_a_nul_in_its_id_is_refused(store: Store) -> None:
    command_id = await _delivered_command(store)
    service = GatewayService(store)
    [refused] = await service.handle(
        GW, CommandUpdate(command_id=f"{command_id}{NUL}", state="running")
    )
    assert isinstance(refused, ErrorReport)
    assert refused.code == "invalid"
    assert NUL not in (refused.ref or "")
    record = await store.get_command(command_id)
    assert record is not None
    assert record.state is CommandState.DELIVERED


async def test_a_command_result_and_error_with_a_nul_are_stored(store: Store) -> None:
    command_id = await _delivered_command(store)
    service = GatewayService(store)
    assert await service.handle(GW, CommandUpdate(command_id=command_id, state="running")) == [
        CommandUpdateAck(command_id=command_id, state="running")
    ]
    done = CommandUpdate(
        command_id=command_id,
        state="failed",
        result={f"out{NUL}": [f"line{NUL}", 1.5], "rtt": math.nan},
        error=f"exit{NUL}1",
    )
    assert await service.handle(GW, done) == [
        CommandUpdateAck(command_id=command_id, state="failed")
    ]
    record = await store.get_command(command_id)
    assert record is not None
    assert record.state is CommandState.FAILED
    assert record.result == {f"out{FFFD}": [f"line{FFFD}", 1.5], "rtt": None}
    assert record.error == f"exit{FFFD}1"


async def test_a_config_ack_with_a_nul_is_refused_in_its_section_and_stored_in_its_error(
    store: Store,
) -> None:
    service = GatewayService(store)
    put = await service.config.put(GW, "connectors", {"modbus": []}, by="t")
    [refused] = await service.handle(
        GW, ConfigAck(section=f"connectors{NUL}", version=put.version, ok=True)
    )
    assert isinstance(refused, ErrorReport)
    assert refused.code == "invalid"
    unchanged = await service.config.get(GW, "connectors")
    assert unchanged is not None
    assert unchanged.applied_version is None
    nack = ConfigAck(section="connectors", version=put.version, ok=False, error=f"bad{NUL}port")
    assert await service.handle(GW, nack) == []
    applied = await service.config.get(GW, "connectors")
    assert applied is not None
    assert (applied.applied_version, applied.applied_error) == (put.version, f"bad{FFFD}port")


async def test_a_hello_with_a_nul_opens_its_link_with_the_others_of_its_group(
    store: Store,
) -> None:
    links = LinkStore(store.engine)
    hello = Hello(
        protocol_versions=[1],
        agent_version=f"1.0{NUL}",
        max_frame=1 << 20,
        boot_id="b",
        tier_reason=f"proxy{NUL}blocks upgrade",
    )
    version, reason = hello_facts(hello)
    # Opened together: one transaction writes both openings.
    await asyncio.gather(
        links.opened(GW, tier="ws", reason=reason, agent_version=version, peer="127.0.0.1"),
        links.opened("gw-2", tier="ws", reason="", agent_version="1.0", peer="127.0.0.1"),
    )
    mine, other = await store.get_gateway(GW), await store.get_gateway("gw-2")
    assert mine is not None
    assert other is not None
    assert (mine.linked, mine.agent_version) == (True, f"1.0{FFFD}")
    assert (other.linked, other.agent_version) == (True, "1.0")
    record = await links.get(GW)
    assert record is not None
    assert record.reason == f"proxy{FFFD}blocks upgrade"
    assert record.history[-1]["reason"] == f"proxy{FFFD}blocks upgrade"
