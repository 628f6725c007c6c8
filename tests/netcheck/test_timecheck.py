"""SNTP against the test bed's responder, a blocked port and a closed one; HTTP Date parsing."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Callable
from typing import cast

import pytest
from tests.support.testbed.ntpserver import NTPServer

from tether.netcheck.timecheck import NtpError, parse_http_date, sntp_query


async def test_sntp_offset(ntp_factory: Callable[..., NTPServer]) -> None:
    server = ntp_factory(offset=120.0)
    answer = await sntp_query("127.0.0.1", server.port)
    assert answer.offset == pytest.approx(120.0, abs=1.0)
    assert answer.stratum == 2
    assert answer.delay >= 0 or answer.delay == pytest.approx(0, abs=0.01)


async def test_sntp_blocked_port_times_out(ntp_factory: Callable[..., NTPServer]) -> None:
    server = ntp_factory(answer=False)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await sntp_query("127.0.0.1", server.port)
    assert server.requests == 1


async def test_sntp_closed_port_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NtpError) as exc:
        async with asyncio.timeout(5):
            await sntp_query("127.0.0.1", port)
    assert exc.value.kind == "refused"


async def test_sntp_ignores_a_reply_to_someone_else() -> None:
    # A responder that answers with a fixed origin timestamp: not ours, so it must be refused.
    class Liar(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"\x24\x02\x00\x00" + b"\x00" * 44, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Liar, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        with pytest.raises(NtpError, match="does not answer our request"):
            async with asyncio.timeout(5):
                await sntp_query("127.0.0.1", port)
    finally:
        transport.close()


def test_http_date() -> None:
    assert parse_http_date("Sat, 21 Nov 2026 13:43:00 GMT") == dt.datetime(
        2026, 11, 21, 13, 43, tzinfo=dt.UTC
    )
    assert parse_http_date("yesterday") is None
    assert parse_http_date(None) is None
