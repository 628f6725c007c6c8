"""The one TLS port with real certificates on loopback: TLS on the socket (tlsserver), the front
door handing requests to aiohttp or opening links itself (wsserver)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.cloud.tls import server_ssl_context
from tether.cloud.tlsserver import TLSServer, start_tls_server
from tether.cloud.wsserver import FrontDoor, HandshakeRefused, LinkConnection, RequestHead
from tether.pki.ca import CertificateAuthority
from tether.pki.estclient import client_ssl_context
from tether.pki.keys import build_csr, generate_private_key, private_key_pem


@dataclass
class Pki:
    ca_path: Path
    server: ssl.SSLContext
    client: ssl.SSLContext
    anonymous: ssl.SSLContext
    client_der: bytes


def _client_credentials(ca: CertificateAuthority, gateway_id: str, pem: Path) -> tuple[Path, bytes]:
    """A client certificate from *ca* with its key in one 0600 PEM file; returns the file and
    the certificate's DER."""
    key = generate_private_key()
    cert = ca.issue_client(
        build_csr(key), gateway_id=gateway_id, lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    pem.write_bytes(cert.public_bytes(Encoding.PEM) + private_key_pem(key))
    pem.chmod(0o600)
    return pem, cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.load_or_create(root / "ca")
    creds = ca.server_credentials(root / "server", ["127.0.0.1"])
    client_pem, client_der = _client_credentials(ca, "gw-00000000000000aa", root / "client.pem")
    ca_path = root / "ca.pem"
    ca_path.write_bytes(ca.certificate_pem())
    return Pki(
        ca_path,
        server_ssl_context(cert_path=creds.cert_path, key_path=creds.key_path, ca_path=ca_path),
        client_ssl_context(ca_path, client_pem),
        client_ssl_context(ca_path),
        client_der,
    )


class Echo:
    """A link receiver that echoes every message, as :class:`WebSocketLink` would answer."""

    def __init__(self, connection: LinkConnection, peer_der: bytes | None) -> None:
        self.connection = connection
        self.peer_der = peer_der
        self.lost = asyncio.Event()

    def frame_received(self, data: bytes) -> None:
        self.connection.write_frames([data])

    def transport_lost(self) -> None:
        self.lost.set()


@dataclass
class Door:
    url: str
    server: TLSServer
    receivers: list[Echo] = field(default_factory=list)
    fallback_upgrades: int = 0
    refuse: str | None = None


@pytest.fixture
async def door(pki: Pki) -> AsyncIterator[Door]:
    state: dict[str, Door] = {}

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    async def link_on_aiohttp(request: web.Request) -> web.StreamResponse:
        state["door"].fallback_upgrades += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/link", link_on_aiohttp)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    http = runner.server
    assert http is not None
    tasks: set[asyncio.Task[None]] = set()

    async def opener(head: RequestHead, connection: LinkConnection) -> Echo:
        if state["door"].refuse is not None:
            raise HandshakeRefused(403, state["door"].refuse, (("X-Tether-Error", "refused"),))
        ssl_object = connection.transport.get_extra_info("ssl_object")
        receiver = Echo(connection, ssl_object.getpeercert(binary_form=True))
        state["door"].receivers.append(receiver)
        return receiver

    server = start_tls_server(
        lambda: FrontDoor(http, opener, max_message=4 << 20, tasks=tasks),
        "127.0.0.1",
        0,
        ctx=pki.server,
        handshake_timeout=0.5,
    )
    port = server.sockets[0].getsockname()[1]
    state["door"] = Door(f"https://127.0.0.1:{port}", server)
    yield state["door"]
    server.close()
    server.abort_all()
    await runner.cleanup()


async def test_plain_requests_go_to_aiohttp_and_keep_alive_works(pki: Pki, door: Door) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # the later ones reuse the connection aiohttp now owns
            async with http.get(f"{door.url}/hello", ssl=pki.client) as resp:
                assert resp.status == 200
                assert await resp.text() == "hello\n"
    assert door.receivers == []


async def test_a_link_upgrade_is_taken_by_the_front_door(pki: Pki, door: Door) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{door.url}/link", ssl=pki.client, autoping=False) as ws,
    ):
        await ws.send_bytes(b"frame-1")
        assert (await ws.receive(timeout=5)).data == b"frame-1"
        await ws.ping(b"hb")
        pong = await ws.receive(timeout=5)
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"hb")
        big = bytes(range(256)) * 8192  # 2 MiB: many TLS records each way, write back-pressure
        await ws.send_bytes(big)
        assert (await ws.receive(timeout=30)).data == big
    assert door.fallback_upgrades == 0
    assert len(door.receivers) == 1
    assert door.receivers[0].peer_der == pki.client_der
    await asyncio.wait_for(door.receivers[0].lost.wait(), 5)


async def test_an_upgrade_after_other_requests_goes_to_aiohttps_websocket(
    pki: Pki, door: Door
) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{door.url}/hello", ssl=pki.client) as resp:
            assert resp.status == 200
        async with http.ws_connect(f"{door.url}/link", ssl=pki.client) as ws:
            await ws.send_bytes(b"via aiohttp")
            assert (await ws.receive(timeout=5)).data == b"via aiohttp"
    assert door.fallback_upgrades == 1
    assert door.receivers == []


async def test_a_refused_upgrade_answers_its_status_and_reason(pki: Pki, door: Door) -> None:
    door.refuse = "gateway or certificate has been revoked"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(f"{door.url}/link", ssl=pki.client)
    assert caught.value.status == 403
    assert caught.value.headers is not None
    assert caught.value.headers["X-Tether-Error"] == "refused"


async def test_a_client_without_a_certificate_reaches_the_opener_with_none(
    pki: Pki, door: Door
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{door.url}/link", ssl=pki.anonymous) as ws,
    ):
        await ws.send_bytes(b"x")
        assert (await ws.receive(timeout=5)).data == b"x"
    assert door.receivers[0].peer_der is None


async def test_a_protocol_violation_closes_the_link_with_its_code(pki: Pki, door: Door) -> None:
    host, port = door.url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=pki.client, server_hostname="127.0.0.1"
    )
    writer.write(
        b"GET /link HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(b"\x82\x03abc")  # an unmasked client frame
    close = await asyncio.wait_for(reader.read(), 5)  # the close frame, then end of stream
    assert close[0] == 0x88  # one whole close frame, then nothing
    assert close[1] == len(close) - 2
    assert int.from_bytes(close[2:4], "big") == 1002
    assert b"masked" in close[4:]
    writer.close()
    await asyncio.wait_for(door.receivers[0].lost.wait(), 5)


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout(door: Door) -> None:
    host, port = door.url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))  # TCP only, no ClientHello
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert len(door.server) == 0


async def test_a_wrong_certificate_fails_the_handshake_and_the_server_goes_on(
    pki: Pki, door: Door, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    pem, _ = _client_credentials(other, "gw-00000000000000bb", tmp_path / "foreign.pem")
    foreign = client_ssl_context(pki.ca_path, pem)
    async with aiohttp.ClientSession() as http:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with http.get(f"{door.url}/hello", ssl=foreign) as resp:
                await resp.read()
        async with http.get(f"{door.url}/hello", ssl=pki.client) as resp:
            assert resp.status == 200
    assert isinstance(x509.load_der_x509_certificate(pki.client_der), x509.Certificate)


def _refused_read(ctx: ssl.SSLContext, host: str, port: int) -> BaseException:
    """Connect with *ctx*, send a request at once (TLS 1.3: before the server has judged the
    certificate), send more once the server has ended its side of the TCP connection, then
    read; return what the send or the read raised."""
    raw = socket.create_connection((host, port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"POST /hello HTTP/1.1\r\nHost: cloud\r\n\r\n" + bytes(16_384))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            if state != _TCP_ESTABLISHED:
                break
            time.sleep(0.005)
        try:
            # Still sending when the refusal comes, as a client uploading a body would be.
            tls.sendall(bytes(16_384))
            tls.recv(1024)
        except (ssl.SSLError, OSError) as exc:
            return exc
    raise AssertionError("the server answered a refused certificate")


_TCP_ESTABLISHED = 1


async def test_a_refused_certificate_reaches_the_client_as_its_alert(
    pki: Pki, door: Door, tmp_path: Path
) -> None:
    """The refusal arrives as the alert naming why, not as a connection reset: with the
    client's request unread, a plain close would reset the connection, and a reset makes the
    client's kernel drop the alert before the client reads it."""
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    pem, _ = _client_credentials(other, "gw-00000000000000cc", tmp_path / "foreign.pem")
    foreign = client_ssl_context(pki.ca_path, pem)
    host, port = door.url.removeprefix("https://").split(":")
    for _ in range(3):
        refused = await asyncio.to_thread(_refused_read, foreign, host, int(port))
        assert isinstance(refused, ssl.SSLError), repr(refused)
        assert refused.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert len(door.server) == 0


def test_the_listener_binds_ipv4_and_ipv6(pki: Pki) -> None:
    async def bind(host: str) -> int:
        server = start_tls_server(asyncio.Protocol, host, 0, ctx=pki.server)
        family = server.sockets[0].family
        server.close()
        assert server.sockets == ()
        return family

    assert asyncio.run(bind("127.0.0.1")) == socket.AF_INET
    if socket.has_ipv6:
        assert asyncio.run(bind("::1")) == socket.AF_INET6
