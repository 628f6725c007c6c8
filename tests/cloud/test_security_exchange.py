"""Messages the store cannot take, sent over an HTTPS tier, against a real cloud on loopback
(SQLite and PostgreSQL). A message the store fails on is refused alone (``unavailable``), as on
the WebSocket tier, and the other messages of the same exchange are still answered; the exchange
itself does not fail. A NUL character anywhere in what a gateway sends (which PostgreSQL refuses in
text) is never such a failure: an identifier holding one is refused for good, free text is
stored with U+FFFD in its place, and the operator API answers with it."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import pytest
from tests.cloud.conftest import STORES
from tests.support.cloudproc import (
    Cloud,
    create_token,
    enroll_gateway,
    get_gateway,
)

from tether.pki.estclient import client_ssl_context
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.messages import (
    CommandUpdate,
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
    Message,
    NetcheckReport,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
    Welcome,
)
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

pytestmark = pytest.mark.parametrize("cloud", STORES, indirect=True)

NUL = "\x00"
FFFD = "\ufffd"


async def _exchange(cloud: Cloud, credentials: Path, messages: Sequence[Message]) -> list[Message]:
    """One poll-tier exchange with the gateway's certificate: the cloud's answer, decoded."""
    context = client_ssl_context(cloud.ca_path, credentials, credentials)
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(
            f"{cloud.url}/link/exchange?tier=poll", data=encode_frames(messages), ssl=context
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return FrameDecoder(max_frame=1 << 20).feed(await answer.read())


def _rename(database: str, old: str, new: str) -> None:
    """Rename a table of the cloud's SQLite file, on a connection of its own."""
    path = database.split(":///", 1)[1]
    with sqlite3.connect(path, timeout=10) as db:
        db.execute(f"ALTER TABLE {old} RENAME TO {new}")
    db.close()


@asynccontextmanager
async def table_away(cloud: Cloud, table: str) -> AsyncIterator[None]:
    """The store really fails on *table* for a while: it is renamed behind the cloud's back,
    through the database's own driver, and renamed back after."""
    away = f"{table}_away"
    database = cloud.database
    if database.startswith("postgresql"):
        dsn = database.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"ALTER TABLE {table} RENAME TO {away}")
            try:
                yield
            finally:
                await conn.execute(f"ALTER TABLE {away} RENAME TO {table}")
        finally:
            await conn.close()
        return
    # Off the event loop: the cloud runs in this loop and may hold a lock a moment longer.
    await asyncio.to_thread(_rename, database, table, away)
    try:
        yield
    finally:
        await asyncio.to_thread(_rename, database, away, table)


async def _gateway(api: httpx.AsyncClient, tmp_path: Path, name: str) -> tuple[str, Path]:
    code = (await create_token(api, name=name))["enrollment_code"]
    identity = await enroll_gateway(code, tmp_path / name)
    return identity.gateway_id, identity.credentials_path


async def test_a_message_the_store_refuses_does_not_fail_the_exchange(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    _, credentials = await _gateway(api, tmp_path, "site-down")
    found = Discovery(
        connector="c",
        devices=[DeviceInfo(device_id="b1/meter", name="meter", kind="meter")],
        points=[PointInfo(point_id="b1/meter/kw", device_id="b1/meter", name="kW")],
    )
    messages: list[Message] = [found, CommandUpdate(command_id="not-a-command", state="running")]
    async with table_away(cloud, "devices"):
        replies = await _exchange(cloud, credentials, messages)
    # The discovery is refused alone, to be sent again; the command update is still answered.
    codes = [r.code for r in replies if isinstance(r, ErrorReport)]
    assert codes == ["unavailable", "unknown-command"]
    assert not any(isinstance(r, DiscoveryAck) for r in replies)
    # Sent again once the store is back: it is stored.
    again = await _exchange(cloud, credentials, [found])
    assert DiscoveryAck(connector="c", points=1) in again


async def test_nul_characters_are_refused_in_ids_and_stored_as_fffd_in_text(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    gateway_id, credentials = await _gateway(api, tmp_path, "site-nul")
    now = time.time()
    messages: list[Message] = [
        Hello(
            protocol_versions=[1],
            agent_version=f"1.2{NUL}",
            max_frame=1 << 20,
            boot_id="boot",
            tier="poll",
            tier_reason=f"no{NUL}websocket",
        ),
        TelemetryBatch(
            "sim", 1, 2, [Observation("b1/s", now, f"on{NUL}"), Observation("b1/n", now, 1)]
        ),
        TelemetryBatch("other", 1, 1, [Observation(f"b1/{NUL}", now, 1.0)]),
        Discovery(
            connector="c",
            devices=[
                DeviceInfo(device_id="b1/d", name=f"D{NUL}", kind="meter"),
                DeviceInfo(device_id=f"b1/{NUL}", name="odd", kind="meter"),
            ],
            points=[PointInfo(point_id="b1/s", device_id="b1/d", name=f"S{NUL}", unit=f"%{NUL}")],
        ),
        DropReport(stream=f"sim{NUL}", dropped_total=1),
        HealthReport(ts=now, data={"system": {"cpu_percent": math.nan, "note": f"a{NUL}b"}}),
        NetcheckReport(ts=now, report={"status": f"ok{NUL}", "checks": []}),
        LogBatch(
            seq=1,
            records=[
                LogRecord(
                    ts=now,
                    level="info",
                    source=f"s{NUL}",
                    message=f"m{NUL}",
                    fields={"k": f"v{NUL}"},
                )
            ],
        ),
        CommandUpdate(command_id=f"c{NUL}", state="running"),
        ConfigAck(section=f"connectors{NUL}", version=1, ok=True),
    ]
    replies = await _exchange(cloud, credentials, messages)
    assert isinstance(replies[0], Welcome)
    codes = [(r.code, r.message) for r in replies if isinstance(r, ErrorReport)]
    assert [code for code, _ in codes] == ["invalid"] * 4, (
        codes
    )  # discovery, drops, command, config
    assert "holds a NUL character" in codes[0][1]
    assert TelemetryAck(stream="sim", last_seq=2, accepted=2, duplicates=0) in replies
    [refused] = [r for r in replies if isinstance(r, TelemetryReject)]
    assert (refused.stream, refused.permanent) == ("other", True)
    assert DiscoveryAck(connector="c", points=1) in replies
    assert LogBatchAck(seq=1) in replies

    # What the store holds, as the operator API answers it.
    gateway = await get_gateway(api, gateway_id)
    assert gateway["agent_version"] == f"1.2{FFFD}"
    base = f"/api/v1/gateways/{gateway_id}"
    observations = (await api.get(f"{base}/observations")).json()
    assert sorted((o["point_id"], str(o["value"])) for o in observations) == [
        ("b1/n", "1.0"),
        ("b1/s", f"on{FFFD}"),
    ]
    [device] = (await api.get(f"{base}/devices")).json()
    assert (device["device_id"], device["name"]) == ("b1/d", f"D{FFFD}")
    [point] = (await api.get(f"{base}/points")).json()
    assert (point["name"], point["unit"]) == (f"S{FFFD}", f"%{FFFD}")
    health = (await api.get(f"{base}/health")).json()
    assert health["latest"]["system"] == {"cpu_percent": None, "note": f"a{FFFD}b"}
    [record] = (await api.get(f"{base}/logs")).json()
    assert (record["source"], record["message"], record["fields"]) == (
        f"s{FFFD}",
        f"m{FFFD}",
        {"k": f"v{FFFD}"},
    )
