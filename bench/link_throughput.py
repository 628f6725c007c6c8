"""Link throughput: acknowledged small messages per server CPU-second, tether next to Mosquitto.

Two servers are measured one after the other, each alone in its own process, each driven by the
same load design (load processes spawned like :mod:`bench.link_capacity`'s: uvloop, one TLS
client certificate per link, the machinery of that module reused):

* ``tether``: ``tether cloud serve`` (SQLite store in its data directory, the gateways registered
  in it as EST would have). Each link does the real link handshake, then what an agent does
  first, a ``Discovery`` of its one device and point (so every commit also moves the point's
  latest value, as in production), answered by ``DiscoveryAck``. Then it sends
  ``TelemetryBatch`` frames of stream ``bench``, consecutive sequence numbers, ONE observation
  each (a float value of that point), the point id padded so that the encoded frame is 200
  bytes. The cloud acknowledges each with a ``TelemetryAck`` once its group committed: the ack
  must name the stream and a sequence number in flight and count exactly one accepted
  observation, no duplicate; a ``TelemetryReject`` is an error.
* ``mosquitto``: Debian's Eclipse Mosquitto, TLS 1.3, client certificates required, no
  persistence; each link is an MQTT 3.1.1 client publishing QoS 1 ``PUBLISH`` packets with a
  200-byte payload to its own topic (no subscribers), each acknowledged by a ``PUBACK``.

Every link keeps up to W messages unacknowledged (a window: the next goes when an ack arrives).
A warm-up phase, then the timed phase: a number of messages over all links, or a time limit,
whichever comes first (no new message after it; the ones in flight are still awaited). Figures
over the timed phase: acks per second (the first send → the last ack), the server process's CPU
seconds (every thread: for tether the store's writer thread too, split per thread from
``/proc/PID/task``, so the event loop's own share shows), acks per server CPU-second (= per
core: the DESIGN.md target, >= 0.8 x Mosquitto's), the load processes' CPU, which says whether
the load client rather than the server set the pace, and the whole machine's. Two load processes
by default: one process's Python client spends more CPU per message than Mosquitto does, so alone
it saturates its core (measured here: 99 % of a core, the broker at 70 %); with two, the load
processes idle part of the time and the machine's two cores are what is left. A run fails if
any message was refused, left unacknowledged or acknowledged wrongly; for tether the store must
hold every acknowledged observation exactly once afterwards.

Printed as a table with the ratio and the target, and recorded with the machine in
``bench/results/link_throughput.json``.

Run: ``python -m bench link_throughput`` (100 links, window 8, 200,000 messages), or
``python -m bench.link_throughput --links 10 --messages 20000 --systems tether``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop
from aiohttp import WSMsgType

import bench
from bench import link_capacity as lc
from tether.pki.ca import CertificateAuthority
from tether.pki.estclient import client_ssl_context
from tether.protocol.codec import PING_FRAME_MAX, encode_frame
from tether.protocol.messages import (
    ConfigAck,
    ConfigUpdate,
    Discovery,
    DiscoveryAck,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.session import LinkClosed
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

__all__ = ["BenchConfig", "main", "run"]

SYSTEMS = ("tether", "mosquitto")
#: The encoded TelemetryBatch frame (6-byte header + msgpack), and Mosquitto's payload.
MESSAGE_SIZE = 200
STREAM = "bench"  # the agent's stream is its connector instance's name
CONNECTOR = "bench"
DEVICE = "ahu-1"
#: DESIGN.md: acknowledged small messages per core >= 0.8 x Mosquitto QoS 1.
TARGET_RATIO = 0.8
#: After the send phase ends, the acks of what is in flight are awaited this long at most.
ACK_GRACE = 30.0
HEARTBEAT = 30.0


class BenchError(lc.BenchError):
    """The benchmark could not run to the end, or a message was refused or lost."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    links: int = 100
    window: int = 8
    #: Messages in the timed phase, over all links.
    messages: int = 200_000
    #: Messages in the warm-up phase (default: a tenth of the timed phase, at least 2 windows).
    warmup: int | None = None
    #: The timed phase sends no new message after this many seconds.
    time_limit: float = 120.0
    #: Two: one Python load process cannot keep Mosquitto busy (it needs more CPU per message).
    load_processes: int = 2
    systems: tuple[str, ...] = SYSTEMS
    #: Where ``link_throughput.json`` is written; None writes nothing.
    results: Path | None = bench.RESULTS
    quiet: bool = False
    #: Keep the servers' logs and data in this new directory (else a temporary one is removed).
    keep: Path | None = None

    @property
    def warmup_messages(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return max(self.messages // 10, 2 * self.links * self.window)

    def check(self) -> None:
        if self.links < 1 or self.window < 1 or self.messages < 1:
            raise BenchError("links, window and messages must be at least 1")
        if self.warmup is not None and self.warmup < 0:
            raise BenchError("warm-up messages cannot be negative")
        if self.window > 60_000:
            raise BenchError("the window must leave room in MQTT's 16-bit packet ids")
        if not 1 <= self.load_processes <= self.links:
            raise BenchError("load processes must be within 1..links")
        if math.ceil(self.links / self.load_processes) > lc.MAX_LINKS_PER_PROCESS:
            raise BenchError(f"at most {lc.MAX_LINKS_PER_PROCESS} links per load process")
        if self.time_limit <= 0:
            raise BenchError("the time limit must be positive")
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown or not self.systems:
            raise BenchError(f"systems must be among {SYSTEMS}, got {self.systems}")


_STARTED = time.monotonic()


def progress(config: BenchConfig, system: str, text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    if not config.quiet:
        elapsed = time.monotonic() - _STARTED
        print(f"[link_throughput {elapsed:6.1f} s] {system}: {text}", file=sys.stderr, flush=True)


# -- what one link sends ---------------------------------------------------------------------


def point_id_for(gateway_id: str) -> str:
    """The link's one point, its id padded so that a batch of one observation of it encodes to
    :data:`MESSAGE_SIZE` bytes (at a 3-byte sequence number, 256..65535, as most of a run's)."""
    base = f"site-1/{gateway_id}/{DEVICE}/supply-air-temperature/"
    probe = len(batch_frame(base, 1000, 1000.0))
    return base + "0" * max(0, MESSAGE_SIZE - probe)


def telemetry_batch(point_id: str, seq: int, ts: float) -> TelemetryBatch:
    value = 12.0 + (seq % 100) / 10  # a float, as an analog reading is
    return TelemetryBatch(
        stream=STREAM,
        first_seq=seq,
        last_seq=seq,
        observations=[Observation(point_id=point_id, ts=ts, value=value)],
    )


def batch_frame(point_id: str, seq: int, ts: float) -> bytes:
    return encode_frame(telemetry_batch(point_id, seq, ts))


def discovery(point_id: str) -> Discovery:
    return Discovery(
        connector=CONNECTOR,
        devices=[DeviceInfo(device_id=DEVICE, name="AHU 1", kind="ahu", vendor="tether")],
        points=[
            PointInfo(
                point_id=point_id,
                device_id=DEVICE,
                name="AHU 1 supply air temperature",
                unit="°C",
            )
        ],
    )


# -- load: one phase -------------------------------------------------------------------------


class LoadError(Exception):
    """A link broke the run: it closed, or the server answered something unexpected."""


@dataclass(slots=True)
class Budget:
    """The messages a load process may still send in a phase, and when sending stops."""

    remaining: int
    stop_at: float  # monotonic

    def take(self) -> bool:
        if self.remaining > 0 and time.monotonic() < self.stop_at:
            self.remaining -= 1
            return True
        return False


@dataclass(slots=True)
class Tally:
    """What one load process saw in a phase (sent as a dict to the parent)."""

    links: int = 0
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    #: In flight when the acks stopped being awaited.
    unacked: int = 0
    #: Acks that did not match what was sent (unknown sequence/packet id, wrong counts).
    wrong_acks: int = 0
    #: Messages of other kinds received meanwhile (configuration, pings answered...).
    other: int = 0
    errors: list[str] = field(default_factory=list)
    frame_min: int = 0
    frame_max: int = 0
    started: float = 0.0  # monotonic: the phase began
    last_ack: float = 0.0  # monotonic
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    def frame(self, size: int) -> None:
        self.frame_min = size if not self.frame_min else min(self.frame_min, size)
        self.frame_max = max(self.frame_max, size)


class Load:
    """A link of the run, ready to send (set up after it connected)."""

    __slots__ = ("link",)

    def __init__(self, link: lc.Link) -> None:
        self.link = link

    async def setup(self, limit: float) -> None:
        """What a link does after its handshake, before it sends."""

    async def run(self, window: int, budget: Budget, tally: Tally, ack_by: float) -> None:
        """Send within *window* while *budget* lasts, until every message is answered or the
        loop time *ack_by* passes (what is in flight then is counted unacknowledged)."""
        raise NotImplementedError


class TetherLoad(Load):
    """An agent's telemetry upload, reduced to its wire: batches of one observation."""

    __slots__ = ("point_id", "seq")

    def __init__(self, link: lc.Link) -> None:
        super().__init__(link)
        self.point_id = point_id_for(link.gateway_id)
        self.seq = 0  # the stream's last sequence number sent

    def _parts(self) -> tuple[aiohttp.ClientWebSocketResponse, Any]:
        link = self.link
        assert isinstance(link, lc.TetherLink)
        if link.ws is None or link.session is None:
            raise LoadError(f"{link.gateway_id}: not connected")
        return link.ws, link.session

    async def setup(self, limit: float) -> None:
        ws, session = self._parts()
        session.send(discovery(self.point_id))
        async with asyncio.timeout(limit):
            while True:
                for frame in session.data_to_send():
                    await ws.send_bytes(frame)
                msg = await ws.receive()
                if msg.type is not WSMsgType.BINARY:
                    raise LoadError(f"{self.link.gateway_id}: websocket {msg.type.name.lower()}")
                session.receive_frame(msg.data, now=time.monotonic())
                for event in session.events():
                    if isinstance(event, DiscoveryAck):
                        if event.points != 1:
                            raise LoadError(f"discovery acknowledged {event.points} points")
                        return
                    if isinstance(event, ConfigUpdate):  # an agent answers what it applied
                        session.send(
                            ConfigAck(section=event.section, version=event.version, ok=True)
                        )
                    elif isinstance(event, LinkClosed):
                        raise LoadError(f"link closed: {event.code} {event.reason}")

    async def run(self, window: int, budget: Budget, tally: Tally, ack_by: float) -> None:
        ws, session = self._parts()
        in_flight: set[int] = set()
        point_id = self.point_id

        async def fill() -> None:
            while len(in_flight) < window and budget.take():
                self.seq += 1
                session.send(telemetry_batch(point_id, self.seq, time.time()))
                in_flight.add(self.seq)
                tally.sent += 1
            for frame in session.data_to_send():
                if len(frame) > PING_FRAME_MAX:  # a heartbeat may go between the batches
                    tally.frame(len(frame))
                await ws.send_bytes(frame)

        try:
            async with asyncio.timeout_at(ack_by):
                await fill()
                while in_flight:
                    msg = await ws.receive()
                    if msg.type is not WSMsgType.BINARY:
                        raise LoadError(f"websocket {msg.type.name.lower()}")
                    now = time.monotonic()
                    session.receive_frame(msg.data, now=now)
                    for event in session.events():
                        if isinstance(event, TelemetryAck):
                            if (
                                event.stream != STREAM
                                or event.last_seq not in in_flight
                                or (event.accepted, event.duplicates) != (1, 0)
                            ):
                                tally.wrong_acks += 1
                                tally.error(f"{self.link.gateway_id}: unexpected {event!r}")
                            else:
                                tally.acked += 1
                                tally.last_ack = now
                            in_flight.discard(event.last_seq)
                        elif isinstance(event, TelemetryReject):
                            tally.rejected += 1
                            tally.error(f"{self.link.gateway_id}: {event!r}")
                            in_flight.difference_update(range(event.first_seq, event.last_seq + 1))
                        elif isinstance(event, LinkClosed):
                            raise LoadError(f"link closed: {event.code} {event.reason}")
                        else:
                            tally.other += 1
                    if now >= session.next_deadline():
                        session.tick(now)  # the agent's heartbeat, should a phase be long
                    await fill()
        except TimeoutError:
            tally.unacked += len(in_flight)


class MqttLoad(Load):
    """The same load as MQTT QoS 1 publishes of the same size."""

    __slots__ = ("packet_id", "payload", "topic")

    def __init__(self, link: lc.Link) -> None:
        super().__init__(link)
        self.topic = f"tether/{link.gateway_id}/telemetry"
        self.payload = os.urandom(MESSAGE_SIZE)
        self.packet_id = 0

    async def run(self, window: int, budget: Budget, tally: Tally, ack_by: float) -> None:
        link = self.link
        assert isinstance(link, lc.MqttLink)
        reader, writer = link.reader, link.writer
        if reader is None or writer is None:
            raise LoadError(f"{link.gateway_id}: not connected")
        in_flight: set[int] = set()
        topic, payload = self.topic, self.payload

        def fill() -> None:
            while len(in_flight) < window and budget.take():
                self.packet_id = self.packet_id % 65535 + 1
                packet = lc.mqtt_publish_qos1(self.packet_id, topic, payload)
                tally.frame(len(packet))
                writer.write(packet)
                in_flight.add(self.packet_id)
                tally.sent += 1

        try:
            async with asyncio.timeout_at(ack_by):
                fill()
                pending = b""
                while in_flight:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise LoadError("the broker closed the connection")
                    packets, pending = split_packets(pending + data)
                    for kind, body in packets:
                        if kind == lc.MQTT_PUBACK:
                            packet_id = int.from_bytes(body[:2], "big")
                            if packet_id in in_flight:
                                in_flight.discard(packet_id)
                                tally.acked += 1
                            else:
                                tally.wrong_acks += 1
                                tally.error(f"{link.gateway_id}: PUBACK of packet {packet_id}")
                        elif kind == lc.MQTT_PINGRESP:
                            tally.other += 1
                        else:
                            raise LoadError(f"unexpected MQTT packet type {kind}")
                    tally.last_ack = time.monotonic()
                    fill()
        except TimeoutError:
            tally.unacked += len(in_flight)
        except (ConnectionError, lc.MqttError) as exc:
            raise LoadError(f"{type(exc).__name__}: {exc}") from None


#: One read takes whatever the socket holds, up to this many bytes.
READ_SIZE = 64 * 1024


def split_packets(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole MQTT control packets at the start of *data*, as (type, body), and the rest.

    The load client parses what one read brought at once, rather than awaiting three reads per
    4-byte PUBACK (:func:`~bench.link_capacity.mqtt_read`): else the Python client, not the
    broker, sets the pace."""
    packets: list[tuple[int, bytes]] = []
    pos, size = 0, len(data)
    while pos + 2 <= size:
        length, shift, cursor = 0, 0, pos + 1
        while True:
            if cursor >= size:
                return packets, data[pos:]
            digit = data[cursor]
            cursor += 1
            length |= (digit & 0x7F) << shift
            if not digit & 0x80:
                break
            shift += 7
            if shift > 21:
                raise lc.MqttError("malformed remaining length")
        end = cursor + length
        if end > size:
            break
        packets.append((data[pos] >> 4, data[cursor:end]))
        pos = end
    return packets, data[pos:]


LOADS: dict[str, tuple[type[lc.Link], type[Load]]] = {
    "tether": (lc.TetherLink, TetherLoad),
    "mosquitto": (lc.MqttLink, MqttLoad),
}


async def run_phase(
    loads: Sequence[Load], budget: int, window: int, time_limit: float, grace: float
) -> Tally:
    """One phase over this process's links: *budget* messages, or *time_limit* seconds."""
    loop = asyncio.get_running_loop()
    tally = Tally(links=len(loads))
    cpu = time.process_time()
    tally.started = time.monotonic()
    share = Budget(budget, tally.started + time_limit)
    ack_by = loop.time() + time_limit + grace
    outcomes = await asyncio.gather(
        *(load.run(window, share, tally, ack_by) for load in loads), return_exceptions=True
    )
    for load, outcome in zip(loads, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, LoadError | OSError | aiohttp.ClientError):
                raise outcome
            tally.error(f"{load.link.gateway_id}: {type(outcome).__name__}: {outcome}")
    tally.wall_s = time.monotonic() - tally.started
    tally.cpu_s = time.process_time() - cpu
    tally.unacked = max(tally.unacked, tally.sent - tally.acked - tally.rejected - tally.wrong_acks)
    return tally


# -- load process ----------------------------------------------------------------------------


def worker_main(spec: lc.WorkerSpec, conn: Connection) -> None:
    """Entry point of a load process (multiprocessing, spawn)."""
    lc.raise_fd_limit()
    try:
        uvloop.run(_worker(spec, conn))
    finally:
        conn.close()


async def _worker(spec: lc.WorkerSpec, conn: Connection) -> None:
    """Connect the links (``go``), then run phases (``run``) until ``stop``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + spec.lifetime
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

    async def next_control() -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(control.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return ("stop",)

    loop.add_reader(fd, readable)
    link_type, load_type = LOADS[spec.kind]
    links = [link_type(gid, client_ssl_context(spec.ca_path, pem)) for gid, pem in spec.links]
    loads = [load_type(link) for link in links]
    send("ready")
    if (await next_control())[0] != "go":
        loop.remove_reader(fd)
        send("stopped", 0)
        return
    http: aiohttp.ClientSession | None = None
    if spec.kind == "tether":
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=spec.link_timeout),
        )
    try:
        gate = asyncio.Semaphore(spec.concurrency)
        errors: list[str] = []
        started = time.monotonic()

        async def connect(load: Load) -> None:
            async with gate:
                failed = await lc.dial(load.link, http, spec)
                if failed is None:
                    try:
                        await load.setup(spec.link_timeout)
                    except (LoadError, TimeoutError, OSError, aiohttp.ClientError) as exc:
                        failed = exc
                        load.link.open = False
            if failed is not None:
                errors.append(f"{load.link.gateway_id}: {type(failed).__name__}: {failed}")

        await asyncio.gather(*(connect(load) for load in loads))
        opened = sum(link.open for link in links)
        send("connected", opened, len(errors), errors[:5], time.monotonic() - started)
        while True:
            message = await next_control()
            if message[0] != "run":
                break
            _, budget, window, time_limit, grace = message
            ready = [load for load in loads if load.link.open]
            send("ran", asdict(await run_phase(ready, budget, window, time_limit, grace)))
        still_open = sum(link.open for link in links)
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(link.close() for link in links), return_exceptions=True), 30
            )
        if http is not None:
            await http.close()
    send("stopped", still_open)


class Fleet(lc.Fleet):
    """link_capacity's load processes, running this benchmark's worker."""

    worker = staticmethod(worker_main)


# -- server measurement ----------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """Each live thread of *pid*: its name, CPU seconds from the scheduler (ns resolution), and
    the same in clock ticks (what ``/proc/PID/stat`` sums, exited threads included)."""
    out: dict[int, tuple[str, float, float]] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                comm = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
                ns = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
                utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
                out[int(task)] = (comm, ns / 1e9, (int(utime) + int(stime)) / TICKS)
    return out


def process_ticks(pid: int) -> float:
    """User + system CPU seconds of *pid* in clock ticks, exited threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / TICKS


TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Figures:
    system: str
    links: int = 0
    window: int = 0
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    warmup_messages: int = 0
    warmup_acked: int = 0
    messages: int = 0
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    unacked: int = 0
    wrong_acks: int = 0
    errors: list[str] = field(default_factory=list)
    #: Sizes of what was sent (a tether frame: header + msgpack; an MQTT PUBLISH packet).
    message_bytes_min: int = 0
    message_bytes_max: int = 0
    #: The first send → the last ack of the timed phase.
    wall_s: float = 0.0
    acks_per_s: float = 0.0
    #: The server process's CPU over the timed phase, every thread (exited ones included).
    server_cpu_s: float = 0.0
    server_busy_percent: float = 0.0
    acks_per_cpu_s: float = 0.0
    #: The main thread (the event loop) and the others, from /proc/PID/task (live threads).
    event_loop_cpu_s: float = 0.0
    other_threads_cpu_s: float = 0.0
    #: CPU of threads that ended during the phase (the total less the live threads').
    exited_threads_cpu_s: float = 0.0
    threads: list[dict[str, Any]] = field(default_factory=list)
    #: The load processes' CPU over the phase (sum), and the busiest one's share of a core.
    client_cpu_s: float = 0.0
    client_busiest_percent: float = 0.0
    #: Every core of the machine over the phase (the servers, the load, anything else running).
    machine_busy_percent: float = 0.0
    #: tether only: the store afterwards (every stream's accepted and duplicate counts, rows).
    store_accepted: int | None = None
    store_duplicates: int | None = None
    store_rows: int | None = None


def _specs(config: BenchConfig, kind: str, port: int, ids: lc.Identities) -> list[lc.WorkerSpec]:
    n = config.load_processes
    lifetime = 600 + 2 * (config.time_limit + ACK_GRACE) + config.links * 0.05
    return [
        lc.WorkerSpec(
            kind=kind,
            host=lc.HOST,
            port=port,
            ca_path=str(ids.ca_path),
            links=ids.gateways[i::n],
            heartbeat=HEARTBEAT,
            concurrency=max(1, 100 // n),
            link_timeout=60.0,
            lifetime=lifetime,
            seed=i,
        )
        for i in range(n)
    ]


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


async def _phase(config: BenchConfig, fleet: Fleet, messages: int) -> list[Tally]:
    for index, share in enumerate(_shares(messages, len(fleet.procs))):
        fleet.tell(index, "run", share, config.window, config.time_limit, ACK_GRACE)
    replies = await fleet.gather("ran", limit=config.time_limit + ACK_GRACE + 60)
    return [Tally(**reply[1]) for reply in replies]


def _check(system: str, phase: str, tallies: Sequence[Tally]) -> None:
    errors = [e for t in tallies for e in t.errors]
    rejected = sum(t.rejected for t in tallies)
    unacked = sum(t.unacked for t in tallies)
    wrong = sum(t.wrong_acks for t in tallies)
    if errors or rejected or unacked or wrong:
        raise BenchError(
            f"{system} {phase}: {rejected} refused, {unacked} unacknowledged, {wrong} wrong "
            f"acks: {errors[:5]}"
        )


async def measure(
    config: BenchConfig, system: str, pid: int, specs: Sequence[lc.WorkerSpec]
) -> Figures:
    figures = Figures(system=system, links=config.links, window=config.window)

    def say(text: str) -> None:
        progress(config, system, text)

    async with Fleet(specs) as fleet:
        await fleet.gather("ready", limit=120 + config.links * 0.01)
        fleet.broadcast("go")
        connected = await fleet.gather("connected", limit=120 + config.links * 0.1)
        figures.connected = sum(m[1] for m in connected)
        figures.connect_errors = [e for m in connected for e in m[3]][:10]
        if figures.connected != config.links:
            raise BenchError(
                f"{system}: {figures.connected}/{config.links} links ready: "
                f"{figures.connect_errors}"
            )
        say(f"{figures.connected} links connected in {max(m[4] for m in connected):.1f} s")
        if config.warmup_messages:
            warm = await _phase(config, fleet, config.warmup_messages)
            _check(system, "warm-up", warm)
            figures.warmup_messages = config.warmup_messages
            figures.warmup_acked = sum(t.acked for t in warm)
            say(f"warm-up: {figures.warmup_acked} acks")
        await lc.settle(pid)
        threads_before, ticks_before = thread_cpu(pid), process_ticks(pid)
        machine_before = psutil.cpu_times()
        tallies = await _phase(config, fleet, config.messages)
        threads_after, ticks_after = thread_cpu(pid), process_ticks(pid)
        machine_after = psutil.cpu_times()
        _check(system, "timed phase", tallies)
        fleet.broadcast("stop")
        await fleet.gather("stopped", limit=120)

    figures.messages = config.messages
    figures.sent = sum(t.sent for t in tallies)
    figures.acked = sum(t.acked for t in tallies)
    figures.message_bytes_min = min(t.frame_min for t in tallies)
    figures.message_bytes_max = max(t.frame_max for t in tallies)
    figures.wall_s = max(t.last_ack for t in tallies) - min(t.started for t in tallies)
    figures.acks_per_s = figures.acked / figures.wall_s
    # Live threads at nanosecond resolution; threads that ended meanwhile from the process's
    # tick count, less what the live threads account for in ticks.
    live = live_ticks = 0.0
    for tid, (comm, after, after_ticks) in sorted(threads_after.items()):
        _, before, before_ticks = threads_before.get(tid, (comm, 0.0, 0.0))
        used = after - before
        live += used
        live_ticks += after_ticks - before_ticks
        role = "event loop" if tid == pid else "other"
        figures.threads.append({"tid": tid, "name": comm, "role": role, "cpu_s": used})
        if tid == pid:
            figures.event_loop_cpu_s = used
        else:
            figures.other_threads_cpu_s += used
    figures.exited_threads_cpu_s = max(0.0, (ticks_after - ticks_before) - live_ticks)
    server_cpu = live + figures.exited_threads_cpu_s
    figures.server_cpu_s = server_cpu
    figures.server_busy_percent = server_cpu / figures.wall_s * 100
    figures.acks_per_cpu_s = figures.acked / server_cpu if server_cpu > 0 else 0.0
    busy = sum(machine_after) - sum(machine_before)
    idle = (machine_after.idle + machine_after.iowait) - (
        machine_before.idle + machine_before.iowait
    )
    figures.machine_busy_percent = (1 - idle / busy) * 100 if busy > 0 else 0.0
    figures.client_cpu_s = sum(t.cpu_s for t in tallies)
    figures.client_busiest_percent = max(t.cpu_s / t.wall_s * 100 for t in tallies if t.wall_s)
    say(
        f"{figures.acked} acks in {figures.wall_s:.2f} s: {figures.acks_per_s:,.0f}/s, "
        f"server {server_cpu:.2f} CPU-s ({figures.server_busy_percent:.0f} % of a core): "
        f"{figures.acks_per_cpu_s:,.0f} acks per CPU-second; load client "
        f"{figures.client_busiest_percent:.0f} % of a core"
    )
    return figures


def store_counts(db: Path) -> tuple[int, int, int]:
    """(accepted, duplicates, rows) of the cloud's telemetry store."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        accepted, duplicates = conn.execute(
            "SELECT COALESCE(SUM(accepted), 0), COALESCE(SUM(duplicates), 0) FROM telemetry_streams"
        ).fetchone()
        (rows,) = conn.execute("SELECT COUNT(*) FROM observations").fetchone()
    return int(accepted), int(duplicates), int(rows)


async def bench_tether(
    config: BenchConfig, work: Path, ids: lc.Identities, certs: Sequence[tuple[str, Any]]
) -> Figures:
    data_dir = work / "cloud"
    db = (data_dir / "tether.db").resolve()
    await lc.register_gateways(f"sqlite+aiosqlite:///{db}", certs)
    port = lc.free_port()
    toml = work / "cloud.toml"
    toml.write_text(f"[link]\nheartbeat_interval = {HEARTBEAT}\n")
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
        lc.HOST,
    ]
    log_path = work / "cloud.log"
    with lc.server_process(argv, log_path) as proc:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(ids.ca_path))
        ) as http:

            async def probe() -> bool:
                async with http.get(f"https://{lc.HOST}:{port}/.well-known/tether/hello") as r:
                    return r.status == 200

            await lc.wait_ready(proc, probe, log_path)
        progress(config, "tether", f"cloud ready (pid {proc.pid})")
        figures = await measure(config, "tether", proc.pid, _specs(config, "tether", port, ids))
    accepted, duplicates, rows = store_counts(db)
    figures.store_accepted, figures.store_duplicates, figures.store_rows = (
        accepted,
        duplicates,
        rows,
    )
    expected = figures.warmup_acked + figures.acked
    if (accepted, duplicates, rows) != (expected, 0, expected):
        raise BenchError(
            f"tether: the store holds {rows} rows, {accepted} accepted, {duplicates} duplicates; "
            f"{expected} observations were acknowledged"
        )
    return figures


async def bench_mosquitto(config: BenchConfig, work: Path, ids: lc.Identities) -> Figures:
    if not lc.MOSQUITTO.exists():
        raise BenchError(f"{lc.MOSQUITTO} is missing: run scripts/sysdeps.sh")
    port = lc.free_port()
    log_path = work / "mosquitto.log"
    conf = lc.mosquitto_config(work, port, ids.ca_path, ids.server_cert, ids.server_key, log_path)
    with lc.server_process([str(lc.MOSQUITTO), "-c", str(conf)], work / "mosquitto.out") as proc:

        async def probe() -> bool:
            client = lc.MqttLink("bench-probe", client_ssl_context(ids.ca_path, ids.probe))
            try:
                await client.dial(lc.HOST, port, int(HEARTBEAT), subscribe=False)
            finally:
                await client.close()
            return True

        await lc.wait_ready(proc, probe, log_path)
        progress(config, "mosquitto", f"broker ready (pid {proc.pid})")
        return await measure(config, "mosquitto", proc.pid, _specs(config, "mosquitto", port, ids))


# -- report ----------------------------------------------------------------------------------

#: Rows of the table: (figure, label, unit, judged against the target).
ROWS = (
    ("acks_per_cpu_s", "acks per server CPU-second (per core)", "msg/CPU-s", True),
    ("acks_per_s", "acks per second (wall)", "msg/s", False),
    ("server_cpu_s", "server CPU over the timed phase", "CPU-s", False),
    ("server_busy_percent", "server busy", "% core", False),
    ("event_loop_cpu_s", "  of which its main thread", "CPU-s", False),
    ("other_threads_cpu_s", "  of which its other threads", "CPU-s", False),
    ("client_cpu_s", "load client CPU", "CPU-s", False),
    ("client_busiest_percent", "busiest load process", "% core", False),
    ("machine_busy_percent", "machine busy, all cores", "%", False),
)


def comparisons(systems: dict[str, Figures]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key, label, unit, judged in ROWS:
        row: dict[str, Any] = {"figure": key, "label": label, "unit": unit}
        for name, figures in systems.items():
            row[name] = getattr(figures, key)
        tether, mosquitto = row.get("tether"), row.get("mosquitto")
        row["ratio"] = tether / mosquitto if tether is not None and mosquitto else None
        row["target"] = f">= {TARGET_RATIO} x Mosquitto" if judged else "-"
        row["limit"] = TARGET_RATIO if judged else None
        row["met"] = None if not judged or row["ratio"] is None else row["ratio"] >= TARGET_RATIO
        out.append(row)
    return out


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(config: BenchConfig, rows: Sequence[dict[str, Any]]) -> str:
    head = ["figure", "unit", *SYSTEMS, "tether/mosq", "target", ""]
    lines = [head]
    for row in rows:
        ratio = row["ratio"]
        lines.append(
            [
                row["label"],
                row["unit"],
                *(_number(row.get(s)) for s in SYSTEMS),
                f"{ratio:.2f}x" if ratio is not None else "-",
                row["target"],
                {True: "met", False: "MISSED", None: ""}[row["met"]],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    title = (
        f"link throughput: {config.links} links, window {config.window}, "
        f"{config.messages:,} acknowledged {MESSAGE_SIZE}-byte messages per system "
        f"(after {config.warmup_messages:,} to warm up), {config.load_processes} load process(es)"
    )
    body = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join([title, *body])


async def _run(config: BenchConfig) -> dict[str, Any]:
    lc.raise_fd_limit()
    systems: dict[str, Figures] = {}
    load_before = os.getloadavg()
    keep = config.keep is not None
    if keep:
        assert config.keep is not None
        config.keep.mkdir(parents=True, exist_ok=False)
    with (
        contextlib.nullcontext(str(config.keep))
        if keep
        else tempfile.TemporaryDirectory(prefix="bench-throughput-")
    ) as tmp:
        work = Path(tmp)
        # The cloud finds this CA in its data directory and adopts it.
        ca = CertificateAuthority.load_or_create(work / "cloud" / "pki")
        ids, certs = lc.issue_identities(ca, work / "creds", config.links)
        if "tether" in config.systems:
            systems["tether"] = await bench_tether(config, work, ids, certs)
        if "mosquitto" in config.systems:
            systems["mosquitto"] = await bench_mosquitto(config, work, ids)
    return {
        "machine": {**lc.machine(), "cpu_count_affinity": len(psutil.Process().cpu_affinity())},
        "parameters": {
            "links": config.links,
            "window": config.window,
            "messages": config.messages,
            "warmup_messages": config.warmup_messages,
            "time_limit_s": config.time_limit,
            "ack_grace_s": ACK_GRACE,
            "load_processes": config.load_processes,
            "message_bytes": MESSAGE_SIZE,
            "observations_per_batch": 1,
            "heartbeat_s": HEARTBEAT,
            "loadavg_before": list(load_before),
        },
        "systems": {name: asdict(figures) for name, figures in systems.items()},
        "comparisons": comparisons(systems),
    }


def run(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; print the table, write the results file, return what was recorded."""
    config.check()
    result = bench.run_async(_run(config), "link_throughput")
    if not config.quiet:
        print(format_table(config, result["comparisons"]))
    if config.results is not None:
        path = bench.record("link_throughput", result, results=config.results)
        if not config.quiet:
            print(f"recorded in {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.link_throughput", description=__doc__)
    defaults = BenchConfig()
    parser.add_argument("--links", type=int, default=defaults.links)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--messages", type=int, default=defaults.messages, help="timed phase")
    parser.add_argument("--warmup", type=int, default=None, help="default: a tenth of --messages")
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit)
    parser.add_argument("--load-processes", type=int, default=defaults.load_processes)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--results", type=Path, default=bench.RESULTS, help="a directory")
    parser.add_argument(
        "--no-results", "--no-record", dest="no_results", action="store_true", help="record nothing"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this new directory")
    parsed = parser.parse_args(args)
    config = replace(
        defaults,
        links=parsed.links,
        window=parsed.window,
        messages=parsed.messages,
        warmup=parsed.warmup,
        time_limit=parsed.time_limit,
        load_processes=parsed.load_processes,
        systems=tuple(s for s in parsed.systems.split(",") if s),
        quiet=parsed.quiet,
        results=None if parsed.no_results else parsed.results,
        keep=parsed.keep,
    )
    try:
        run(config)
    except lc.BenchError as exc:
        print(f"link_throughput: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Through the package name, so the load processes (spawned) find the same functions.
    from bench.link_throughput import main as _main

    raise SystemExit(_main())
