"""A message the store refuses, sent over an HTTPS tier, against a real cloud on loopback (SQLite
and PostgreSQL): it is refused alone, as on the WebSocket tier, and the other messages of the
same exchange are still answered; the exchange itself does not fail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from tests.support.cloudproc import Cloud, create_token, enroll_gateway, running_cloud
from tests.support.postgres import PostgresServer, postgres_server

from tether.pki.estclient import client_ssl_context
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.messages import CommandUpdate, Discovery, ErrorReport, Message
from tether.protocol.telemetry import DeviceInfo, PointInfo

__all__ = ["postgres_server"]  # the fixture, for the PostgreSQL runs

LONG = "x" * 300  # more than the store's device and point columns hold


@pytest.fixture(params=["sqlite", "postgresql"])
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cloud]:
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        overrides["database_url"] = await server.create_database()
    async with running_cloud(tmp_path / "cloud", **overrides) as running:
        yield running


@pytest.fixture
async def api(cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    async with cloud.api() as client:
        yield client


async def test_a_message_the_store_refuses_does_not_fail_the_exchange(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    code = (await create_token(api, name="site-long"))["enrollment_code"]
    credentials = (await enroll_gateway(code, tmp_path / "gw")).credentials_path
    messages: list[Message] = [
        Discovery(
            connector="c",
            devices=[DeviceInfo(device_id=LONG, name=LONG, kind="meter")],
            points=[PointInfo(point_id=LONG, device_id=LONG, name=LONG)],
        ),
        CommandUpdate(command_id="not-a-command", state="running"),
    ]
    context = client_ssl_context(cloud.ca_path, credentials, credentials)
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(
            f"{cloud.url}/link/exchange?tier=poll", data=encode_frames(messages), ssl=context
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        replies = FrameDecoder(max_frame=1 << 20).feed(await answer.read())
    codes = [r.code for r in replies if isinstance(r, ErrorReport)]
    # The second message is answered whatever became of the first.
    assert codes[-1] == "unknown-command"
    if cloud.database.startswith("postgresql"):
        assert codes == ["unavailable", "unknown-command"]
