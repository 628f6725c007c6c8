"""Link capacity: what N idle mutual-TLS links cost the cloud, next to Mosquitto and a bare echo.

Three servers are measured one after the other, each alone in its own process (psutil reads its
RSS and CPU), each driven by load processes of the same make (uvloop, one TLS client certificate
per link, at most 19,000 links per process):

* ``tether``: ``tether cloud serve`` as a subprocess; every link speaks the real protocol
  (:class:`~tether.protocol.session.LinkSession`: Hello → Welcome, Ping at the heartbeat
  interval) over aiohttp's WebSocket client. Push latency is the operator API's
  ``POST /api/v1/gateways/{id}/commands`` start → the ``CommandRequest`` arriving at the load
  client, which answers ``running`` then ``succeeded`` like an agent. That includes the HTTPS
  request, the token check and the durable commit of the command with its audit entry, none of
  which Mosquitto's figure holds; so a second figure, *cloud-side push latency*, starts when the
  command is committed: the command's ``created_at`` plus the ``queue`` step of the answer's
  ``Server-Timing`` header (the transaction, measured from that stamp) → the ``CommandRequest``
  arriving (wall clock and monotonic clock are shared by the processes of one machine). The
  answer's other ``Server-Timing`` steps (auth, push, mark, total) are recorded beside it.
* ``ws_echo``: a bare aiohttp WebSocket echo server over the same TLS 1.3 mutual TLS with the
  same certificates; clients send a WebSocket ping at the heartbeat interval. Latency is the
  echo round trip of a small binary message.
* ``mosquitto``: Debian's Eclipse Mosquitto, TLS 1.3, client certificates required; clients
  are a minimal MQTT 3.1.1 implementation (CONNECT with keepalive = heartbeat interval, PINGREQ,
  SUBSCRIBE QoS 1, PUBACK). Latency is QoS 1 publish start → the subscriber receiving it.

Figures per server: RSS per link (after N links minus before, over N), CPU per handshake (the
server's CPU seconds during the connect phase over N; TLS, upgrade and, for tether, the link
handshake with its store writes), idle CPU holding the links over a window of heartbeats, and
push latency p50/p99 with every link open (500 samples, one at a time with a 20 ms pause
between them, for every system alike: each push meets an otherwise idle server, as an operator's
commands would, instead of the previous command's follow-up work).

Then a *reconnect storm*: every load process resets all its open links at once, as a NAT or
firewall reset would (zero linger and the TCP transport aborted: an RST, no TLS close_notify, no
WebSocket close or MQTT DISCONNECT), and redials them all together through the same concurrency
gate as the first connect, while the server also has to end N dead links. A failed redial waits
the agent's backoff (:func:`~tether.protocol.backoff.backoff_delays`: full jitter, here from 0.5 s
capped at 5 s) and tries again; a link gives up only 120 s after the drop. Each relinked link is
held (heartbeats) again at once. Recorded: ``storm_seconds`` (the drop → the last link relinked,
or given up; the slowest load process), ``storm_relinked``, ``storm_gave_up``, ``storm_attempts``
and the failed attempts by kind, and ``storm_cpu_ms_per_link``: the server's CPU from the drop
until every link relinked and it settled, over N. The links are counted open once more after it.

The three systems run one after the other, and the whole sequence runs ``--rounds`` times (3 by
default): one run on this shared 2-core machine differs from the next by up to a fifth, so each
ratio is taken within a round (the systems measured minutes apart) and the median round's is
judged; every round is recorded, with how many met each target.

Printed as a table with the ratio to Mosquitto and the DESIGN.md target (a multiple of
Mosquitto's figure, or for the storm's time and give-ups a limit on tether's own figure), and
recorded with the machine in ``bench/results/link_capacity.json``.

Run: ``python -m bench link_capacity`` (10,000 links, 30 s heartbeat, several minutes), or
``python -m bench.link_capacity --links 1000 --heartbeat 10 --systems tether,mosquitto``;
``--keep DIR`` keeps the servers' logs and data.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import importlib.metadata
import math
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

import aiohttp
import psutil
import uvloop
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives.serialization import Encoding

import bench
from tether import __version__ as tether_version
from tether.cloud.tls import server_ssl_context
from tether.pki.ca import CertificateAuthority, certificate_fingerprint, certificate_serial_hex
from tether.pki.estclient import client_ssl_context
from tether.pki.keys import build_csr, generate_private_key, private_key_pem
from tether.protocol.backoff import backoff_delays
from tether.protocol.codec import DEFAULT_MAX_FRAME
from tether.protocol.commands import CommandState
from tether.protocol.messages import CloseCode, CommandRequest, CommandUpdate
from tether.protocol.session import LinkClosed, LinkOpened, LinkSession, Role, SessionState

__all__ = ["BenchConfig", "BenchError", "main", "run"]

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = Path("/usr/sbin/mosquitto")
#: The machine caps a process at 20,000 descriptors; keep room for everything that is not a link.
MAX_LINKS_PER_PROCESS = 19_000
HOST = "127.0.0.1"
PAYLOAD_SIZE = 64
SYSTEMS = ("tether", "ws_echo", "mosquitto")

#: The reconnect storm: every link gives up after this long (from the drop) without relinking.
STORM_DEADLINE = 120.0
#: Redials that fail wait as the agent does (full jitter, capped), with a shorter cap.
STORM_BACKOFF_INITIAL = 0.5
STORM_BACKOFF_CAP = 5.0
#: Gateways registered per store transaction before a run.
REGISTER_CHUNK = 2_000


@dataclass(frozen=True, slots=True)
class Target:
    """A row of the table: a figure, and what DESIGN.md asks of it."""

    key: str
    label: str
    unit: str
    #: A multiple of Mosquitto's figure, or (``absolute``) tether's own figure; None: not judged.
    limit: float | None
    text: str
    #: Mosquitto's (and ws_echo's) figure to compare with, when it is not ``key``.
    reference: str = ""
    absolute: bool = False


TARGETS: tuple[Target, ...] = (
    Target("rss_per_link_kib", "memory per idle link", "KiB", 1.5, "<= 1.5 x Mosquitto"),
    Target("idle_cpu_percent", "idle CPU holding the links", "% core", 2.0, "<= 2 x Mosquitto"),
    Target("handshake_cpu_ms", "CPU per mTLS handshake", "ms", 1.5, "<= 1.5 x Mosquitto"),
    Target("latency_p50_ms", "push latency p50 (API POST start)", "ms", None, "-"),
    Target(
        "latency_p99_ms", "push latency p99 (API POST start)", "ms", 2.0, "<= 2 x Mosquitto p99"
    ),
    Target(
        "cloud_push_p50_ms", "push latency p50 (cloud: commit)", "ms", None, "-", "latency_p50_ms"
    ),
    Target(
        "cloud_push_p99_ms",
        "push latency p99 (cloud: commit)",
        "ms",
        2.0,
        "<= 2 x Mosquitto p99",
        "latency_p99_ms",
    ),
    Target("storm_seconds", "reconnect storm: all relinked", "s", 30.0, "<= 30 s", absolute=True),
    Target("storm_gave_up", "reconnect storm: links given up", "links", 0, "none", absolute=True),
    Target("storm_cpu_ms_per_link", "CPU per link in the storm", "ms", 1.5, "<= 1.5 x Mosquitto"),
)


class BenchError(RuntimeError):
    """The benchmark could not run to the end (a server died, links failed, a phase timed out)."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    links: int = 10_000
    heartbeat: float = 30.0
    #: Idle CPU window; default two heartbeat intervals.
    idle_window: float | None = None
    samples: int = 500
    #: Seconds between two latency samples, for every system alike: each push is measured on
    #: an otherwise idle server (the previous one's follow-up work, such as a command's
    #: updates, done), as an operator's commands arrive, rather than back to back.
    pause: float = 0.02
    links_per_process: int = 5_000
    concurrency: int = 200
    systems: tuple[str, ...] = SYSTEMS
    #: Where ``link_capacity.json`` is written; None writes nothing.
    results: Path | None = bench.RESULTS
    seed: int = 1
    #: Runs of every system; each figure's ratio is taken within a run, the median one judged.
    rounds: int = 3
    quiet: bool = False
    #: Keep the servers' logs and data in this new directory (else a temporary one is removed).
    keep: Path | None = None

    @property
    def window(self) -> float:
        return self.idle_window if self.idle_window is not None else 2 * self.heartbeat

    @property
    def workers(self) -> int:
        return max(1, math.ceil(self.links / self.links_per_process))

    @property
    def connect_timeout(self) -> float:
        """The whole connect phase: generous, but bounded."""
        return max(120.0, self.links * 0.05)

    def check(self) -> None:
        if self.links < 1 or self.samples < 1 or self.concurrency < 1 or self.rounds < 1:
            raise BenchError("links, samples, concurrency and rounds must be at least 1")
        if not 0 <= self.pause <= 10:
            raise BenchError("the pause between latency samples must be within [0, 10] s")
        if not 1 <= self.links_per_process <= MAX_LINKS_PER_PROCESS:
            raise BenchError(f"links_per_process must be within 1..{MAX_LINKS_PER_PROCESS}")
        if self.heartbeat < 1:
            raise BenchError("the heartbeat interval must be at least 1 s (the cloud's minimum)")
        if self.window <= 0:
            raise BenchError("the idle window must be positive")
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown or not self.systems:
            raise BenchError(f"systems must be among {SYSTEMS}, got {self.systems}")


# -- process measurement -------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise this process's descriptor soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, dead threads included (clock-tick resolution)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def cpu_seconds_fine(pid: int) -> float:
    """CPU of a process's live threads from the scheduler (nanoseconds), else :func:`cpu_seconds`.

    Threads that ended are not counted, so this is for windows in which threads do not come
    and go (an idle server); it resolves what a few clock ticks cannot.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{pid}/task/{task}/schedstat") as fh,
            ):
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9 if total > 0 else cpu_seconds(pid)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def settle(pid: int, *, quiet: float = 0.15, step: float = 0.25, limit: float = 30.0) -> None:
    """Wait (at most *limit* s) until *pid* uses under *quiet* of a core over *step* seconds."""
    await settle_cpu(functools.partial(cpu_seconds_fine, pid), quiet=quiet, step=step, limit=limit)


async def settle_cpu(
    cpu: Callable[[], float], *, quiet: float = 0.15, step: float = 0.25, limit: float = 30.0
) -> None:
    """Wait (at most *limit* s) until the CPU seconds *cpu* reads grow by under *quiet* of a
    core over *step* seconds."""
    deadline = time.monotonic() + limit
    before = cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(step)
        now = cpu()
        if now - before < quiet * step:
            return
        before = now


_STARTED = time.monotonic()


def progress(config: BenchConfig, system: str, text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    if not config.quiet:
        elapsed = time.monotonic() - _STARTED
        print(f"[link_capacity {elapsed:6.1f} s] {system}: {text}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- MQTT 3.1.1, the little the reference load needs ---------------------------------------


class MqttError(Exception):
    """The broker refused or sent something this client does not understand."""


MQTT_CONNACK, MQTT_PUBLISH, MQTT_PUBACK, MQTT_SUBACK, MQTT_PINGRESP = 2, 3, 4, 9, 13
MQTT_PINGREQ = b"\xc0\x00"
MQTT_DISCONNECT = b"\xe0\x00"


def _mqtt_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _mqtt_packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _mqtt_length(len(body)) + body


def mqtt_connect(client_id: str, keepalive: int) -> bytes:
    # Protocol name, level 4 (3.1.1), flags: clean session; then the keepalive.
    header = _mqtt_str("MQTT") + b"\x04\x02" + keepalive.to_bytes(2, "big")
    return _mqtt_packet(0x10, header + _mqtt_str(client_id))


def mqtt_subscribe(packet_id: int, topic: str, qos: int) -> bytes:
    return _mqtt_packet(0x82, packet_id.to_bytes(2, "big") + _mqtt_str(topic) + bytes([qos]))


def mqtt_publish_qos1(packet_id: int, topic: str, payload: bytes) -> bytes:
    return _mqtt_packet(0x32, _mqtt_str(topic) + packet_id.to_bytes(2, "big") + payload)


def mqtt_puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


async def mqtt_read(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """One control packet: (type, flags, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            break
        shift += 7
    else:
        raise MqttError("malformed remaining length")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


def topic_of(gateway_id: str) -> str:
    return f"tether/{gateway_id}/cmd"


# -- load links ----------------------------------------------------------------------------

Report = Callable[[str, float], None]

#: The shortest receive timeout. aiohttp reads ``receive(timeout=0)`` as "no timeout" (it falls
#: back to the session default, None), and uvloop's millisecond timers may fire a little before
#: a deadline, which leaves a ``max(0, deadline - now)`` of exactly 0 now and then: the link then
#: waits for a message that never comes and stops sending its heartbeats.
MIN_WAIT = 0.001


def until(deadline: float) -> float:
    """A receive timeout that ends at *deadline* (monotonic) and is never 0."""
    return max(MIN_WAIT, deadline - time.monotonic())


def reset(transport: asyncio.WriteTransport | None) -> None:
    """End a link's TCP connection as a NAT or firewall reset does: an RST, no TLS close_notify,
    no WebSocket or MQTT goodbye (zero linger, then the transport aborted)."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def ws_transport(ws: aiohttp.ClientWebSocketResponse | None) -> asyncio.Transport | None:
    """The transport under an aiohttp client WebSocket (aiohttp has no public handle on it)."""
    connection = ws._response.connection if ws is not None else None
    return connection.transport if connection is not None else None


class Link:
    """One load link: :meth:`connect` connects and shakes hands, :meth:`serve` holds it idle,
    :meth:`drop` cuts it without a word."""

    __slots__ = ("ctx", "ended", "gateway_id", "open")

    def __init__(self, gateway_id: str, ctx: ssl.SSLContext) -> None:
        self.gateway_id = gateway_id
        self.ctx = ctx
        self.open = False
        #: Why the link ended while it was being held (empty while open).
        self.ended = ""

    async def connect(self, http: aiohttp.ClientSession | None, spec: WorkerSpec) -> None:
        raise NotImplementedError

    async def serve(self, heartbeat: float, report: Report) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        """Reset the connection under the link at once (the serve task then sees it end)."""
        raise NotImplementedError


class TetherLink(Link):
    """A gateway link speaking the real protocol, as the agent's WebSocket tier does."""

    __slots__ = ("session", "ws")

    def __init__(self, gateway_id: str, ctx: ssl.SSLContext) -> None:
        super().__init__(gateway_id, ctx)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: LinkSession | None = None

    async def connect(self, http: aiohttp.ClientSession | None, spec: WorkerSpec) -> None:
        assert http is not None
        ws = await http.ws_connect(
            f"https://{spec.host}:{spec.port}/link",
            ssl=self.ctx,
            autoping=True,
            heartbeat=None,
            compress=0,
            max_msg_size=2 * DEFAULT_MAX_FRAME + 64,
        )
        self.ws = ws
        session = LinkSession(
            Role.CLIENT,
            now=time.monotonic(),
            agent_version=tether_version,
            boot_id=self.gateway_id,
            tier="ws",
        )
        self.session = session
        await self._flush()
        while session.state is SessionState.HANDSHAKE:
            msg = await ws.receive(timeout=until(session.next_deadline()))
            if msg.type is not WSMsgType.BINARY:
                raise BenchError(f"link {self.gateway_id}: {msg.type.name} during the handshake")
            session.receive_frame(msg.data, now=time.monotonic())
            for event in session.events():
                if isinstance(event, LinkClosed):
                    raise BenchError(f"link {self.gateway_id} refused: {event.code} {event.reason}")
                if isinstance(event, LinkOpened) and event.welcome.heartbeat_interval != (
                    spec.heartbeat
                ):
                    raise BenchError(
                        f"the cloud chose a {event.welcome.heartbeat_interval} s heartbeat, "
                        f"not {spec.heartbeat} s"
                    )
            await self._flush()
        self.open = True

    async def _flush(self) -> None:
        assert self.ws is not None
        assert self.session is not None
        for frame in self.session.data_to_send():
            await self.ws.send_bytes(frame)

    async def serve(self, heartbeat: float, report: Report) -> None:
        ws, session = self.ws, self.session
        assert ws is not None
        assert session is not None
        try:
            while session.state is SessionState.OPEN:
                try:
                    msg = await ws.receive(timeout=until(session.next_deadline()))
                except TimeoutError:
                    session.tick(time.monotonic())
                    await self._flush()
                    continue
                now = time.monotonic()
                if msg.type is not WSMsgType.BINARY:
                    self.ended = f"websocket {msg.type.name.lower()}"
                    break
                session.receive_frame(msg.data, now=now)
                for event in session.events():
                    if isinstance(event, CommandRequest):
                        report(event.command_id, now)
                        for state in (CommandState.RUNNING, CommandState.SUCCEEDED):
                            session.send(CommandUpdate(command_id=event.command_id, state=state))
                await self._flush()
            if session.close_code is not None:
                self.ended = f"{session.close_code}: {session.close_reason}"
        finally:
            self.open = False

    async def close(self) -> None:
        if self.session is not None and self.ws is not None and not self.ws.closed:
            self.session.close(CloseCode.GOING_AWAY, "load client stopping")
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._flush()
        if self.ws is not None:
            await self.ws.close()

    def drop(self) -> None:
        reset(ws_transport(self.ws))
        self.open = False


class EchoLink(Link):
    """A bare WebSocket with a ping at the heartbeat interval, and echo round trips on demand."""

    __slots__ = ("waiter", "ws")

    def __init__(self, gateway_id: str, ctx: ssl.SSLContext) -> None:
        super().__init__(gateway_id, ctx)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.waiter: asyncio.Future[float] | None = None

    async def connect(self, http: aiohttp.ClientSession | None, spec: WorkerSpec) -> None:
        assert http is not None
        self.ws = await http.ws_connect(
            f"https://{spec.host}:{spec.port}/echo",
            ssl=self.ctx,
            autoping=True,
            heartbeat=None,
            compress=0,
        )
        self.open = True

    async def serve(self, heartbeat: float, report: Report) -> None:
        ws = self.ws
        assert ws is not None
        next_ping = time.monotonic() + heartbeat
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=until(next_ping))
                except TimeoutError:
                    if time.monotonic() >= next_ping:
                        await ws.ping()
                        next_ping += heartbeat
                    continue
                if msg.type is not WSMsgType.BINARY:
                    self.ended = f"websocket {msg.type.name.lower()}"
                    break
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(time.perf_counter())
        finally:
            self.open = False

    async def round_trip(self, payload: bytes, limit: float) -> float:
        assert self.ws is not None
        self.waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        await self.ws.send_bytes(payload)
        received = await asyncio.wait_for(self.waiter, limit)
        return received - started

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def drop(self) -> None:
        reset(ws_transport(self.ws))
        self.open = False


class MqttLink(Link):
    """An MQTT 3.1.1 client over TLS: subscribed to its topic with QoS 1, PINGREQ at keepalive."""

    __slots__ = ("acks", "pinger", "reader", "writer")

    def __init__(self, gateway_id: str, ctx: ssl.SSLContext) -> None:
        super().__init__(gateway_id, ctx)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pinger: asyncio.TimerHandle | None = None
        self.acks: dict[int, asyncio.Future[None]] = {}

    async def connect(self, http: aiohttp.ClientSession | None, spec: WorkerSpec) -> None:
        await self.dial(
            spec.host, spec.port, int(spec.heartbeat), subscribe=True, local_host=spec.local_host
        )

    async def dial(
        self,
        host: str,
        port: int,
        keepalive: int,
        *,
        subscribe: bool,
        local_host: str | None = None,
    ) -> None:
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=self.ctx,
            server_hostname=host,
            limit=4096,
            local_addr=None if local_host is None else (local_host, 0),
        )
        self.reader, self.writer = reader, writer
        writer.write(mqtt_connect(self.gateway_id, keepalive))
        kind, _, body = await mqtt_read(reader)
        if kind != MQTT_CONNACK or len(body) != 2 or body[1] != 0:
            raise MqttError(f"CONNACK refused: type {kind}, body {body.hex()}")
        if subscribe:
            writer.write(mqtt_subscribe(1, topic_of(self.gateway_id), 1))
            kind, _, body = await mqtt_read(reader)
            if kind != MQTT_SUBACK or body[2:] != b"\x01":
                raise MqttError(f"SUBACK refused: type {kind}, body {body.hex()}")
        self.open = True
        # A timer rather than a second task per link: PINGREQ is a plain write.
        loop = asyncio.get_running_loop()

        def ping() -> None:
            if not writer.is_closing():
                writer.write(MQTT_PINGREQ)
                self.pinger = loop.call_later(keepalive, ping)

        self.pinger = loop.call_later(keepalive, ping)

    async def serve(self, heartbeat: float, report: Report) -> None:
        reader, writer = self.reader, self.writer
        assert reader is not None
        assert writer is not None
        try:
            while True:
                kind, flags, body = await mqtt_read(reader)
                now = time.monotonic()
                if kind == MQTT_PUBLISH:
                    size = int.from_bytes(body[:2], "big")
                    offset = 2 + size
                    if (flags >> 1) & 3:
                        packet_id = int.from_bytes(body[offset : offset + 2], "big")
                        offset += 2
                        writer.write(mqtt_puback(packet_id))
                    report(body[offset:].rstrip(b" ").decode(), now)
                elif kind == MQTT_PUBACK:
                    ack = self.acks.pop(int.from_bytes(body[:2], "big"), None)
                    if ack is not None and not ack.done():
                        ack.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, MqttError) as exc:
            self.ended = type(exc).__name__
            return
        finally:
            self.open = False

    async def publish(self, packet_id: int, topic: str, payload: bytes, limit: float) -> None:
        """QoS 1 publish; returns when the broker's PUBACK arrives (:meth:`serve` must run)."""
        assert self.writer is not None
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks[packet_id] = ack
        self.writer.write(mqtt_publish_qos1(packet_id, topic, payload))
        await asyncio.wait_for(ack, limit)

    async def close(self) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
        if self.writer is not None and not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(MQTT_DISCONNECT)
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 5)

    def drop(self) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
            self.pinger = None
        reset(self.writer.transport if self.writer is not None else None)
        self.acks.clear()
        self.open = False


LINK_KINDS: dict[str, type[Link]] = {
    "tether": TetherLink,
    "ws_echo": EchoLink,
    "mosquitto": MqttLink,
}


# -- load worker process -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    kind: str
    host: str
    port: int
    ca_path: str
    links: tuple[tuple[str, str], ...]  # (gateway id, PEM with certificate and key)
    heartbeat: float
    concurrency: int
    link_timeout: float
    #: The worker ends itself after this many seconds, whatever happens.
    lifetime: float
    seed: int
    #: In the reconnect storm, a link not relinked this long after the drop gives up.
    storm_deadline: float = STORM_DEADLINE
    #: The loopback address the links dial from (None: the kernel's choice). A source address
    #: has about 28,000 ephemeral ports, so past that many links to one port the load
    #: processes dial from several (127.0.0.0/8 is all loopback).
    local_host: str | None = None


#: What a failed connect attempt may raise (anything else is a bug of the bench).
DIAL_ERRORS = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    MqttError,
    BenchError,
    asyncio.IncompleteReadError,
)


async def dial(
    link: Link, http: aiohttp.ClientSession | None, spec: WorkerSpec
) -> Exception | None:
    """One connect attempt of *link*, bounded by the spec's link timeout: None once it is open,
    else what went wrong (the half-made link is closed)."""
    try:
        await asyncio.wait_for(link.connect(http, spec), spec.link_timeout)
    except DIAL_ERRORS as exc:
        with contextlib.suppress(Exception):
            await link.close()
        return exc
    link.ended = ""
    return None


@dataclass(slots=True)
class Storm:
    """What one load process saw in the reconnect storm."""

    dropped: int = 0
    relinked: int = 0
    gave_up: int = 0
    attempts: int = 0
    #: From the drop until the last link relinked (or, if one gave up, until the last gave up).
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)


async def relink_all(
    links: Sequence[Link],
    attempt: Callable[[Link], Awaitable[Exception | None]],
    gate: asyncio.Semaphore,
    *,
    started: float,
    deadline: float,
    rng: random.Random,
    initial: float = STORM_BACKOFF_INITIAL,
    cap: float = STORM_BACKOFF_CAP,
) -> Storm:
    """Redial every link at once through *gate*; a failed attempt waits a full-jitter backoff
    (the agent's policy) and tries again, until *deadline* (monotonic): only then does a link
    give up, marked as ended. Times are counted from *started* (monotonic)."""
    storm = Storm(dropped=len(links))
    kinds: collections.Counter[str] = collections.Counter()
    last = started

    async def relink(link: Link) -> None:
        nonlocal last
        delays = backoff_delays(initial=initial, cap=cap, rng=rng)
        error: Exception | str = "the deadline passed before the first attempt"
        while True:
            async with gate:
                if time.monotonic() >= deadline:
                    break
                storm.attempts += 1
                failed = await attempt(link)
            if failed is None:
                storm.relinked += 1
                last = max(last, time.monotonic())
                return
            error = failed
            kinds[type(failed).__name__] += 1
            if len(storm.errors) < 5:
                storm.errors.append(f"{link.gateway_id}: {type(failed).__name__}: {failed}")
            pause = next(delays)
            if time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        storm.gave_up += 1
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        link.ended = f"gave up in the reconnect storm ({text})"
        last = max(last, time.monotonic())

    await asyncio.gather(*(relink(link) for link in links))
    storm.seconds = last - started
    storm.error_kinds = dict(kinds)
    return storm


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a load process (multiprocessing, spawn)."""
    raise_fd_limit()
    try:
        uvloop.run(_worker(spec, conn))
    finally:
        conn.close()


async def _worker(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + spec.lifetime
    control: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    fd = conn.fileno()

    def readable() -> None:
        try:
            while conn.poll():
                control.put_nowait(conn.recv())
        except (EOFError, OSError):  # the parent is gone: stop
            loop.remove_reader(fd)
            control.put_nowait(("stop",))

    def send(*message: Any) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(message)

    def report(key: str, when: float) -> None:
        send("received", key, when)

    async def next_control() -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(control.get(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return ("stop",)

    loop.add_reader(fd, readable)
    link_type = LINK_KINDS[spec.kind]
    links = [link_type(gid, client_ssl_context(spec.ca_path, pem)) for gid, pem in spec.links]
    send("ready")
    if (await next_control())[0] != "go":
        loop.remove_reader(fd)
        send("stopped", 0)
        return
    http: aiohttp.ClientSession | None = None
    if spec.kind != "mosquitto":
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                force_close=True,
                local_addr=None if spec.local_host is None else (spec.local_host, 0),
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=spec.link_timeout),
        )
    tasks: list[asyncio.Task[None]] = []
    try:
        gate = asyncio.Semaphore(spec.concurrency)
        errors: list[str] = []
        started = time.monotonic()

        async def attempt(link: Link) -> Exception | None:
            """Connect *link*; once it is open, hold it (heartbeats) in its serve task."""
            failed = await dial(link, http, spec)
            if failed is None:
                tasks.append(loop.create_task(link.serve(spec.heartbeat, report)))
            return failed

        async def connect(link: Link) -> None:
            async with gate:
                failed = await attempt(link)
            if failed is not None:
                errors.append(f"{link.gateway_id}: {type(failed).__name__}: {failed}")

        await asyncio.gather(*(connect(link) for link in links))
        opened = sum(link.open for link in links)
        send("connected", opened, len(errors), errors[:5], time.monotonic() - started)
        rng = random.Random(spec.seed)
        while True:
            message = await next_control()
            if message[0] == "status":
                ended = collections.Counter(link.ended for link in links if link.ended)
                send("status", sum(link.open for link in links), dict(ended))
            elif message[0] == "echo":
                send("echo", await _echo_round_trips(links, message[1], rng, message[2]))
            elif message[0] == "storm":
                storm_started = time.monotonic()
                dropped = [link for link in links if link.open]
                for link in dropped:
                    link.drop()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                tasks.clear()
                storm = await relink_all(
                    dropped,
                    attempt,
                    gate,
                    started=storm_started,
                    deadline=storm_started + spec.storm_deadline,
                    rng=random.Random(spec.seed + 1_000_003),
                )
                send("stormed", asdict(storm))
            else:
                break
        still_open = sum(link.open for link in links)
    finally:
        loop.remove_reader(fd)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(link.close() for link in links), return_exceptions=True), 30
            )
        if http is not None:
            await http.close()
    send("stopped", still_open)


async def _echo_round_trips(
    links: Sequence[Link], count: int, rng: random.Random, pause: float
) -> list[float]:
    candidates = [link for link in links if isinstance(link, EchoLink) and link.open]
    payload = os.urandom(PAYLOAD_SIZE)
    out: list[float] = []
    for _ in range(count if candidates else 0):
        link = rng.choice(candidates)
        with contextlib.suppress(TimeoutError, ConnectionError, aiohttp.ClientError):
            out.append(await link.round_trip(payload, 10.0))
        await asyncio.sleep(pause)
    return out


class Fleet:
    """The load processes of one measurement, and the pipes to them."""

    #: What each load process runs, given its spec and its end of the pipe (a module-level
    #: function: the processes are spawned, so it must be importable).
    worker = staticmethod(worker_main)

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        self.specs = list(specs)
        self._mp = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.replies: list[asyncio.Queue[tuple[Any, ...]]] = []
        self.arrivals: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Future[float]] = {}

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            for index, spec in enumerate(self.specs):
                ours, theirs = self._mp.Pipe()
                proc = self._mp.Process(
                    target=self.worker, args=(spec, theirs), daemon=True, name=f"load-{index}"
                )
                proc.start()
                theirs.close()
                queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
                self.procs.append(proc)
                self.conns.append(ours)
                self.replies.append(queue)
                loop.add_reader(ours.fileno(), self._readable, ours, queue)
        except BaseException:
            self.reap()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.reap()

    def _readable(self, conn: Connection, queue: asyncio.Queue[tuple[Any, ...]]) -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "received":
                    self.arrivals[message[1]] = message[2]
                    waiter = self._waiting.pop(message[1], None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message[2])
                else:
                    queue.put_nowait(message)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            queue.put_nowait(("gone",))

    async def gather(self, kind: str, limit: float) -> list[tuple[Any, ...]]:
        """The next reply of *kind* from every worker."""

        async def one(index: int) -> tuple[Any, ...]:
            message = await self.replies[index].get()
            if message[0] != kind:
                code = self.procs[index].exitcode
                raise BenchError(f"load process {index} sent {message[0]!r} (exit code {code})")
            return message

        try:
            return await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(len(self.procs)))), limit
            )
        except TimeoutError:
            raise BenchError(f"load processes did not answer {kind!r} in {limit:.0f} s") from None

    def broadcast(self, *message: Any) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(message)

    def tell(self, index: int, *message: Any) -> None:
        self.conns[index].send(message)

    async def arrival(self, key: str, limit: float) -> float:
        """When the load client received *key* (a command id or a published message)."""
        if key in self.arrivals:
            return self.arrivals[key]
        waiter = self._waiting.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(waiter, limit)
        except TimeoutError:
            raise BenchError(f"{key} did not reach its load client in {limit:.0f} s") from None

    def reap(self) -> None:
        """Stop every load process by its PID, politely first (bounded)."""
        loop = asyncio.get_running_loop()
        self.broadcast("stop")
        for proc in self.procs:
            proc.join(timeout=40)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(conn.fileno())
            conn.close()
        for proc in self.procs:
            proc.close()
        self.procs.clear()
        self.conns.clear()


# -- servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def server_process(
    argv: Sequence[str], log_path: Path, **kwargs: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server; on the way out stop it by its PID (SIGTERM, then SIGKILL)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def wait_ready(
    proc: subprocess.Popen[bytes],
    probe: Callable[[], Awaitable[bool]],
    log_path: Path,
    limit: float = 60,
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{argv0(proc)} exited ({proc.returncode}):\n{bench.log_tail(log_path)}"
            )
        with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError, MqttError):
            if await asyncio.wait_for(probe(), 5):
                return
        await asyncio.sleep(0.2)
    raise BenchError(f"{argv0(proc)} not ready in {limit:.0f} s:\n{bench.log_tail(log_path)}")


def argv0(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    return Path(str(args[0] if isinstance(args, list) else args)).name


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _echo_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="echo\n")


async def serve_echo(port: int, cert: Path, key: Path, ca: Path) -> None:
    """The reference server: WebSocket echo over TLS 1.3, client certificates required."""
    ctx = server_ssl_context(cert_path=cert, key_path=key, ca_path=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_get("/echo", _echo_handler)
    app.router.add_get("/hello", _hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, ssl_context=ctx, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def mosquitto_config(
    directory: Path, port: int, ca: Path, cert: Path, key: Path, log_path: Path
) -> Path:
    lines = [
        "per_listener_settings false",
        "persistence false",
        "allow_anonymous false",
        f"log_dest file {log_path}",
        f"listener {port} {HOST}",
        "max_connections -1",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.3",
    ]
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # else it drops to 'mosquitto', who cannot read our keys
    path = directory / "mosquitto.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def mosquitto_version() -> str:
    if not MOSQUITTO.exists():
        return "not installed"
    out = subprocess.run(
        [str(MOSQUITTO), "-h"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


# -- identities ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identities:
    ca_path: Path
    server_cert: Path
    server_key: Path
    gateways: tuple[tuple[str, str], ...]  # (gateway id, PEM path)
    probe: Path  # a client certificate for the bench's own probes and publisher


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def issue_identities(
    ca: CertificateAuthority, directory: Path, count: int
) -> tuple[Identities, list[tuple[str, Any]]]:
    """One key and client certificate per gateway, issued directly by the platform CA."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    gateways: list[tuple[str, str]] = []
    certs: list[tuple[str, Any]] = []

    def issue(gateway_id: str) -> Path:
        key = generate_private_key()
        cert = ca.issue_client(
            build_csr(key), gateway_id=gateway_id, lifetime=timedelta(days=2), now=now
        )
        path = directory / f"{gateway_id}.pem"
        _write_private(path, cert.public_bytes(Encoding.PEM) + private_key_pem(key))
        certs.append((gateway_id, cert))
        return path

    for index in range(count):
        gateway_id = f"bench-{index:06d}"
        gateways.append((gateway_id, str(issue(gateway_id))))
    probe = issue("bench-probe")
    certs.pop()  # the probe is not a gateway of the cloud
    creds = ca.server_credentials(directory / "server", [HOST])
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.certificate_pem())
    return (
        Identities(ca_path, creds.cert_path, creds.key_path, tuple(gateways), probe),
        certs,
    )


async def register_gateways(url: str, certs: Sequence[tuple[str, Any]]) -> None:
    """Enroll the gateways in the cloud's store as EST would have (enrollment is not measured):
    the rows :meth:`Store.create_gateway` and :meth:`Store.record_certificate` write, inserted
    a few thousand per transaction so that 100,000 gateways take seconds."""
    # Here, not at the top: the load processes need none of the store.
    from tether.cloud.store import Store
    from tether.cloud.store.models import certificates, gateways

    store = await Store.open(url)
    try:
        now = datetime.now(UTC)
        for start in range(0, len(certs), REGISTER_CHUNK):
            chunk = certs[start : start + REGISTER_CHUNK]
            gateway_rows = [
                {
                    "gateway_id": gateway_id,
                    "name": gateway_id,
                    "created_at": now,
                    "revoked_at": None,
                    "linked": False,
                    "tier": None,
                    "last_seen": None,
                    "link_since": None,
                    "agent_version": None,
                    "peer": None,
                    "cert_serial": certificate_serial_hex(cert).lower(),
                    "cert_not_after": cert.not_valid_after_utc,
                }
                for gateway_id, cert in chunk
            ]
            certificate_rows = [
                {
                    "serial_hex": certificate_serial_hex(cert).lower(),
                    "gateway_id": gateway_id,
                    "fingerprint": certificate_fingerprint(cert),
                    "not_before": cert.not_valid_before_utc,
                    "not_after": cert.not_valid_after_utc,
                    "created_at": now,
                    "revoked_at": None,
                }
                for gateway_id, cert in chunk
            ]
            async with store.engine.begin() as conn:
                await conn.execute(gateways.insert(), gateway_rows)
                await conn.execute(certificates.insert(), certificate_rows)
    finally:
        await store.close()


# -- one measurement -----------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    system: str
    links: int
    connected: int = 0
    failed: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_seconds: float = 0.0
    open_after_idle: int = 0
    #: Links that ended while held, by reason.
    lost: dict[str, int] = field(default_factory=dict)
    open_at_end: int = 0
    rss_before_bytes: int = 0
    rss_after_bytes: int = 0
    rss_per_link_kib: float = 0.0
    handshake_cpu_ms: float = 0.0
    idle_window_s: float = 0.0
    idle_cpu_percent: float = 0.0
    #: The load processes' CPU over the same window (% of a core, all of them together): a
    #: busy load client delays what it receives, so this tells the clients apart.
    load_idle_cpu_percent: float = 0.0
    latency_kind: str = ""
    latency_samples: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    #: tether only: the command committed → the CommandRequest at the gateway.
    cloud_push_kind: str = ""
    cloud_push_p50_ms: float | None = None
    cloud_push_p99_ms: float | None = None
    cloud_push_max_ms: float | None = None
    #: tether only: the API answer's Server-Timing steps, {step: {"p50_ms", "p99_ms", "max_ms"}}.
    server_steps: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The reconnect storm: links dropped at once, relinked, given up, connect attempts made.
    storm_links: int = 0
    storm_relinked: int = 0
    storm_gave_up: int = 0
    storm_attempts: int = 0
    #: The drop → the last link relinked (or given up), the slowest load process.
    storm_seconds: float = 0.0
    #: The server's CPU from the drop until every link relinked and it settled, over the links.
    storm_cpu_ms_per_link: float = 0.0
    storm_errors: list[str] = field(default_factory=list)
    #: Failed attempts by exception class.
    storm_error_kinds: dict[str, int] = field(default_factory=dict)


Push = Callable[[Fleet], Awaitable[list[float]]]


def _lost(status: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for message in status:
        out.update(message[2])
    return dict(out)


def _specs(config: BenchConfig, kind: str, port: int, ids: Identities) -> list[WorkerSpec]:
    n = config.workers
    share = max(1, config.concurrency // n)
    link_timeout = 60.0
    lifetime = config.connect_timeout + 4 * config.window + STORM_DEADLINE + link_timeout + 600
    return [
        WorkerSpec(
            kind=kind,
            host=HOST,
            port=port,
            ca_path=str(ids.ca_path),
            links=ids.gateways[i::n],
            heartbeat=config.heartbeat,
            concurrency=share,
            link_timeout=link_timeout,
            lifetime=lifetime,
            seed=config.seed + i,
            storm_deadline=STORM_DEADLINE,
        )
        for i in range(n)
    ]


async def measure(
    config: BenchConfig,
    system: str,
    pid: int,
    specs: Sequence[WorkerSpec],
    push: Push,
    latency_kind: str,
) -> Figures:
    figures = Figures(system=system, links=config.links, latency_kind=latency_kind)
    say = functools.partial(progress, config, system)
    async with Fleet(specs) as fleet:
        await fleet.gather("ready", limit=120 + config.links * 0.01)
        say(f"{len(specs)} load processes ready")
        await settle(pid)
        figures.rss_before_bytes = rss(pid)
        cpu_before = cpu_seconds(pid)
        fleet.broadcast("go")
        connected = await fleet.gather("connected", limit=config.connect_timeout)
        figures.connected = sum(m[1] for m in connected)
        figures.failed = sum(m[2] for m in connected)
        figures.connect_errors = [e for m in connected for e in m[3]][:10]
        figures.connect_seconds = max(m[4] for m in connected)
        if figures.connected == 0:
            raise BenchError(f"{system}: no link connected: {figures.connect_errors}")
        say(f"{figures.connected} links connected in {figures.connect_seconds:.1f} s")
        await settle(pid)
        figures.handshake_cpu_ms = (cpu_seconds(pid) - cpu_before) / figures.connected * 1e3
        figures.rss_after_bytes = rss(pid)
        figures.rss_per_link_kib = (
            (figures.rss_after_bytes - figures.rss_before_bytes) / figures.connected / 1024
        )
        load_pids = [proc.pid for proc in fleet.procs]
        idle_start, idle_cpu = time.monotonic(), cpu_seconds_fine(pid)
        load_cpu = sum(cpu_seconds_fine(p) for p in load_pids)
        await asyncio.sleep(config.window)
        idle_cpu = cpu_seconds_fine(pid) - idle_cpu
        load_cpu = sum(cpu_seconds_fine(p) for p in load_pids) - load_cpu
        figures.idle_window_s = time.monotonic() - idle_start
        figures.idle_cpu_percent = idle_cpu / figures.idle_window_s * 100
        figures.load_idle_cpu_percent = load_cpu / figures.idle_window_s * 100
        say(
            f"idle window done: {figures.idle_cpu_percent:.2f} % of a core "
            f"(load processes: {figures.load_idle_cpu_percent:.2f} %)"
        )
        fleet.broadcast("status")
        figures.open_after_idle = sum(m[1] for m in await fleet.gather("status", limit=60))
        try:
            latencies = await push(fleet)
        except BenchError as exc:
            fleet.broadcast("status")
            status = await fleet.gather("status", limit=60)
            lost = _lost(status)
            open_now = sum(m[1] for m in status)
            raise BenchError(f"{system}: {exc}; {open_now} links open, lost: {lost}") from None
        if not latencies:
            raise BenchError(f"{system}: no latency sample")
        figures.latency_samples = len(latencies)
        figures.latency_p50_ms = percentile(latencies, 50) * 1e3
        figures.latency_p99_ms = percentile(latencies, 99) * 1e3
        figures.latency_max_ms = max(latencies) * 1e3
        say(f"{len(latencies)} pushes: p99 {figures.latency_p99_ms:.2f} ms")
        await measure_storm(fleet, pid, specs, figures, say)
        fleet.broadcast("status")
        status = await fleet.gather("status", limit=60)
        figures.open_at_end = sum(m[1] for m in status)
        figures.lost = _lost(status)
        fleet.broadcast("stop")
        await fleet.gather("stopped", limit=120)
    say("load processes stopped")
    return figures


async def measure_storm(
    fleet: Fleet,
    pid: int,
    specs: Sequence[WorkerSpec],
    figures: Figures,
    say: Callable[[str], None],
) -> None:
    """The reconnect storm: every load process resets all its links at once and redials them
    together; the server meanwhile ends as many dead links."""
    await settle(pid)
    cpu_before = cpu_seconds(pid)
    fleet.broadcast("storm")
    limit = max(spec.storm_deadline + spec.link_timeout for spec in specs) + 60
    reports = [Storm(**m[1]) for m in await fleet.gather("stormed", limit=limit)]
    await settle(pid)
    storm_cpu = cpu_seconds(pid) - cpu_before
    figures.storm_links = sum(r.dropped for r in reports)
    figures.storm_relinked = sum(r.relinked for r in reports)
    figures.storm_gave_up = sum(r.gave_up for r in reports)
    figures.storm_attempts = sum(r.attempts for r in reports)
    figures.storm_seconds = max(r.seconds for r in reports)
    figures.storm_cpu_ms_per_link = storm_cpu / max(1, figures.storm_links) * 1e3
    figures.storm_errors = [e for r in reports for e in r.errors][:10]
    kinds: collections.Counter[str] = collections.Counter()
    for r in reports:
        kinds.update(r.error_kinds)
    figures.storm_error_kinds = dict(kinds)
    say(
        f"reconnect storm: {figures.storm_relinked}/{figures.storm_links} relinked in "
        f"{figures.storm_seconds:.1f} s, {figures.storm_gave_up} gave up, "
        f"{figures.storm_attempts} attempts, {figures.storm_cpu_ms_per_link:.2f} ms CPU per link"
        + (f"; errors {dict(kinds)}: {figures.storm_errors[:3]}" if kinds else "")
    )


def _targets(config: BenchConfig, rng: random.Random) -> list[str]:
    population = [f"bench-{i:06d}" for i in range(config.links)]
    if config.samples <= len(population):
        return rng.sample(population, config.samples)
    return [rng.choice(population) for _ in range(config.samples)]


async def bench_tether(
    config: BenchConfig, work: Path, ids: Identities, certs: Sequence[tuple[str, Any]]
) -> Figures:
    data_dir = work / "cloud"
    url = f"sqlite+aiosqlite:///{(data_dir / 'tether.db').resolve()}"
    await register_gateways(url, certs)
    progress(config, "tether", f"{len(certs)} gateways registered in the store")
    port = free_port()
    toml = work / "cloud.toml"
    toml.write_text(f"[link]\nheartbeat_interval = {config.heartbeat}\n")
    tether = Path(sys.executable).with_name("tether")
    argv = [
        str(tether if tether.exists() else shutil.which("tether") or "tether"),
        "cloud",
        "serve",
        "--config",
        str(toml),
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--hostname",
        HOST,
    ]
    base = f"https://{HOST}:{port}"
    log_path = work / "cloud.log"
    with server_process(argv, log_path) as proc:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(ids.ca_path))
        ) as http:

            async def probe() -> bool:
                async with http.get(f"{base}/.well-known/tether/hello") as response:
                    return response.status == 200

            await wait_ready(proc, probe, log_path)
            progress(config, "tether", f"cloud ready (pid {proc.pid})")
            token = (data_dir / "admin.token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{base}/api/v1/whoami", headers=headers) as response:
                if response.status != 200:
                    raise BenchError(f"operator API refused the admin token ({response.status})")

            cloud_side: list[float] = []
            steps: dict[str, list[float]] = collections.defaultdict(list)

            async def push(fleet: Fleet) -> list[float]:
                out: list[float] = []
                for gateway_id in _targets(config, random.Random(config.seed)):
                    started = time.monotonic()
                    async with http.post(
                        f"{base}/api/v1/gateways/{gateway_id}/commands",
                        json={"kind": "ping", "args": {}},
                        headers=headers,
                    ) as response:
                        body = await response.json()
                        if response.status // 100 != 2:
                            raise BenchError(f"command refused ({response.status}): {body}")
                        timing = server_timing(response.headers.get("Server-Timing", ""))
                    answered = time.monotonic()
                    arrived = await fleet.arrival(body["id"], 30)
                    out.append(arrived - started)
                    steps["answer (client)"].append(answered - started)
                    for step, seconds in timing.items():
                        steps[step].append(seconds)
                    if "queue" in timing:
                        committed = (
                            datetime.fromisoformat(body["created_at"]).timestamp()
                            + timing["queue"]
                            - (time.time() - time.monotonic())
                        )
                        cloud_side.append(arrived - committed)
                    await asyncio.sleep(config.pause)
                return out

            figures = await measure(
                config,
                "tether",
                proc.pid,
                _specs(config, "tether", port, ids),
                push,
                "API POST start → CommandRequest at the gateway",
            )
            if cloud_side:
                figures.cloud_push_kind = (
                    "command committed (created_at + Server-Timing queue) → CommandRequest "
                    "at the gateway"
                )
                figures.cloud_push_p50_ms = percentile(cloud_side, 50) * 1e3
                figures.cloud_push_p99_ms = percentile(cloud_side, 99) * 1e3
                figures.cloud_push_max_ms = max(cloud_side) * 1e3
            figures.server_steps = {
                step: {
                    "p50_ms": percentile(values, 50) * 1e3,
                    "p99_ms": percentile(values, 99) * 1e3,
                    "max_ms": max(values) * 1e3,
                }
                for step, values in steps.items()
            }
            if not config.quiet:
                for step, figure in figures.server_steps.items():
                    progress(
                        config,
                        "tether",
                        f"step {step}: p50 {figure['p50_ms']:.2f} ms, "
                        f"p99 {figure['p99_ms']:.2f} ms, max {figure['max_ms']:.2f} ms",
                    )
            return figures


async def bench_echo(config: BenchConfig, work: Path, ids: Identities) -> Figures:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.link_capacity",
        "_serve-echo",
        str(port),
        str(ids.server_cert),
        str(ids.server_key),
        str(ids.ca_path),
    ]
    log_path = work / "echo.log"
    with server_process(argv, log_path, cwd=REPO) as proc:
        probe_ctx = client_ssl_context(ids.ca_path, ids.probe)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=probe_ctx, force_close=True)
        ) as http:

            async def probe() -> bool:
                async with http.get(f"https://{HOST}:{port}/hello") as response:
                    return response.status == 200

            await wait_ready(proc, probe, log_path)

        async def push(fleet: Fleet) -> list[float]:
            n = len(fleet.procs)
            for index in range(n):
                count = config.samples // n + (index < config.samples % n)
                fleet.tell(index, "echo", count, config.pause * n)
            return [rtt for m in await fleet.gather("echo", limit=600) for rtt in m[1]]

        return await measure(
            config,
            "ws_echo",
            proc.pid,
            _specs(config, "ws_echo", port, ids),
            push,
            "echo round trip",
        )


async def bench_mosquitto(config: BenchConfig, work: Path, ids: Identities) -> Figures:
    if not MOSQUITTO.exists():
        raise BenchError(f"{MOSQUITTO} is missing: run scripts/sysdeps.sh")
    port = free_port()
    log_path = work / "mosquitto.log"
    conf = mosquitto_config(work, port, ids.ca_path, ids.server_cert, ids.server_key, log_path)
    with server_process([str(MOSQUITTO), "-c", str(conf)], work / "mosquitto.out") as proc:
        keepalive = int(config.heartbeat)
        publisher = MqttLink("bench-publisher", client_ssl_context(ids.ca_path, ids.probe))

        async def probe() -> bool:
            await publisher.dial(HOST, port, keepalive, subscribe=False)
            return True

        await wait_ready(proc, probe, log_path)
        reader = asyncio.get_running_loop().create_task(
            publisher.serve(config.heartbeat, lambda key, when: None)
        )
        try:

            async def push(fleet: Fleet) -> list[float]:
                out: list[float] = []
                targets = _targets(config, random.Random(config.seed))
                for index, gateway_id in enumerate(targets):
                    key = f"m{index}"
                    payload = key.encode().ljust(PAYLOAD_SIZE)
                    started = time.monotonic()
                    await publisher.publish(index % 65535 + 1, topic_of(gateway_id), payload, 30)
                    out.append(await fleet.arrival(key, 30) - started)
                    await asyncio.sleep(config.pause)
                return out

            return await measure(
                config,
                "mosquitto",
                proc.pid,
                _specs(config, "mosquitto", port, ids),
                push,
                "QoS 1 publish start → subscriber receives",
            )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await publisher.close()


# -- report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The shared machine record plus what this benchmark's figures depend on."""
    return {
        **bench.machine(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "openssl": ssl.OPENSSL_VERSION,
        "uvloop": importlib.metadata.version("uvloop"),
        "aiohttp": aiohttp.__version__,
        "tether": tether_version,
        "mosquitto": mosquitto_version(),
        "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def server_timing(header: str) -> dict[str, float]:
    """A ``Server-Timing`` header's durations, in seconds by name (``a;dur=1.5, b;dur=2``)."""
    out: dict[str, float] = {}
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(value) / 1e3
    return out


def comparisons(systems: dict[str, Figures]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        row: dict[str, Any] = {
            "figure": t.key,
            "label": t.label,
            "unit": t.unit,
            "target": t.text,
            # A limit on tether's own figure, or on its ratio to Mosquitto's.
            "judged": "absolute" if t.absolute else "ratio",
        }
        for name, figures in systems.items():
            row[name] = getattr(figures, t.reference if name != "tether" and t.reference else t.key)
        tether, mosquitto = row.get("tether"), row.get("mosquitto")
        row["ratio"] = tether / mosquitto if tether is not None and mosquitto else None
        row["limit"] = t.limit
        judged = tether if t.absolute else row["ratio"]
        row["met"] = None if t.limit is None or judged is None else judged <= t.limit
        out.append(row)
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def combine(rounds: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several rounds as one: each system's median figure, the median of the
    rounds' ratios (each taken within its own round), judged as one round's row is, with every
    round's ratio and, for a judged row, in how many rounds the target was met."""
    out: list[dict[str, Any]] = []
    for rows in zip(*rounds, strict=True):
        first = rows[0]
        row = {k: first[k] for k in ("figure", "label", "unit", "target", "judged", "limit")}
        for name in SYSTEMS:
            if name in first:
                row[name] = _median([r[name] for r in rows])
        row["ratio"] = _median([r["ratio"] for r in rows])
        row["ratios"] = [r["ratio"] for r in rows]
        judged = row.get("tether") if row["judged"] == "absolute" else row["ratio"]
        limit = row["limit"]
        row["met"] = None if limit is None or judged is None else judged <= limit
        row["met_rounds"] = None if limit is None else sum(1 for r in rows if r["met"])
        out.append(row)
    return out


def format_table(config: BenchConfig, rows: Sequence[dict[str, Any]]) -> str:
    head = ["figure", "unit", *SYSTEMS, "tether/mosq", "rounds", "target", ""]
    lines = [head]
    for row in rows:
        verdict = {True: "met", False: "MISSED", None: ""}[row["met"]]
        ratio = row["ratio"]
        ratios = [r for r in row.get("ratios", [ratio]) if r is not None]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
        met_rounds = row.get("met_rounds")
        lines.append(
            [
                row["label"],
                row["unit"],
                *(f"{row[s]:.3g}" if row.get(s) is not None else "-" for s in SYSTEMS),
                f"{ratio:.2f}x {spread}".strip() if ratio is not None else "-",
                f"{met_rounds}/{config.rounds} met" if met_rounds is not None else "",
                row["target"],
                verdict,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    title = (
        f"link capacity: {config.links} links, heartbeat {config.heartbeat:g} s, "
        f"idle window {config.window:g} s, {config.samples} latency samples "
        "(ws_echo latency is a round trip); "
        + (
            f"median of {config.rounds} rounds (ratio: median, then lowest-highest)"
            if config.rounds > 1
            else "one round"
        )
    )
    body = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join([title, *body])


async def _run(config: BenchConfig) -> dict[str, Any]:
    raise_fd_limit()
    rounds: list[dict[str, Figures]] = []
    keep = config.keep is not None
    if keep:
        assert config.keep is not None
        config.keep.mkdir(parents=True, exist_ok=False)
    with (
        contextlib.nullcontext(str(config.keep))
        if keep
        else tempfile.TemporaryDirectory(prefix="bench-links-")
    ) as tmp:
        work = Path(tmp)
        # The cloud finds this CA in its data directory and adopts it.
        ca = CertificateAuthority.load_or_create(work / "cloud" / "pki")
        ids, certs = issue_identities(ca, work / "creds", config.links)
        progress(config, "setup", f"{config.links} client certificates issued")
        for index in range(config.rounds):
            # Each round on fresh servers: a new store (with the same CA), new logs.
            here = work / f"round-{index + 1}"
            shutil.copytree(work / "cloud" / "pki", here / "cloud" / "pki")
            if config.rounds > 1:
                progress(config, "setup", f"round {index + 1} of {config.rounds}")
            systems: dict[str, Figures] = {}
            if "tether" in config.systems:
                systems["tether"] = await bench_tether(config, here, ids, certs)
            if "ws_echo" in config.systems:
                systems["ws_echo"] = await bench_echo(config, here, ids)
            if "mosquitto" in config.systems:
                systems["mosquitto"] = await bench_mosquitto(config, here, ids)
            rounds.append(systems)
    per_round = [comparisons(systems) for systems in rounds]
    return {
        "machine": machine(),
        "parameters": {
            "links": config.links,
            "heartbeat_s": config.heartbeat,
            "idle_window_s": config.window,
            "latency_samples": config.samples,
            "latency_pause_s": config.pause,
            "load_processes": config.workers,
            "connect_concurrency": config.concurrency,
            "storm_deadline_s": STORM_DEADLINE,
            "storm_backoff_s": {"initial": STORM_BACKOFF_INITIAL, "cap": STORM_BACKOFF_CAP},
            "rounds": config.rounds,
        },
        "rounds": [
            {
                "systems": {name: asdict(figures) for name, figures in systems.items()},
                "comparisons": rows,
            }
            for systems, rows in zip(rounds, per_round, strict=True)
        ],
        "comparisons": combine(per_round),
    }


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; print the table, write the results file, return what was recorded."""
    config.check()
    result = bench.run_async(_run(config), "link_capacity")
    if not config.quiet:
        print(format_table(config, result["comparisons"]))
    if config.results is not None:
        path = bench.record("link_capacity", result, results=config.results)
        if not config.quiet:
            print(f"recorded in {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_serve-echo"]:
        port, cert, key, ca = args[1:5]
        raise_fd_limit()
        uvloop.run(serve_echo(int(port), Path(cert), Path(key), Path(ca)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.link_capacity", description=__doc__)
    defaults = BenchConfig()
    parser.add_argument("--links", type=int, default=defaults.links)
    parser.add_argument("--heartbeat", type=float, default=defaults.heartbeat)
    parser.add_argument("--idle-window", type=float, default=None, help="default 2 heartbeats")
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument(
        "--pause",
        type=float,
        default=defaults.pause,
        help="seconds between two latency samples (every system alike)",
    )
    parser.add_argument("--links-per-process", type=int, default=defaults.links_per_process)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="runs of every system; the median round's ratio is judged",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--results", type=Path, default=bench.RESULTS, help="a directory")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this new directory")
    parsed = parser.parse_args(args)
    config = replace(
        defaults,
        links=parsed.links,
        heartbeat=parsed.heartbeat,
        idle_window=parsed.idle_window,
        samples=parsed.samples,
        pause=parsed.pause,
        links_per_process=parsed.links_per_process,
        concurrency=parsed.concurrency,
        rounds=parsed.rounds,
        systems=tuple(s for s in parsed.systems.split(",") if s),
        results=parsed.results,
        keep=parsed.keep,
    )
    try:
        run(config)
    except BenchError as exc:
        print(f"link_capacity: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Through the package name, so the load processes (spawned) find the same functions.
    from bench.link_capacity import main as _main

    raise SystemExit(_main())
