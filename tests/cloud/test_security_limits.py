"""Slow and hoarding clients against a real cloud on loopback: a connection that sends nothing,
a request head or an enrollment body that trickles in, an idle kept-alive connection are all
closed after their limit (shortened here), while requests made in time, even held ones, are
served; probes, which need no certificate, are held at most a few at once per address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from tests.support.cloudproc import Cloud, running_cloud

from tether.cloud import app, est
from tether.pki.est import SIMPLEENROLL_PATH

LIMIT = 0.5
WITHIN = 15.0  # bound of every wait for the cloud to act


@pytest.fixture
async def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    monkeypatch.setattr(app, "HEAD_TIMEOUT", LIMIT)
    monkeypatch.setattr(app, "KEEPALIVE_TIMEOUT", LIMIT)
    monkeypatch.setattr(est, "BODY_TIMEOUT", LIMIT)
    async with running_cloud(tmp_path / "cloud") as running:
        yield running


async def _connect(cloud: Cloud) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", cloud.port, ssl=cloud.ssl_context())


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the cloud sends until it closes the connection (bounded)."""
    return await asyncio.wait_for(reader.read(), WITHIN)


async def test_a_connection_that_sends_nothing_is_closed(cloud: Cloud) -> None:
    reader, writer = await _connect(cloud)
    try:
        assert await _until_closed(reader) == b""
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/link", "/api/v1/whoami"])
async def test_a_request_head_that_never_ends_is_answered_408_and_closed(
    cloud: Cloud, path: str
) -> None:
    reader, writer = await _connect(cloud)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n".encode())
        await writer.drain()
        answer = await _until_closed(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_enrollment_body_that_never_ends_is_answered_408(cloud: Cloud) -> None:
    reader, writer = await _connect(cloud)
    try:
        writer.write(
            f"POST {SIMPLEENROLL_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Authorization: Bearer guess\r\nContent-Length: 4000\r\n\r\nMIIB".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), WITHIN)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_kept_alive_connection_is_closed(cloud: Cloud) -> None:
    reader, writer = await _connect(cloud)
    try:
        writer.write(b"GET /.well-known/tether/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WITHIN)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), WITHIN)
        assert await _until_closed(reader) == b""
    finally:
        writer.close()


async def test_a_request_made_in_time_is_served_even_when_held_past_the_limits(
    cloud: Cloud,
) -> None:
    reader, writer = await _connect(cloud)
    try:
        # The long-poll probe holds its answer 4 times the shortened limits.
        writer.write(
            f"GET /link/poll?wait={4 * LIMIT} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), WITHIN)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 204 ")


@pytest.fixture
async def few_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    monkeypatch.setattr(app, "PROBES_PER_SOURCE", 2)
    async with running_cloud(tmp_path / "cloud") as running:
        yield running


async def test_probes_held_from_one_address_are_bounded(few_probes: Cloud) -> None:
    cloud = few_probes
    url = f"{cloud.url}/link?probe=1"
    async with aiohttp.ClientSession(trust_env=False) as http:
        first = await http.ws_connect(url, ssl=cloud.ssl_context())
        second = await http.ws_connect(url, ssl=cloud.ssl_context())
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, ssl=cloud.ssl_context())
        assert refused.value.status == 503
        async with http.get(f"{cloud.url}/link/poll?wait=0", ssl=cloud.ssl_context()) as held:
            assert held.status == 503
        await first.close()
        # The slot is given back once the cloud has seen the close: a new probe then passes.
        third = await _probe_when_free(http, url, cloud)
        await second.close()
        await third.close()


async def _probe_when_free(
    http: aiohttp.ClientSession, url: str, cloud: Cloud
) -> aiohttp.ClientWebSocketResponse:
    deadline = asyncio.get_running_loop().time() + WITHIN
    while True:
        try:
            return await http.ws_connect(url, ssl=cloud.ssl_context())
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status != 503 or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
