"""What a gateway says of itself when its link opens (agent version, why it is on its tier) is
its own to say, but it cannot break the store's grouped write of link openings, which other
gateways' links share: over-long values are cut to what the store holds, on SQLite and
PostgreSQL, over the WebSocket and over the HTTPS tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from tests.cloud.conftest import STORES
from tests.support.cloudproc import (
    Cloud,
    RawLink,
    create_token,
    enroll_gateway,
)

from tether.cloud.service import MAX_AGENT_VERSION, MAX_TIER_REASON
from tether.pki.estclient import client_ssl_context
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.messages import Hello, Welcome
from tether.protocol.session import LinkSession, Role

pytestmark = pytest.mark.parametrize("cloud", STORES, indirect=True)

LONG_VERSION = "9." * 200
LONG_REASON = "the proxy said no " * 2000


async def _credentials(api: httpx.AsyncClient, tmp_path: Path, name: str) -> Path:
    code = (await create_token(api, name=name))["enrollment_code"]
    return (await enroll_gateway(code, tmp_path / name)).credentials_path


async def _detail(api: httpx.AsyncClient, gateway_id: str) -> dict[str, Any]:
    answer = await api.get(f"/api/v1/gateways/{gateway_id}")
    assert answer.status_code == 200, answer.text
    detail: dict[str, Any] = answer.json()
    return detail


async def test_an_over_long_hello_on_the_websocket_still_links(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    credentials = await _credentials(api, tmp_path, "site-ws")
    link = RawLink(cloud.url, client_ssl_context(cloud.ca_path, credentials, credentials))
    link.session = LinkSession(
        Role.CLIENT,
        now=0.0,
        agent_version=LONG_VERSION,
        boot_id="raw",
        tier_reason=LONG_REASON,
    )
    async with link:  # opened: the cloud sent its Welcome and took the link
        assert link.session.welcome is not None
        detail = await _detail(api, link.session.welcome.gateway_id)
    assert detail["gateway"]["agent_version"] == LONG_VERSION[:MAX_AGENT_VERSION]
    assert detail["tier_reason"] == LONG_REASON[:MAX_TIER_REASON]


async def test_an_over_long_hello_on_an_https_tier_still_links(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    credentials = await _credentials(api, tmp_path, "site-poll")
    hello = Hello(
        protocol_versions=[1],
        agent_version=LONG_VERSION,
        max_frame=1 << 20,
        boot_id="b",
        tier="poll",
        tier_reason=LONG_REASON,
    )
    context = client_ssl_context(cloud.ca_path, credentials, credentials)
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(
            f"{cloud.url}/link/exchange?tier=poll", data=encode_frames([hello]), ssl=context
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        (welcome, *_rest) = FrameDecoder(max_frame=1 << 20).feed(await answer.read())
    assert isinstance(welcome, Welcome)
    detail = await _detail(api, welcome.gateway_id)
    assert detail["gateway"]["agent_version"] == LONG_VERSION[:MAX_AGENT_VERSION]
    assert detail["tier_reason"] == LONG_REASON[:MAX_TIER_REASON]
