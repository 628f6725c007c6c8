"""Application-layer probes over an open (TLS) connection: HTTP answer, WebSocket, long-poll.

A TCP connect or even a TLS handshake proves little: middleboxes answer handshakes themselves.
These probes prove that the service answers, with a minimal HTTP/1.1 client that keeps every
byte under our control (no connection pooling, no silent proxy or redirect handling).

The tether cloud serves these probe endpoints, without requiring a client certificate (its TLS
listener asks for one but does not insist, so a site engineer's laptop can run the check):

``GET /.well-known/tether/hello``
    ``200`` with a JSON object whose ``"service"`` is ``"tether"`` (more keys may follow).
``GET /link?probe=1`` with a WebSocket upgrade
    ``101 Switching Protocols``; the server then answers pings and closes when the client does.
``GET /link/poll?probe=1&wait=S``
    the long-poll fallback: the server holds the request for ``S`` seconds (at most 10) and
    answers ``204``; a middlebox that cuts held requests shows up here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "HELLO_PATH",
    "HELLO_SERVICE",
    "LONG_POLL_PATH",
    "PROBE_QUERY",
    "WEBSOCKET_PATH",
    "HttpProtocolError",
    "HttpResponse",
    "WebSocketClosed",
    "hello_service",
    "host_header",
    "long_poll",
    "read_head",
    "request",
    "websocket_ping",
    "websocket_upgrade",
]

HELLO_PATH = "/.well-known/tether/hello"
WEBSOCKET_PATH = "/link"
LONG_POLL_PATH = "/link/poll"
PROBE_QUERY = "probe=1"
HELLO_SERVICE = "tether"

USER_AGENT = "tether-netcheck"
BODY_LIMIT = 64 * 1024
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


class HttpProtocolError(Exception):
    """The peer did not answer like an HTTP/1.1 server."""


class WebSocketClosed(Exception):
    """The WebSocket connection ended (close frame or end of stream)."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def status_line(self) -> str:
        return f"HTTP {self.status} {self.reason}".strip()


def host_header(host: str, port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


async def read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    """Read an HTTP response head: status, reason, headers (lowercase names; last one wins)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionResetError("connection closed before any HTTP response") from None
        raise HttpProtocolError(
            f"connection closed inside the response head: {exc.partial[:80]!r}"
        ) from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("response head too long") from None
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    try:
        return await _chunks(reader, limit)
    except asyncio.IncompleteReadError as exc:
        raise HttpProtocolError(f"chunked body cut after {len(exc.partial)} bytes") from None
    except asyncio.LimitOverrunError:
        raise HttpProtocolError("chunk header too long") from None


async def _chunks(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise HttpProtocolError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            await _skip_trailers(reader)
            return bytes(body)
        chunk = await reader.readexactly(size + 2)
        body += chunk[:-2]
        if len(body) > limit:
            return bytes(body[:limit])


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    for _ in range(64):
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return


async def read_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], *, limit: int = BODY_LIMIT
) -> bytes:
    """Read a response body framed by Content-Length, chunked encoding or end of stream."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpProtocolError(f"bad Content-Length {length!r}")
        wanted = min(int(length), limit)
        try:
            return await reader.readexactly(wanted)
        except asyncio.IncompleteReadError as exc:
            raise HttpProtocolError(
                f"body cut after {len(exc.partial)} of {wanted} bytes"
            ) from None
    return await reader.read(limit)


def build_request(
    method: str, host: str, path: str, headers: Mapping[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    host: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    limit: int = BODY_LIMIT,
) -> HttpResponse:
    """Send one request (``host`` is the Host header value) and read the whole response."""
    all_headers = {"Accept": "*/*", "Connection": "close", **(headers or {})}
    writer.write(build_request(method, host, path, all_headers))
    await writer.drain()
    status, reason, response_headers = await read_head(reader)
    body = (
        b""
        if method == "HEAD" or status in (204, 304)
        else await read_body(reader, response_headers, limit=limit)
    )
    return HttpResponse(status=status, reason=reason, headers=response_headers, body=body)


def hello_service(response: HttpResponse) -> str | None:
    """The ``service`` named by a hello answer, or None if the body is not such a JSON object."""
    try:
        data = json.loads(response.body)
    except ValueError:
        return None
    if isinstance(data, dict):
        service = data.get("service")
        return service if isinstance(service, str) else None
    return None


# --- WebSocket (RFC 6455) ------------------------------------------------------------------


def _accept_for(key: str) -> str:
    digest = hashlib.sha1((key + _WS_GUID).encode("ascii")).digest()  # noqa: S324 (RFC 6455)
    return base64.b64encode(digest).decode("ascii")


async def websocket_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str
) -> HttpResponse:
    """Ask for a WebSocket upgrade; returns the answer (a real upgrade is 101 with the right
    ``Sec-WebSocket-Accept``; anything else is returned with its body for the finding)."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    writer.write(
        build_request(
            "GET",
            host,
            path,
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
            },
        )
    )
    await writer.drain()
    status, reason, headers = await read_head(reader)
    if status != 101:
        body = await read_body(reader, headers, limit=4096) if status not in (204, 304) else b""
        return HttpResponse(status=status, reason=reason, headers=headers, body=body)
    if headers.get("upgrade", "").lower() != "websocket":
        raise HttpProtocolError("101 without 'Upgrade: websocket'")
    if headers.get("sec-websocket-accept") != _accept_for(key):
        raise HttpProtocolError("101 with a wrong Sec-WebSocket-Accept: not a WebSocket server")
    return HttpResponse(status=status, reason=reason, headers=headers)


_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (control frames carry at most 125 bytes)."""
    if len(payload) > 125:
        raise ValueError("control frame payload too long")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if second & 0x80 else b""
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise WebSocketClosed("the connection ended") from None
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


async def websocket_ping(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"tether"
) -> None:
    """Send a ping and wait for the matching pong (frames in between are skipped)."""
    writer.write(_client_frame(_OP_PING, payload))
    await writer.drain()
    for _ in range(1000):
        opcode, data = await _read_frame(reader)
        if opcode == _OP_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            raise WebSocketClosed(f"the server closed the WebSocket (code {code})")
        if opcode == _OP_PONG and data == payload:
            return
    raise HttpProtocolError("no pong among 1000 frames")


def websocket_close_frame() -> bytes:
    return _client_frame(_OP_CLOSE, struct.pack("!H", 1000))


async def long_poll(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    *,
    wait: float,
) -> HttpResponse:
    """Issue a held long-poll request: the server answers after ``wait`` seconds."""
    path = f"{LONG_POLL_PATH}?{PROBE_QUERY}&wait={wait:g}"
    return await request(reader, writer, "GET", host, path)
