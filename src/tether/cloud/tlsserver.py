"""The cloud's TLS listener: OpenSSL on the socket itself, driven by the event loop's readiness.

Why not ``loop.create_server(ssl=...)``: the event loop's TLS (uvloop's as the standard library's)
runs OpenSSL over two memory BIOs and reads through a 256 KiB buffer per connection. That costs
~38 KiB of resident memory per idle connection on this stack before any application state, about
1.5 times what a C broker holding the same mutual-TLS link costs. Here each connection is an
:class:`ssl.SSLSocket` in non-blocking mode (OpenSSL reads and writes the socket directly, and
releases its record buffers while idle), watched with ``add_reader``/``add_writer``; one read
buffer serves the whole process. :class:`TLSTransport` is an :class:`asyncio.Transport`, so
aiohttp's request handler and the link's own protocol run on it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["STATS", "TLSServer", "TLSStats", "TLSTransport", "start_tls_server"]

log = logging.getLogger(__name__)

#: Plaintext read per readiness callback at most, so one busy link cannot starve the others.
_READ_BUDGET = 256 * 1024
_READ_CHUNK = 64 * 1024  # at least one whole record: nothing decrypted is left in OpenSSL
_FULL_RECORD = 16 * 1024  # TLS plaintext records are at most 16 KiB
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024
#: Connections accepted per readiness callback of the listening socket.
_ACCEPT_BATCH = 128
_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: After a refused handshake, how long the alert may take to reach the client (see _linger).
_LINGER = 2.0


class TLSStats:
    """This process's TLS handshakes: completed, refused (by OpenSSL's reason, at most
    :attr:`REASONS` distinct ones, then ``other``), timed out; and the times accepting paused
    because the process ran out of descriptors."""

    REASONS = 32

    def __init__(self) -> None:
        self.completed = 0
        self.failed: dict[str, int] = {}
        self.timed_out = 0
        self.accept_pauses = 0

    def refused(self, exc: BaseException) -> None:
        reason = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLError) and isinstance(reason, str) and reason:
            label = reason.lower().replace("_", "-")
        elif isinstance(exc, ssl.SSLError):
            label = "tls-error"
        else:
            label = "connection-error"
        if label not in self.failed and len(self.failed) >= self.REASONS:
            label = "other"
        self.failed[label] = self.failed.get(label, 0) + 1


#: The process's figures (one event loop serves every connection of a process).
STATS = TLSStats()


class TLSTransport(asyncio.Transport):
    """One accepted TLS connection (server side)."""

    __slots__ = (
        "_closing",
        "_connected",
        "_fd",
        "_high",
        "_loop",
        "_low",
        "_protocol",
        "_protocol_paused",
        "_reading",
        "_server",
        "_sock",
        "_timer",
        "_wbuf",
        "_writing",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.Protocol,
        server: TLSServer,
        handshake_timeout: float,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._server = server
        self._closing = False
        self._connected = False
        self._reading = True
        self._writing = False  # a writer callback is installed
        self._protocol_paused = False
        self._wbuf = bytearray()
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            handshake_timeout, self._handshake_timed_out
        )
        loop.add_reader(self._fd, self._handshake)
        self._handshake()

    # -- handshake -----------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch_write(False, self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._watch_write(True, self._handshake)
            return
        except ssl.SSLError as exc:
            log.debug("TLS handshake failed: %s", exc)
            STATS.refused(exc)
            self._linger()
            return
        except OSError as exc:
            log.debug("TLS handshake failed: %s", exc)
            STATS.refused(exc)
            self._teardown(None, notify=False)
            return
        STATS.completed += 1
        self._watch_write(False, self._handshake)
        self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connected = True
        self._server.connection_made(self)
        self._protocol.connection_made(self)
        if self._reading and not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)
            if self._sock.pending():
                self._loop.call_soon(self._read_ready)

    def _linger(self) -> None:
        """Close a refused handshake so that the client can read why.

        OpenSSL has written its alert (``unknown ca``, ``certificate expired``…) to the socket.
        In TLS 1.3 the client has by then finished its side and sent its request, which sits
        unread here; closing now would answer it with a TCP reset, and a reset makes the
        client's kernel discard the alert unread: the agent would see "connection reset"
        instead of the reason. So send FIN after the alert, discard what the client sends
        until it closes too, and close for good then or after :data:`_LINGER` seconds.
        """
        sock = self._sock
        self._watch_write(False, self._handshake)
        self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
        self._closing = True
        try:
            sock.shutdown(socket.SHUT_WR)  # the TLS layer is dropped: a plain TCP half-close
        except OSError:
            self._teardown(None, notify=False)
            return
        self._timer = self._loop.call_later(_LINGER, self._teardown, None)
        self._loop.add_reader(self._fd, self._discard)

    def _discard(self) -> None:
        try:
            data = self._sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._teardown(None, notify=False)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self._connected:
            log.debug("TLS handshake timed out")
            STATS.timed_out += 1
            self._teardown(None, notify=False)

    def _watch_write(self, on: bool, callback: Callable[[], None]) -> None:
        if on and not self._writing:
            self._loop.add_writer(self._fd, callback)
            self._writing = True
        elif not on and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    # -- reading -------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        if not self._reading or self._closing:
            return
        chunks: list[bytes] = []
        total = 0
        eof = False
        buffer = self._server.buffer
        view = self._server.view
        sock = self._sock
        try:
            while total < _READ_BUDGET:
                n = sock.recv_into(buffer)
                if n == 0:
                    eof = True
                    break
                chunks.append(bytes(view[:n]))
                total += n
                # OpenSSL reads one record per call (no read-ahead), and the buffer holds the
                # largest, so a read returns a whole record and nothing decrypted stays behind.
                # A short one is most likely all there is (a heartbeat, a command update): stop
                # rather than pay a failing read; if another record is waiting, it is still in
                # the socket, which stays readable, and this runs again at once.
                if n < _FULL_RECORD:
                    break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except (ssl.SSLError, OSError) as exc:
            if chunks:
                self._deliver(chunks)
            self._fatal(exc)
            return
        if chunks:
            self._deliver(chunks)
        if eof and not self._closing:
            keep_open = self._protocol.eof_received()
            if not keep_open:
                self.close()
            return
        if self._reading and not self._closing and total >= _READ_BUDGET:
            self._loop.call_soon(self._read_ready)  # the budget ran out: the rest comes next

    def _deliver(self, chunks: list[bytes]) -> None:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self._connected and not self._closing:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self._connected and not self._closing:
                self._loop.add_reader(self._fd, self._read_ready)
                self._loop.call_soon(self._read_ready)  # OpenSSL may hold read records

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._wbuf:
            self._wbuf += data
            self._check_high_water()
            return
        try:
            n = self._sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            n = 0  # the same bytes are offered again from the buffer, as OpenSSL requires
        except (ssl.SSLError, OSError) as exc:
            self._fatal(exc)
            return
        if n < len(data):
            self._wbuf = bytearray(memoryview(data)[n:])
            self._watch_write(True, self._write_ready)
            self._check_high_water()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _flush(self) -> None:
        try:
            while self._wbuf:
                # Retried with the same leading bytes after a WANT_WRITE, as OpenSSL requires
                # (the buffer may move and grow: Python sets ACCEPT_MOVING_WRITE_BUFFER).
                n = self._sock.send(self._wbuf)
                del self._wbuf[:n]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            self._watch_write(True, self._write_ready)
            return
        except (ssl.SSLError, OSError) as exc:
            self._wbuf.clear()
            self._fatal(exc)
            return
        self._watch_write(False, self._write_ready)

    def _write_ready(self) -> None:
        self._flush()
        if self._protocol_paused and len(self._wbuf) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if self._closing and not self._wbuf and self._sock.fileno() >= 0:
            self._teardown(None)

    def _check_high_water(self) -> None:
        if not self._protocol_paused and len(self._wbuf) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _HIGH_WATER if high is None else high
        self._low = (self._high // 4) if low is None else low
        self._check_high_water()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    # -- ending --------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close once what is buffered is written."""
        if self._closing:
            return
        self._closing = True
        if self._reading and self._connected:
            self._loop.remove_reader(self._fd)
        if not self._wbuf:
            self._teardown(None)

    def abort(self) -> None:
        self._wbuf.clear()
        self._closing = True
        self._teardown(None)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("TLS connection failed: %s", exc)
        self._wbuf.clear()
        self._closing = True
        self._teardown(exc if isinstance(exc, Exception) else None)

    def _teardown(self, exc: Exception | None, *, notify: bool = True) -> None:
        sock = self._sock
        if sock.fileno() < 0:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._watch_write(False, self._write_ready)
        if self._connected and exc is None:
            # Best effort close_notify; a peer that is gone does not matter here.
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                sock.unwrap()
        sock.close()
        if self._connected:
            self._server.connection_lost(self)
            if notify:
                self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- the rest of the Transport interface ---------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        if name == "ssl_object":
            return sock
        if name == "sslcontext":
            return sock.context
        if name == "socket":
            return sock
        if name == "peercert":
            return sock.getpeercert()
        if name == "cipher":
            return sock.cipher()
        if name == "compression":
            return sock.compression()
        with contextlib.suppress(OSError):
            if name == "peername":
                return sock.getpeername()
            if name == "sockname":
                return sock.getsockname()
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class TLSServer:
    """A listening socket whose connections become :class:`TLSTransport` objects."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        handshake_timeout: float = 30.0,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._ctx = ctx
        self._factory = protocol_factory
        self._handshake_timeout = handshake_timeout
        self._connections: set[TLSTransport] = set()
        self._serving = False
        self._resume: asyncio.TimerHandle | None = None
        # One read buffer for every connection: callbacks of one loop never overlap.
        self.buffer = bytearray(_READ_CHUNK)
        self.view = memoryview(self.buffer)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock.fileno() >= 0 else ()

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRNOS:
                    # Out of descriptors: stop accepting for a moment instead of spinning.
                    log.error("cannot accept connections: %s; pausing for 1 s", exc)
                    STATS.accept_pauses += 1
                    self._loop.remove_reader(self._sock.fileno())
                    self._resume = self._loop.call_later(1.0, self._resume_accepting)
                    return
                raise
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self._ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS wrap failed: %s", exc)
                conn.close()
                continue
            TLSTransport(self._loop, tls, self._factory(), self, self._handshake_timeout)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def connection_made(self, transport: TLSTransport) -> None:
        self._connections.add(transport)

    def connection_lost(self, transport: TLSTransport) -> None:
        self._connections.discard(transport)

    def close(self) -> None:
        """Stop listening; open connections are left to their protocols."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._sock.close()

    def abort_all(self) -> None:
        for transport in list(self._connections):
            transport.abort()

    async def wait_closed(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._connections)


def _listening_socket(host: str, port: int, *, backlog: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "" if host in ("", "0.0.0.0") else host
    sock = socket.create_server(
        (bind_host, port),
        family=family,
        backlog=backlog,
        reuse_port=reuse_port,
        dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
    )
    sock.setblocking(False)
    return sock


def start_tls_server(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    ctx: ssl.SSLContext,
    backlog: int = 4096,
    reuse_port: bool = False,
    handshake_timeout: float = 30.0,
) -> TLSServer:
    """Listen on *host*:*port* and serve TLS connections with *protocol_factory*."""
    sock = _listening_socket(host, port, backlog=backlog, reuse_port=reuse_port)
    server = TLSServer(
        asyncio.get_running_loop(),
        sock,
        ctx,
        protocol_factory,
        handshake_timeout=handshake_timeout,
    )
    server.start()
    return server
