"""How a link's answers leave and when it reads: the acknowledgements of one group commit go out
in one write, and a link stops reading while the ingest queue is full.

A :class:`~tether.cloud.link.WebSocketLink` is driven by real frames from a client session. The
channel records each write and each pause. For the writes the service holds every telemetry batch
until the test lets the "group commit" through at once, as the ingest pipeline does; for the
pauses the service is the real ingest pipeline on a SQLite store.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.ingest import started

from tether.cloud.ingest import IngestPipeline
from tether.cloud.link import LinkHub, WebSocketLink
from tether.cloud.store import Store
from tether.cloud.store.telemetry import TelemetryStore
from tether.cloud.wsserver import OP_BINARY, LinkConnection, encode_frame_header
from tether.protocol.codec import decode_frame
from tether.protocol.messages import Message, TelemetryAck, TelemetryBatch, TelemetryReject
from tether.protocol.session import HelloReceived, LinkSession, Role
from tether.protocol.telemetry import Observation

GATEWAY = "gw-1"


class RecordingChannel:
    """A link channel that keeps what it is given to write, one list per write, and whether
    it was told to read."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.wrote = asyncio.Event()
        self.reading = True
        self.paused = asyncio.Event()
        self.pauses = 0

    def write_frames(self, frames: list[bytes]) -> None:
        self.writes.append(list(frames))
        self.wrote.set()

    async def drain(self) -> None:
        return None

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1
        self.paused.set()

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close_transport(self, code: int = 1000, reason: str = "") -> None:
        pass


class HeldService:
    """Answers each batch with its ack, all at once when :meth:`commit` is called."""

    telemetry_gate = None  # no ingest queue to wait for

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


def open_link(channel: RecordingChannel, service: Any) -> tuple[WebSocketLink, LinkSession]:
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


class IngestService:
    """The gateway service's telemetry part: the real ingest pipeline, its gate included."""

    def __init__(self, pipeline: IngestPipeline) -> None:
        self.pipeline = pipeline
        self.telemetry_gate = pipeline

    async def handle(self, gateway_id: str, message: Message) -> list[Message]:
        return await self.pipeline.on_batch(gateway_id, message)


@pytest.fixture
async def telemetry(tmp_path: Path) -> AsyncIterator[TelemetryStore]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    try:
        yield TelemetryStore(store.engine)
    finally:
        await store.close()


def batch(first: int, last: int) -> TelemetryBatch:
    return TelemetryBatch(
        "sim", first, last, [Observation("p", 1.0e9 + s, 1.0) for s in range(first, last + 1)]
    )


async def test_a_link_reads_nothing_more_while_the_ingest_queue_is_full(
    telemetry: TelemetryStore,
) -> None:
    pipeline = IngestPipeline(telemetry, max_queued_rows=10)  # started once the link paused
    channel = RecordingChannel()
    link, client = open_link(channel, IngestService(pipeline))
    other = asyncio.create_task(pipeline.on_batch("gw-2", batch(1, 10)))
    await asyncio.sleep(0)  # its batch is queued: the queue is full
    assert not pipeline.has_room()

    client.send(batch(1, 5))
    client.send(batch(6, 10))
    for frame in client.data_to_send():
        link.frame_received(frame)
    await asyncio.wait_for(channel.paused.wait(), 5)
    assert not channel.reading
    assert pipeline.queued_rows == 10  # the link holds its batch: none of it is queued
    assert channel.writes == []

    async with started(pipeline):
        [ack] = await asyncio.wait_for(other, 10)
        assert isinstance(ack, TelemetryAck)
        await asyncio.wait_for(channel.wrote.wait(), 10)
        while sum(len(w) for w in channel.writes) < 2:
            channel.wrote.clear()
            await asyncio.wait_for(channel.wrote.wait(), 10)
    assert channel.reading  # read on once there was room
    acks = [decode_frame(frame) for write in channel.writes for frame in write]
    assert acks == [TelemetryAck("sim", 5, accepted=5), TelemetryAck("sim", 10, accepted=5)]
    assert channel.pauses == 1
    rows = await telemetry.query(GATEWAY, point_id=None, since=None, until=None, limit=100)
    assert [round(r.ts - 1.0e9) for r in rows] == list(range(1, 11))


async def test_batches_taken_while_there_is_room_are_answered_in_one_write_after_their_commit(
    telemetry: TelemetryStore,
) -> None:
    pipeline = IngestPipeline(telemetry)  # started once the batches are queued
    channel = RecordingChannel()
    link, client = open_link(channel, IngestService(pipeline))
    for seq in range(1, 6):
        client.send(batch(seq, seq))
        for frame in client.data_to_send():
            link.frame_received(frame)
        assert link._worker is None  # taken in the call itself, no task of the link's own
    assert pipeline.queued_rows == 5
    assert channel.writes == []  # nothing is answered before the commit

    async with started(pipeline):
        await asyncio.wait_for(channel.wrote.wait(), 10)
        for _ in range(10):  # a few more loop passes: any straggling write would show
            await asyncio.sleep(0)
    assert len(channel.writes) == 1
    acks = [decode_frame(frame) for frame in channel.writes[0]]
    assert acks == [TelemetryAck("sim", seq, accepted=1) for seq in range(1, 6)]
    rows = await telemetry.query(GATEWAY, point_id=None, since=None, until=None, limit=100)
    assert len(rows) == 5


async def test_a_malformed_batch_is_refused_for_good_at_once(telemetry: TelemetryStore) -> None:
    pipeline = IngestPipeline(telemetry)  # never started: a refusal needs no commit
    channel = RecordingChannel()
    link, client = open_link(channel, IngestService(pipeline))
    client.send(TelemetryBatch("sim", 1, 1, [Observation("p", 1.0e9, math.nan)]))
    for frame in client.data_to_send():
        link.frame_received(frame)
    [[frame]] = channel.writes  # written in the same call
    reject = decode_frame(frame)
    assert isinstance(reject, TelemetryReject)
    assert (reject.stream, reject.first_seq, reject.last_seq) == ("sim", 1, 1)
    assert reject.permanent
    assert "finite" in reject.reason
    assert pipeline.queued_rows == 0


class FailingGate:
    """An ingest gate that takes every batch and then fails to answer it (cancels its future,
    or sets an error): a bug the link must not turn into silence."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.telemetry_gate = self
        self.answers: list[asyncio.Future[TelemetryAck | TelemetryReject]] = []

    def has_room(self) -> bool:
        return True

    async def room(self) -> None:
        return None

    def submit(
        self, gateway_id: str, message: TelemetryBatch
    ) -> asyncio.Future[TelemetryAck | TelemetryReject]:
        answer: asyncio.Future[TelemetryAck | TelemetryReject] = (
            asyncio.get_running_loop().create_future()
        )
        self.answers.append(answer)
        return answer

    async def handle(self, gateway_id: str, message: Message) -> list[Message]:
        raise AssertionError("a batch goes to the gate, not through handle()")


@pytest.mark.parametrize("how", ["cancelled", "error"])
async def test_a_batch_ingest_fails_to_answer_is_refused_for_now(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel, gate = RecordingChannel(), FailingGate(how)
    link, client = open_link(channel, gate)
    client.send(batch(7, 9))
    for frame in client.data_to_send():
        link.frame_received(frame)
    [answer] = gate.answers
    if how == "cancelled":
        answer.cancel()
    else:
        answer.set_exception(RuntimeError("writer crashed"))
    await asyncio.wait_for(channel.wrote.wait(), 5)
    [[frame]] = channel.writes
    reject = decode_frame(frame)
    assert isinstance(reject, TelemetryReject)
    assert (reject.stream, reject.first_seq, reject.last_seq) == ("sim", 7, 9)
    assert not reject.permanent  # the gateway keeps it on its spool and sends it again
    assert "sim 7..9 went unanswered" in caplog.text


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
