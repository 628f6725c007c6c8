"""Heartbeats keep idle links up: many pings pass and no link is dropped or reopened.

A deadline due "now" once became a receive timeout of 0, which aiohttp reads as no timeout at
all: the agent stopped pinging and the cloud dropped the link. With a 1 s heartbeat that showed
within seconds on a quarter of the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.cloudproc import (
    RawLink,
    create_token,
    enroll_gateway,
    get_gateway,
    running_agent,
    running_cloud,
    wait_for,
    wait_gateway,
)

from tether.gateway.link import WebSocketTier
from tether.protocol.messages import CloseCode

pytestmark = pytest.mark.slow

LINKS = 6
PINGS = 8


async def test_idle_links_survive_many_heartbeats(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud", heartbeat_interval=1.0) as cloud,
        cloud.api() as api,
    ):
        agents = []
        for i in range(LINKS):
            token = await create_token(api, name=f"hb-{i}")
            ctx = running_agent(tmp_path / f"gw{i}", code=token["enrollment_code"])
            agents.append((ctx, await ctx.__aenter__()))
        try:
            for _, agent in agents:
                await agent.wait_linked()

            def pings(agent: object) -> int:
                tier = agent.agent._tier  # type: ignore[attr-defined]
                if not isinstance(tier, WebSocketTier) or tier.session is None:
                    return 0
                return tier.session._ping_seq

            await wait_for(
                lambda: all(pings(a) >= PINGS for _, a in agents),
                within=60,
                what=f"{PINGS} heartbeats on every link",
            )
            assert [a.agent.status.links_opened for _, a in agents] == [1] * LINKS
            listing = (await api.get("/api/v1/gateways")).json()
            assert sum(g["linked"] for g in listing) == LINKS
        finally:
            for ctx, _ in reversed(agents):
                await ctx.__aexit__(None, None, None)


async def test_the_cloud_ends_a_link_that_falls_silent_and_one_that_never_says_hello(
    tmp_path: Path,
) -> None:
    """Every link has its own deadline: the cloud closes a silent one with a heartbeat
    timeout once the liveness window (2.5 heartbeats) has passed, marks the gateway offline,
    and drops a connection that upgraded but never opened the link."""
    async with (
        running_cloud(tmp_path / "cloud", heartbeat_interval=1.0) as cloud,
        cloud.api() as api,
    ):
        token = await create_token(api, name="silent")
        identity = await enroll_gateway(token["enrollment_code"], tmp_path / "gw")
        async with RawLink(cloud.url, identity.ssl_context()) as link:
            opened = time.monotonic()
            assert (await get_gateway(api, identity.gateway_id))["linked"] is True
            with pytest.raises(ConnectionError, match="link closed"):
                await link.next_message(lambda m: False, within=30)  # never pings
            silent_for = time.monotonic() - opened
            assert link.closed is not None
            assert link.closed.code == CloseCode.HEARTBEAT_TIMEOUT
            assert "nothing received" in link.closed.reason
            assert silent_for >= 1.0 * 2.5 - 0.1
        gateway = await wait_gateway(
            api, identity.gateway_id, lambda g: not g["linked"], what="marked offline"
        )
        assert gateway["linked"] is False

        # An upgrade without a Hello: the handshake deadline ends the connection.
        host, port = cloud.url.removeprefix("https://").rstrip("/").split(":")
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=identity.ssl_context(), server_hostname=host
        )
        writer.write(
            b"GET /link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        # the protocol's Close saying why, the WebSocket close frame, then end of stream
        rest = await asyncio.wait_for(reader.read(), 60)
        assert b"handshake not completed in time" in rest
        assert b"\x88" in rest
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_last_seen_moves_while_a_websocket_link_is_held(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud", heartbeat_interval=1.0, last_seen_interval=1.0) as cloud,
        cloud.api() as api,
    ):
        token = await create_token(api, name="seen")
        async with running_agent(tmp_path / "gw", code=token["enrollment_code"]) as agent:
            await agent.wait_linked()
            start = await get_gateway(api, agent.gateway_id)
            assert start["tier"] == "ws"
            since = datetime.fromisoformat(start["link_since"])

            async def seen_since_link() -> dict[str, Any] | None:
                gateway = await get_gateway(api, agent.gateway_id)
                moved = datetime.fromisoformat(gateway["last_seen"]) - since
                return gateway if moved >= timedelta(seconds=2) else None

            # The same link all along: last_seen moves on without a relink.
            later = await wait_for(seen_since_link, within=30, what="last_seen to move on")
            assert later["linked"] is True
            assert later["link_since"] == start["link_since"]
            assert agent.agent.status.links_opened == 1
