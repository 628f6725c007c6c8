"""A lean WebSocket server for gateway links, in front of the aiohttp application on one port.

Every connection first meets a :class:`FrontDoor`. It reads the first request head; an upgrade
to ``GET /link`` (no query) becomes a :class:`LinkConnection`, and anything else is handed, bytes
and all, to aiohttp's request handler, which then owns the connection for good (an upgrade on a
connection aiohttp already serves is handled by aiohttp's own WebSocket, so both paths work).

Why not aiohttp's WebSocket for links: a fleet holds tens of thousands of idle links, and each of
aiohttp's costs a request handler, a request, a response, a reader, a task and its coroutine
frames; a heartbeat wakes a task. Here a link is one protocol object and its framing state, a
heartbeat is handled inside ``data_received``, and a task exists only while a message needs the
store. RFC 6455 as a server speaks it: client frames must be masked, no extensions are offered
(telemetry is msgpack; per-message deflate would cost ~64 KiB per link), control frames are short
and whole, fragmented messages are reassembled up to the message limit, and every violation
closes the connection with the status code the RFC names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "FrameParser",
    "FrontDoor",
    "HandshakeRefused",
    "LinkConnection",
    "LinkReceiver",
    "RequestHead",
    "WebSocketProtocolError",
    "accept_key",
    "encode_frame_header",
    "parse_request_head",
]

log = logging.getLogger(__name__)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A request head larger than this is not a link upgrade; aiohttp answers it (431 or 400).
MAX_HEAD = 32 * 1024
#: Seconds a new connection has to send its first request head (as nginx's
#: ``client_header_timeout``). Clients send at once; without a limit, connections that send
#: nothing, or a header line now and then, would be held for good, one descriptor each,
#: before anyone has shown who they are.
HEAD_TIMEOUT = 30.0

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009

#: Reading pauses while this many whole messages wait for the link to take them.
_PAUSE_BACKLOG = 32


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455; the connection closes with :attr:`code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The upgrade is refused with an HTTP status; *headers* go into the answer."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


# -- the upgrade request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    #: Lower-case names; repeated headers joined with ", " (RFC 9110 section 5.3).
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of a header, lower-cased."""
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}


def parse_request_head(raw: bytes) -> RequestHead | None:
    """Parse a request line and headers (without the blank line); None if it is not HTTP/1.1
    as this server reads it (the caller then lets aiohttp answer)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return None  # obsolete folding, a space before the colon, no colon: not ours
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return RequestHead(parts[0], parts[1], parts[2], headers)


def is_link_upgrade(head: RequestHead) -> bool:
    """A WebSocket upgrade of ``/link`` itself (probes, ``/link?probe=1``, stay with aiohttp)."""
    return (
        head.method == "GET"
        and "websocket" in head.tokens("upgrade")
        and head.path == "/link"
        and not head.query
    )


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # noqa: S324


def check_upgrade(head: RequestHead) -> str:
    """Return the ``Sec-WebSocket-Accept`` value, or raise :class:`HandshakeRefused`."""
    if head.version != "HTTP/1.1":
        raise HandshakeRefused(400, "a WebSocket upgrade needs HTTP/1.1")
    if "upgrade" not in head.tokens("connection"):
        raise HandshakeRefused(400, "Connection header must contain 'upgrade'")
    if head.headers.get("sec-websocket-version") != "13":
        raise HandshakeRefused(
            426, "only WebSocket version 13 is spoken", (("Sec-WebSocket-Version", "13"),)
        )
    key = head.headers.get("sec-websocket-key", "")
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        raise HandshakeRefused(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return accept_key(key)


def _safe_header_value(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:512]


def http_response(
    status: int, reason: str, headers: tuple[tuple[str, str], ...] = (), body: str = ""
) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    phrases = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        408: "Request Timeout",
        426: "Upgrade Required",
        503: "Service Unavailable",
    }
    payload = body.encode()
    lines = [f"HTTP/1.1 {status} {phrases.get(status, 'Error')}"]
    lines += [f"{name}: {_safe_header_value(value)}" for name, value in headers]
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1", "replace") + payload


def switching_protocols(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


# -- frames -------------------------------------------------------------------------------------

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def encode_frame_header(opcode: int, length: int) -> bytes:
    """The header of a whole, unmasked (server-to-client) frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return _H16.pack(0x80 | opcode, 126, length)
    return _H64.pack(0x80 | opcode, 127, length)


def close_payload(code: int, reason: str = "") -> bytes:
    raw = reason.encode("utf-8")[:120]
    return struct.pack("!H", code) + raw.decode("utf-8", "ignore").encode()


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


#: What :meth:`FrameParser.feed` yields: a whole message, a ping to answer, or the peer's close.
MESSAGE = 0
PING = 1
CLOSE = 2


class FrameParser:
    """Client-to-server frames in, whole messages and control events out (sans I/O)."""

    __slots__ = ("_buffer", "_fragment_size", "_fragments", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_size = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Parse what arrived; raise :class:`WebSocketProtocolError` on a violation."""
        buf = self._buffer + data if self._buffer else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, "reserved bits set: no extension was negotiated"
                )
            if not b1 & 0x80:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            length = b1 & 0x7F
            head = 6
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 14
                if length >> 63:
                    raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "frame length too large")
            if opcode >= 0x8:
                if not b0 & 0x80 or length > 125:
                    raise WebSocketProtocolError(
                        CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes"
                    )
            elif length + self._fragment_size > self.max_message:
                raise WebSocketProtocolError(
                    CLOSE_MESSAGE_TOO_BIG,
                    f"message of more than {self.max_message} bytes",
                )
            if end - pos < head + length:
                break
            start = pos + head
            payload = _unmask(buf[start : start + length], buf[start - 4 : start])
            pos = start + length
            self._frame(b0 & 0x80, opcode, payload, out)
        self._buffer = buf[pos:] if pos < end else b""
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode in (OP_BINARY, OP_TEXT):
            if self._fragments is not None:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, "a new message began inside a fragmented one"
                )
            if fin:
                out.append((MESSAGE, payload))
            else:
                self._fragments = [payload]
                self._fragment_size = len(payload)
        elif opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise WebSocketProtocolError(
                    CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue"
                )
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if fin:
                out.append((MESSAGE, b"".join(self._fragments)))
                self._fragments = None
                self._fragment_size = 0
        elif opcode == OP_PING:
            out.append((PING, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            if len(payload) == 1:
                raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, "close frame of one byte")
            if len(payload) > 2:
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise WebSocketProtocolError(
                        CLOSE_INVALID_DATA, "close reason is not UTF-8"
                    ) from None
            out.append((CLOSE, payload))
        else:
            raise WebSocketProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode 0x{opcode:x}")


# -- connections --------------------------------------------------------------------------------


class LinkReceiver(Protocol):
    """What a :class:`LinkConnection` drives: the link's protocol logic."""

    def frame_received(self, data: bytes) -> None: ...

    def transport_lost(self) -> None: ...


class LinkConnection(asyncio.Protocol):
    """One upgraded link connection: WebSocket framing over the TLS transport."""

    __slots__ = ("_closing", "_drained", "_paused", "parser", "receiver", "transport")

    def __init__(self, transport: asyncio.Transport, max_message: int) -> None:
        self.transport = transport
        self.parser = FrameParser(max_message)
        self.receiver: LinkReceiver | None = None
        self._closing = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.parser.feed(data)
        except WebSocketProtocolError as exc:
            log.warning("link connection closed: %s", exc.reason)
            self.close_transport(exc.code, exc.reason)
            return
        for kind, payload in events:
            if kind == MESSAGE:
                if self.receiver is not None:
                    self.receiver.frame_received(payload)
            elif kind == PING:
                self.transport.write(encode_frame_header(OP_PONG, len(payload)) + payload)
            else:  # CLOSE: answer with the same code and end the connection
                code = struct.unpack("!H", payload[:2])[0] if payload else CLOSE_NORMAL
                self.close_transport(code if 1000 <= code < 5000 else CLOSE_NORMAL)
                return
            if self._closing:
                return

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.transport_lost()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- what the link calls -------------------------------------------------------------------

    def write_frames(self, frames: list[bytes]) -> None:
        if self._closing:
            return
        if len(frames) == 1:
            frame = frames[0]
            if len(frame) < 4096:
                self.transport.write(encode_frame_header(OP_BINARY, len(frame)) + frame)
            else:
                self.transport.writelines((encode_frame_header(OP_BINARY, len(frame)), frame))
            return
        # Several frames: one write, so one TLS record and one send carry them all.
        parts: list[bytes] = []
        for frame in frames:
            parts.append(encode_frame_header(OP_BINARY, len(frame)))
            parts.append(frame)
        self.transport.writelines(parts)

    async def drain(self) -> None:
        """Wait while the peer reads slower than we write."""
        if not self._paused or self._closing:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def pause_reading(self) -> None:
        if not self._closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._closing:
            self.transport.resume_reading()

    def is_closing(self) -> bool:
        return self._closing

    def close_transport(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and end the connection once written."""
        if self._closing:
            return
        self._closing = True
        payload = close_payload(code, reason)
        self.transport.write(encode_frame_header(OP_CLOSE, len(payload)) + payload)
        self.transport.close()


#: Opens a link on an accepted upgrade: check who is calling (raise HandshakeRefused), then
#: return the receiver that takes the connection's messages.
LinkOpener = Callable[[RequestHead, LinkConnection], Awaitable[LinkReceiver]]


class FrontDoor(asyncio.Protocol):
    """The first protocol of every connection: a link upgrade, or aiohttp's.

    The first request head must arrive within *head_timeout* seconds of the connection, else
    the connection is closed (408 if part of a head came).
    """

    __slots__ = (
        "_head",
        "_head_timeout",
        "_http",
        "_max_message",
        "_opener",
        "_tasks",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        http: Callable[[], asyncio.Protocol],
        opener: LinkOpener,
        *,
        max_message: int,
        tasks: set[asyncio.Task[None]],
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self._http = http
        self._opener = opener
        self._max_message = max_message
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._tasks = tasks
        self._head_timeout = head_timeout
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is a Transport in all but its class hierarchy.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._head_timeout, self._head_timed_out
        )

    def _head_timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not self:
            return
        if self._head:
            reason = f"no whole request head within {self._head_timeout:g} s"
            transport.write(http_response(408, reason, body=reason + "\n"))
        self._head = b""
        transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._hand_over()
            return
        head = parse_request_head(self._head[:end])
        if head is None or not is_link_upgrade(head):
            self._hand_over()
            return
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        connection = LinkConnection(transport, self._max_message)
        transport.set_protocol(connection)
        if len(self._head) > end + 4:
            # A client sends nothing before the 101; bytes here break the upgrade's order.
            connection.close_transport(CLOSE_PROTOCOL_ERROR, "data before the upgrade completed")
            return
        transport.pause_reading()  # nothing is read until the link is open
        task = asyncio.get_running_loop().create_task(self._open(head, connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, head: RequestHead, connection: LinkConnection) -> None:
        transport = connection.transport
        try:
            accept = check_upgrade(head)
            receiver = await self._opener(head, connection)
        except HandshakeRefused as exc:
            if not transport.is_closing():
                transport.write(
                    http_response(
                        exc.status, exc.reason, exc.headers, body=exc.reason.rstrip("\n") + "\n"
                    )
                )
                transport.close()
            connection._closing = True
            return
        except Exception:  # a store failure: refuse this upgrade, the agent retries later
            log.exception("link upgrade failed")
            if not transport.is_closing():
                transport.write(http_response(503, "link not available now, retry later"))
                transport.close()
            connection._closing = True
            return
        if transport.is_closing():
            receiver.transport_lost()
            return
        transport.write(switching_protocols(accept))
        connection.receiver = receiver
        transport.resume_reading()

    def _hand_over(self) -> None:
        self._stop_timer()
        transport = self._transport
        assert transport is not None
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(self._head)
        self._head = b""

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._transport = None
