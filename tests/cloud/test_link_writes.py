"""How a link's answers leave: the acknowledgements of one group commit go out in one write.

A :class:`~tether.cloud.link.WebSocketLink` is driven by real frames from a client session; its
service holds every telemetry batch until the test lets the "group commit" through at once, as
the ingest pipeline does. The channel records each write.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from tether.cloud.link import LinkHub, WebSocketLink
from tether.cloud.wsserver import OP_BINARY, LinkConnection, encode_frame_header
from tether.protocol.codec import decode_frame
from tether.protocol.messages import Message, TelemetryAck, TelemetryBatch
from tether.protocol.session import HelloReceived, LinkSession, Role
from tether.protocol.telemetry import Observation

GATEWAY = "gw-1"


class RecordingChannel:
    """A link channel that keeps what it is given to write, one list per write."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.wrote = asyncio.Event()

    def write_frames(self, frames: list[bytes]) -> None:
        self.writes.append(list(frames))
        self.wrote.set()

    async def drain(self) -> None:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close_transport(self, code: int = 1000, reason: str = "") -> None:
        pass


class HeldService:
    """Answers each batch with its ack, all at once when :meth:`commit` is called."""

    def __init__(self, batches: int) -> None:
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batches = batches
        self.waiting = 0
        self.all_waiting = asyncio.Event()

    async def handle(self, gateway_id: str, message: Message) -> list[Message]:
        assert gateway_id == GATEWAY
        assert isinstance(message, TelemetryBatch)
        self.waiting += 1
        if self.waiting == self.batches:
            self.all_waiting.set()
        await self.committed
        return [TelemetryAck(message.stream, message.last_seq, accepted=1)]

    def commit(self) -> None:
        self.committed.set_result(None)


def open_link(channel: RecordingChannel, service: HeldService) -> tuple[WebSocketLink, LinkSession]:
    """A server link and the client session it opened with (the hello answered by hand: the
    store's part of opening is not what this test is about)."""
    hub = LinkHub()
    link = WebSocketLink(
        channel,
        SimpleNamespace(gateway_id=GATEWAY),  # type: ignore[arg-type]
        service=service,  # type: ignore[arg-type]
        hub=hub,
        store=None,  # type: ignore[arg-type]
        links=None,  # type: ignore[arg-type]
        peer=None,
        heartbeat_interval=30.0,
        max_frame=1 << 20,
    )
    client = LinkSession(Role.CLIENT, now=time.monotonic())
    for frame in client.data_to_send():
        link.session.receive_frame(frame, now=time.monotonic())
    assert any(isinstance(e, HelloReceived) for e in link.session.events())
    link.session.accept(
        session_id="s-1", gateway_id=GATEWAY, server_time=time.time(), now=time.monotonic()
    )
    link.session.events()
    for frame in link.session.data_to_send():  # the welcome
        client.receive_frame(frame, now=time.monotonic())
    client.events()
    return link, client


async def test_the_acks_of_one_commit_leave_in_one_write() -> None:
    channel, service = RecordingChannel(), HeldService(5)
    link, client = open_link(channel, service)
    for seq in range(1, 6):
        client.send(TelemetryBatch("sim", seq, seq, [Observation("p", 1.0e9 + seq, 1.0)]))
        for frame in client.data_to_send():
            link.frame_received(frame)

    await asyncio.wait_for(service.all_waiting.wait(), 5)
    assert channel.writes == []  # nothing is answered before the commit
    service.commit()
    await asyncio.wait_for(channel.wrote.wait(), 5)
    for _ in range(10):  # a few more loop passes: any straggling write would show
        await asyncio.sleep(0)
    assert len(channel.writes) == 1
    acks = [decode_frame(frame) for frame in channel.writes[0]]
    assert acks == [TelemetryAck("sim", seq, accepted=1) for seq in range(1, 6)]


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return False


def test_several_frames_are_one_write_in_their_order() -> None:
    transport = RecordingTransport()
    connection = LinkConnection(transport, 1 << 20)  # type: ignore[arg-type]
    frames = [b"a" * 10, b"b" * 300, b"c" * 70_000]
    connection.write_frames(frames)
    expected = b"".join(encode_frame_header(OP_BINARY, len(f)) + f for f in frames)
    assert transport.writes == [expected]
    connection.write_frames([b"d"])
    assert transport.writes[1] == encode_frame_header(OP_BINARY, 1) + b"d"
