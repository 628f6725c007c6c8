"""Two link sessions wired together in memory, with a fake monotonic clock: no sockets.

In the spirit of h11's ``ConnectionPair``: a :class:`SessionPair` holds a client
(:class:`~tether.protocol.session.LinkSession` in the gateway role) and a server (the cloud),
moves the frames each one wants to send into the other, and lets a test drop or corrupt frames
on the way and move time forward.

    pair = SessionPair()
    welcome = pair.open()
    pair.client.send(TelemetryAck(stream="s", last_seq=1))
    pair.pump()
    assert pair.server.events() == [TelemetryAck(stream="s", last_seq=1)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tether.protocol.codec import HEADER
from tether.protocol.messages import (
    Close,
    CommandRequest,
    CommandUpdate,
    CommandUpdateAck,
    ConfigAck,
    ConfigUpdate,
    Discovery,
    DiscoveryAck,
    DropReport,
    DropReportAck,
    ErrorReport,
    HealthReport,
    Hello,
    LogBatch,
    LogBatchAck,
    LogRecord,
    Message,
    NetcheckReport,
    Ping,
    Pong,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
    Welcome,
)
from tether.protocol.session import (
    Event,
    HelloReceived,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

__all__ = [
    "FakeClock",
    "Mangle",
    "SessionPair",
    "corrupt_payload",
    "drop",
    "flip_bit",
    "sample_messages",
]

#: Applied to each frame in transit: return the bytes to deliver, or ``None`` to drop the frame.
Mangle = Callable[[bytes], bytes | None]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds
        return self.now

    def set(self, when: float) -> float:
        return self.advance(when - self.now)


def drop(frame: bytes) -> None:
    """A :data:`Mangle` that loses every frame."""
    return None


def flip_bit(frame: bytes, bit: int) -> bytes:
    """*frame* with one bit inverted (bit 0 is the lowest bit of the first byte)."""
    data = bytearray(frame)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def corrupt_payload(frame: bytes) -> bytes:
    """*frame* with a valid header but a payload that is not a message (same length)."""
    size = len(frame) - HEADER.size
    # 0xc1 is the one byte msgpack never uses: no prefix of it decodes.
    return frame[: HEADER.size] + b"\xc1" * size


class SessionPair:
    """A client and a server session joined by an in-memory wire."""

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        client_options: Mapping[str, Any] | None = None,
        server_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.client = LinkSession(Role.CLIENT, now=self.clock.now, **dict(client_options or {}))
        self.server = LinkSession(Role.SERVER, now=self.clock.now, **dict(server_options or {}))
        #: Frames each side sent, as they left it (before any mangling), in order.
        self.sent: dict[Role, list[bytes]] = {Role.CLIENT: [], Role.SERVER: []}
        #: Frames lost on the way by a mangle returning ``None``.
        self.dropped: dict[Role, int] = {Role.CLIENT: 0, Role.SERVER: 0}

    @property
    def now(self) -> float:
        return self.clock.now

    def session(self, role: Role) -> LinkSession:
        return self.client if role is Role.CLIENT else self.server

    def peer(self, role: Role) -> LinkSession:
        return self.server if role is Role.CLIENT else self.client

    # -- moving frames ----------------------------------------------------------------------

    def transfer(self, sender: Role, *, mangle: Mangle | None = None) -> list[bytes]:
        """Deliver what *sender* has to send to its peer; return the frames that arrived."""
        receiver = self.peer(sender)
        arrived: list[bytes] = []
        for frame in self.session(sender).data_to_send():
            self.sent[sender].append(frame)
            delivered = frame if mangle is None else mangle(frame)
            if delivered is None:
                self.dropped[sender] += 1
                continue
            receiver.receive_frame(delivered, now=self.clock.now)
            arrived.append(delivered)
        return arrived

    def pump(
        self,
        *,
        to_server: Mangle | None = None,
        to_client: Mangle | None = None,
        max_rounds: int = 32,
    ) -> int:
        """Move frames both ways until neither side has anything to send; return how many."""
        moved = 0
        for _ in range(max_rounds):
            batch = len(self.transfer(Role.CLIENT, mangle=to_server))
            batch += len(self.transfer(Role.SERVER, mangle=to_client))
            moved += batch
            if batch == 0:
                return moved
        raise AssertionError(f"the sessions were still talking after {max_rounds} rounds")

    def drain(self) -> tuple[list[Event], list[Event]]:
        """The pending events of (client, server)."""
        return self.client.events(), self.server.events()

    # -- the handshake ----------------------------------------------------------------------

    def open(
        self,
        *,
        session_id: str = "session-1",
        gateway_id: str = "gw-1",
        server_time: float = 1_700_000_000.0,
        heartbeat_interval: float | None = None,
    ) -> Welcome:
        """Run hello → accept → welcome; consume and check the handshake events."""
        self.pump()
        server_events = self.server.events()
        if len(server_events) != 1 or not isinstance(server_events[0], HelloReceived):
            raise AssertionError(f"server did not receive exactly one hello: {server_events}")
        welcome = self.server.accept(
            session_id=session_id,
            gateway_id=gateway_id,
            server_time=server_time,
            now=self.clock.now,
            heartbeat_interval=heartbeat_interval,
        )
        self.pump()
        client_events, server_events = self.drain()
        if client_events != [LinkOpened(welcome)]:
            raise AssertionError(f"client did not open: {client_events}")
        if server_events != [LinkOpened(welcome)]:
            raise AssertionError(f"server did not open: {server_events}")
        if self.client.state is not SessionState.OPEN or self.server.state is not SessionState.OPEN:
            raise AssertionError("link not open on both sides after the handshake")
        return welcome

    # -- time -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return min(self.client.next_deadline(), self.server.next_deadline())

    def tick(self) -> None:
        self.client.tick(self.clock.now)
        self.server.tick(self.clock.now)

    def advance(
        self,
        seconds: float,
        *,
        to_server: Mangle | None = None,
        to_client: Mangle | None = None,
    ) -> None:
        """Move the clock forward, tick both sides, and pump what the ticks produced."""
        self.clock.advance(seconds)
        self.tick()
        self.pump(to_server=to_server, to_client=to_client)

    def step(self, *, to_server: Mangle | None = None, to_client: Mangle | None = None) -> float:
        """Jump to the earliest deadline of either side, tick, pump; return the new time."""
        deadline = self.next_deadline()
        if math.isinf(deadline):
            raise AssertionError("both sessions are closed: no deadline to step to")
        self.clock.set(max(deadline, self.clock.now))
        self.tick()
        self.pump(to_server=to_server, to_client=to_client)
        return self.clock.now


def sample_messages() -> list[Message]:
    """One filled-in message of every link message type, in ``MESSAGE_TYPES`` order."""
    observations = [
        Observation("b1/ahu-1/sat", 1_718_000_000.25, 13.2),
        Observation("b1/meter/energy", 1_718_000_000.5, 123_456_789_012, "uncertain"),
        Observation("b1/ahu-1/fan", 1_718_000_001.0, True),
        Observation("b1/ahu-1/mode", 1_718_000_002.0, "economiser", "bad"),
    ]
    return [
        Hello(
            protocol_versions=[1],
            agent_version="0.1.0",
            max_frame=65_536,
            boot_id="boot-7f3a",
            tier="longpoll",
            capabilities=["telemetry", "logs"],
        ),
        Welcome(
            protocol_version=1,
            session_id="5f0c9d3e8a4b4e7f9d2c1b0a9e8d7c6b",
            gateway_id="gw-0001",
            max_frame=65_536,
            heartbeat_interval=25.0,
            server_time=1_718_000_000.125,
        ),
        Ping(seq=7),
        Pong(seq=7),
        Close(code="going-away", reason="cloud node draining"),
        ErrorReport(code="malformed-frame", message="bad field", ref="cmd-1"),
        CommandRequest(
            command_id="cmd-1",
            kind="reboot",
            args={"delay": 5, "force": False, "targets": ["a", "b"], "nested": {"x": 1.5}},
            expires_at=1_718_000_600.0,
        ),
        CommandUpdate(command_id="cmd-1", state="failed", result={"rc": 1}, error="refused"),
        CommandUpdateAck(command_id="cmd-1", state="failed"),
        TelemetryBatch(stream="bacnet", first_seq=41, last_seq=44, observations=observations),
        TelemetryAck(stream="bacnet", last_seq=44, accepted=3, duplicates=1),
        TelemetryReject(stream="bacnet", first_seq=41, last_seq=44, reason="gap", permanent=False),
        DropReport(stream="bacnet", dropped_total=12),
        DropReportAck(stream="bacnet", dropped_total=12),
        Discovery(
            connector="bacnet-1",
            devices=[
                DeviceInfo(
                    device_id="dev-1",
                    name="AHU 1",
                    kind="ahu",
                    vendor="Acme",
                    attributes={"instance": "1001"},
                )
            ],
            points=[
                PointInfo(point_id="b1/ahu-1/sat", device_id="dev-1", name="SAT", unit="°C"),
                PointInfo(
                    point_id="b1/ahu-1/fan",
                    device_id="dev-1",
                    name="Fan",
                    kind="boolean",
                    writable=True,
                ),
            ],
        ),
        DiscoveryAck(connector="bacnet-1", points=2),
        ConfigUpdate(section="connectors", version=3, data={"bacnet": {"poll": 10}}),
        ConfigAck(section="connectors", version=3, ok=False, error="unknown key"),
        HealthReport(ts=1_718_000_000.0, data={"cpu": 0.5, "spool_depth": 0, "ok": True}),
        LogBatch(
            seq=9,
            records=[
                LogRecord(1_718_000_000.0, "info", "agent", "link up"),
                LogRecord(
                    1_718_000_001.0,
                    "warning",
                    "bacnet",
                    "slow device ✓",
                    customer_data=True,
                    fields={"device": "dev-1", "ms": 1200},
                ),
            ],
            dropped=2,
        ),
        LogBatchAck(seq=9),
        NetcheckReport(ts=1_718_000_000.0, report={"dns": "ok", "tls": {"intercepted": False}}),
    ]
