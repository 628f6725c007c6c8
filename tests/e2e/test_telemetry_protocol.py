"""Misbehaving telemetry on a real mutual-TLS WebSocket link, sent by hand with a gateway's
credentials: malformed, out-of-order and oversized batches are refused with a clear reason and
the link goes on; repeated and overlapping batches are stored once.

The cloud's frame limit is lowered to 64 KiB so that an oversized frame is cheap to build.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.cloudproc import Cloud, RawLink, create_token, enroll_gateway, running_cloud

from tether.cloud.store import Store
from tether.cloud.store.telemetry import StreamRecord, TelemetryStore
from tether.gateway.identity import GatewayIdentity
from tether.protocol.codec import HEADER, PROTOCOL_VERSION, encode_frame
from tether.protocol.messages import (
    ErrorReport,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.telemetry import Observation

MAX_FRAME = 64 * 1024
T0 = 1_718_000_000.0
POINT = "b1/ahu-1/sat"


def obs(first: int, last: int) -> list[Observation]:
    return [Observation(POINT, T0 + seq, float(seq)) for seq in range(first, last + 1)]


def tm(first: int, last: int, stream: str = "sim") -> TelemetryBatch:
    return TelemetryBatch(stream, first, last, obs(first, last))


class HandLink(RawLink):
    """A raw link that can also write bytes the session would refuse to frame."""

    async def send_frame(self, frame: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(frame)

    async def reply(self, message: Message) -> Message:
        """Send *message* and return the cloud's telemetry answer (ack, reject or error)."""
        await self.send(message)
        return await self.answer()

    async def answer(self) -> Message:
        got = await self.next_message(
            lambda m: isinstance(m, TelemetryAck | TelemetryReject | ErrorReport)
        )
        assert got is not None
        return got


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", max_frame=MAX_FRAME) as running:
        yield running


@pytest.fixture
async def gateway(tmp_path: Path, cloud: Cloud) -> GatewayIdentity:
    async with cloud.api() as api:
        code = (await create_token(api, name="raw"))["enrollment_code"]
    return await enroll_gateway(code, tmp_path / "gw")


def link(cloud: Cloud, gateway: GatewayIdentity) -> HandLink:
    return HandLink(cloud.url, gateway.ssl_context())


async def store_view(cloud: Cloud, gateway_id: str) -> tuple[list[StreamRecord], list[int]]:
    """The gateway's streams and the sequence numbers stored (decoded from the timestamps)."""
    store = await Store.open(cloud.database)
    try:
        telemetry = TelemetryStore(store.engine)
        rows = await telemetry.query(
            gateway_id, point_id=None, since=None, until=None, limit=100_000
        )
        return await telemetry.streams(gateway_id), [round(r.ts - T0) for r in rows]
    finally:
        await store.close()


def rejected(reply: Message, first: int, last: int, *reason: str) -> TelemetryReject:
    assert isinstance(reply, TelemetryReject), reply
    assert (reply.first_seq, reply.last_seq, reply.permanent) == (first, last, True)
    for text in reason:
        assert text in reply.reason, reply.reason
    return reply


async def test_malformed_batches_are_refused_and_the_link_goes_on(
    cloud: Cloud, gateway: GatewayIdentity
) -> None:
    async with link(cloud, gateway) as raw:
        assert raw.session.max_frame == MAX_FRAME  # negotiated down to the cloud's limit
        assert await raw.reply(tm(1, 10)) == TelemetryAck("sim", 10, accepted=10)

        count = TelemetryBatch("sim", 11, 20, obs(11, 19))
        rejected(await raw.reply(count), 11, 20, "11..20", "does not match 9 observations")
        zero = TelemetryBatch("sim", 0, 9, obs(1, 10))
        rejected(await raw.reply(zero), 0, 9, "first_seq 0 must be at least 1")
        backwards = TelemetryBatch("sim", 20, 11, obs(11, 20))
        rejected(await raw.reply(backwards), 20, 11, "out of order", "last_seq 11")
        nan = TelemetryBatch("sim", 11, 12, [*obs(11, 11), Observation(POINT, T0 + 12, math.nan)])
        rejected(await raw.reply(nan), 11, 12, POINT, "not a finite number")
        stream = TelemetryBatch("bad stream!", 1, 1, obs(1, 1))
        reply = rejected(await raw.reply(stream), 1, 1, "'bad stream!'", "not valid")
        assert reply.stream == "bad stream!"

        # The link survived every refusal: the next valid batch is stored and acknowledged.
        assert await raw.reply(tm(11, 20)) == TelemetryAck("sim", 20, accepted=10)
        assert raw.closed is None

    streams, seqs = await store_view(cloud, gateway.gateway_id)
    assert [(s.stream, s.hwm, s.accepted, s.gaps) for s in streams] == [("sim", 20, 20, 0)]
    assert seqs == list(range(1, 21))


async def test_an_oversized_or_undecodable_frame_is_refused_and_the_link_goes_on(
    cloud: Cloud, gateway: GatewayIdentity
) -> None:
    big = tm(1, 3000)  # about 100 KB: over the 64 KiB frame, under twice it
    frame = encode_frame(big)
    assert MAX_FRAME < len(frame) - HEADER.size < 2 * MAX_FRAME
    async with link(cloud, gateway) as raw:
        await raw.send_frame(frame)
        reply = await raw.answer()
        assert isinstance(reply, ErrorReport), reply
        assert reply.code == "frame-too-large"
        assert str(MAX_FRAME) in reply.message

        payload = b"\xc1 not msgpack"
        await raw.send_frame(HEADER.pack(PROTOCOL_VERSION, 0, len(payload)) + payload)
        reply = await raw.answer()
        assert isinstance(reply, ErrorReport), reply
        assert reply.code == "malformed-frame"

        # The same observations in frames that fit are taken, and nothing else was lost.
        for first in range(1, 3001, 1000):
            ack = await raw.reply(tm(first, first + 999))
            assert ack == TelemetryAck("sim", first + 999, accepted=1000)
        assert raw.closed is None

    streams, seqs = await store_view(cloud, gateway.gateway_id)
    assert [(s.stream, s.hwm, s.accepted) for s in streams] == [("sim", 3000, 3000)]
    assert seqs == list(range(1, 3001))


async def test_a_frame_beyond_twice_the_limit_ends_the_link_but_not_the_gateway(
    cloud: Cloud, gateway: GatewayIdentity
) -> None:
    """The WebSocket layer will not buffer a message past twice the frame limit: it closes
    that link (1009). The gateway links again and its data is intact."""
    async with link(cloud, gateway) as raw:
        assert await raw.reply(tm(1, 10)) == TelemetryAck("sim", 10, accepted=10)
        await raw.send_frame(encode_frame(tm(11, 7000)))
        with pytest.raises(ConnectionError, match="CLOSE"):
            await raw.answer()
    async with link(cloud, gateway) as raw:
        assert await raw.reply(tm(11, 20)) == TelemetryAck("sim", 20, accepted=10)
    _, seqs = await store_view(cloud, gateway.gateway_id)
    assert seqs == list(range(1, 21))


async def test_repeated_and_overlapping_batches_are_stored_once(
    cloud: Cloud, gateway: GatewayIdentity
) -> None:
    async with link(cloud, gateway) as raw:
        assert await raw.reply(tm(1, 20)) == TelemetryAck("sim", 20, accepted=20)
        # Sent again, as after a lost acknowledgement: acknowledged, nothing added.
        assert await raw.reply(tm(1, 20)) == TelemetryAck("sim", 20, accepted=0, duplicates=20)
        # Overlapping the end of what is stored: only the new tail is added.
        assert await raw.reply(tm(16, 30)) == TelemetryAck("sim", 30, accepted=10, duplicates=5)
        # An older part arriving late (a replay) adds nothing either.
        assert await raw.reply(tm(5, 12)) == TelemetryAck("sim", 12, accepted=0, duplicates=8)
        # Sent, and the link drops before the ack is read.
        await raw.send(tm(31, 40))
    async with link(cloud, gateway) as raw:
        ack = await raw.reply(tm(31, 45))  # the agent resends from its oldest unacknowledged
        assert isinstance(ack, TelemetryAck)
        assert ack.last_seq == 45
        assert ack.accepted + ack.duplicates == 15
        assert ack.accepted in (5, 15)  # the first send was committed or not: never half

    streams, seqs = await store_view(cloud, gateway.gateway_id)
    assert seqs == list(range(1, 46))
    [stream] = streams
    assert (stream.hwm, stream.accepted, stream.gaps) == (45, 45, 0)
    assert stream.duplicates == 20 + 5 + 8 + (15 - ack.accepted)
