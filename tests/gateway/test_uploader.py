"""The uploader over a real spool: batches with sequence ranges, a window of batches in flight,
deletion only on ack, rejects, frame splitting, drop reports, and resends after a relink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tether.gateway.spool import AsyncSpool, SpoolBatch
from tether.gateway.uploader import Uploader
from tether.protocol.codec import HEADER, encode_frame
from tether.protocol.messages import (
    DropReport,
    DropReportAck,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.telemetry import Observation

T0 = 1_718_000_000.0
WITHIN = 10.0


def obs(n: int, *, start: int = 0, point: str = "b1/ahu-1/sat") -> list[Observation]:
    return [Observation(point, T0 + start + i, float(start + i)) for i in range(n)]


class Link:
    """What the uploader sends on one link, in order."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.sent.append(message)

    def batches(self, stream: str | None = None) -> list[TelemetryBatch]:
        return [
            m
            for m in self.sent
            if isinstance(m, TelemetryBatch) and (stream is None or m.stream == stream)
        ]

    def drop_reports(self) -> list[DropReport]:
        return [m for m in self.sent if isinstance(m, DropReport)]


async def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def settle(uploader: Uploader) -> None:
    """Let the uploader finish what it is doing (it waits on the spool's thread)."""
    for _ in range(3):
        await uploader.spool.depth()  # a round trip through the spool's thread
        await asyncio.sleep(0)


def covered(batches: list[TelemetryBatch]) -> list[int]:
    """Sequence numbers the batches carry, in the order sent, checking each batch is whole."""
    out: list[int] = []
    for b in batches:
        assert b.last_seq - b.first_seq + 1 == len(b.observations)
        out += range(b.first_seq, b.last_seq + 1)
    return out


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[AsyncSpool]:
    opened = await AsyncSpool.open(tmp_path / "spool.db", max_bytes=1 << 30, max_age=1e9)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def make_uploader(spool: AsyncSpool) -> AsyncIterator[Callable[..., Uploader]]:
    made: list[Uploader] = []

    def make(**kw: Any) -> Uploader:
        uploader = Uploader(spool, **kw)
        made.append(uploader)
        return uploader

    yield make
    for uploader in made:
        await uploader.stop()


async def ack(uploader: Uploader, b: TelemetryBatch, *, duplicates: int = 0) -> None:
    handled = await uploader.on_message(
        TelemetryAck(
            stream=b.stream,
            last_seq=b.last_seq,
            accepted=len(b.observations) - duplicates,
            duplicates=duplicates,
        )
    )
    assert handled


async def test_the_spool_is_sent_in_sequence_order_within_the_window(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(100))
    uploader = make_uploader(max_batch=10, window=3, initial_window=3)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 3, "a full window")
    await settle(uploader)
    assert len(link.batches()) == 3, "never more than the window in flight"
    assert covered(link.batches()) == list(range(1, 31))
    # Each ack frees a place in the window and deletes exactly what it covers.
    for n in range(3, 10):
        await ack(uploader, link.batches()[n - 3])
        await until(lambda n=n: len(link.batches()) == n + 1, f"batch {n + 1}")
    assert covered(link.batches()) == list(range(1, 101))
    assert (await spool.depth()).observations == 30
    for b in link.batches()[7:]:
        await ack(uploader, b)
    assert (await spool.depth()).observations == 0
    assert uploader.stats.observations_acked == 100
    assert uploader.stats.batches_sent == 10


async def test_the_window_opens_one_batch_per_ack_and_closes_when_the_cloud_defers(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(200))
    uploader = make_uploader(max_batch=10, window=4)  # opening at one batch, the default
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 1, "the first batch")
    await settle(uploader)
    assert len(link.batches()) == 1, "one batch in flight on a new link"
    # Each ack frees its place and opens one more, up to the window: in flight 2, 3, 4, 4.
    for acked, sent in enumerate((3, 5, 7, 8)):
        await ack(uploader, link.batches()[acked])
        await until(lambda sent=sent: len(link.batches()) == sent, f"{sent} batches sent")
        await settle(uploader)
        assert len(link.batches()) == sent
    assert covered(link.batches()) == list(range(1, 81))

    # The cloud defers the batches in flight (it could not store them now; it defers the later
    # ones of a stream with the first): the window closes to one batch, sent again alone.
    for b in link.batches()[4:8]:
        handled = await uploader.on_message(
            TelemetryReject(
                stream="sim",
                first_seq=b.first_seq,
                last_seq=b.last_seq,
                reason="store unavailable",
                permanent=False,
            )
        )
        assert handled
    await until(lambda: len(link.batches()) == 9, "the deferred batch again")
    await settle(uploader)
    assert len(link.batches()) == 9, "one batch in flight after a deferral"
    assert covered(link.batches()[8:]) == list(range(41, 51))
    # It opens again with the acks.
    await ack(uploader, link.batches()[8])
    await until(lambda: len(link.batches()) == 11, "two batches in flight")
    assert covered(link.batches()[9:]) == list(range(51, 71))


async def test_a_new_link_opens_its_window_from_one_batch(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(100))
    uploader = make_uploader(max_batch=10, window=3)
    first = Link()
    uploader.on_link_open(first)
    await until(lambda: len(first.batches()) == 1, "the first batch")
    await ack(uploader, first.batches()[0])
    await until(lambda: len(first.batches()) == 3, "a window of 2")
    await ack(uploader, first.batches()[1])
    await until(lambda: len(first.batches()) == 5, "a window of 3")
    uploader.on_link_closed()
    second = Link()
    uploader.on_link_open(second)
    await until(lambda: len(second.batches()) == 1, "the first batch again")
    await settle(uploader)
    assert len(second.batches()) == 1


async def test_nothing_is_deleted_without_an_ack_and_a_new_link_resends_it(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(50))
    uploader = make_uploader(max_batch=20, window=2, initial_window=2)
    first = Link()
    uploader.on_link_open(first)
    await until(lambda: len(first.batches()) == 2, "two batches")
    await ack(uploader, first.batches()[0])  # 1..20 committed; 21..40 in flight when it drops
    uploader.on_link_closed()
    assert (await spool.depth()).observations == 30
    second = Link()
    uploader.on_link_open(second)
    await until(lambda: covered(second.batches())[-1:] == [50], "the rest again")
    assert covered(second.batches()) == list(range(21, 51))
    # The cloud had committed 21..40 before the first link dropped: its ack says duplicates.
    for b in second.batches():
        await ack(uploader, b, duplicates=20 if b.first_seq == 21 else 0)
    assert (await spool.depth()).observations == 0
    assert uploader.stats.duplicates == 20


async def test_new_observations_wake_the_uploader(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    uploader = make_uploader(max_batch=1000, window=4, initial_window=4)
    link = Link()
    uploader.on_link_open(link)
    await settle(uploader)
    assert link.sent == []
    for n in range(1, 4):
        await spool.append("sim", obs(5, start=10 * n))
        uploader.wake()
        await until(lambda n=n: len(link.batches()) == n, f"batch {n}")
    assert covered(link.batches()) == list(range(1, 16))
    assert [o.value for o in link.batches()[2].observations] == [30.0, 31.0, 32.0, 33.0, 34.0]


async def test_streams_are_sent_and_acknowledged_independently(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("a", obs(10))
    await spool.append("b", obs(10, point="b"))
    await spool.append("a", obs(10, start=10))
    uploader = make_uploader(max_batch=100, window=4, initial_window=4)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 2, "both streams")
    assert covered(link.batches("a")) == list(range(1, 21))
    assert covered(link.batches("b")) == list(range(1, 11))
    await ack(uploader, link.batches("b")[0])
    assert (await spool.depth()).observations == 20
    assert await spool.peek(max_items=100) == [SpoolBatch("a", 1, 20, obs(10) + obs(10, start=10))]


async def test_a_permanent_reject_removes_the_batch_and_counts_it(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(30))
    uploader = make_uploader(max_batch=10, window=1)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 1, "one batch")
    handled = await uploader.on_message(
        TelemetryReject(stream="sim", first_seq=1, last_seq=10, reason="value is not finite")
    )
    assert handled
    await until(lambda: len(link.batches()) == 2, "the next batch")
    assert covered(link.batches()) == list(range(1, 21))
    assert uploader.stats.rejected_batches == 1
    assert uploader.stats.rejected_observations == 10
    assert uploader.stats.last_reject == "value is not finite"
    assert (await spool.depth()).observations == 20


async def test_a_refusal_does_not_delete_the_batches_before_it(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    """The cloud refuses a malformed batch at once, while the batches before it still wait for
    their commit: those must stay in the spool until acknowledged (a failed commit resends
    them)."""
    await spool.append("sim", obs(30))
    uploader = make_uploader(max_batch=10, window=3, initial_window=3)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 3, "three batches")
    await uploader.on_message(TelemetryReject("sim", 11, 20, "value is not a finite number"))
    assert (await spool.depth()).observations == 30
    assert uploader.stats.rejected_observations == 0
    # The commit of 1..10 failed: it is sent again, and is still there to be sent.
    await uploader.on_message(TelemetryReject("sim", 1, 10, "store unavailable", permanent=False))
    await until(lambda: 1 in covered(link.batches()[3:]), "the resend of 1..10")
    assert (await spool.depth()).observations == 30
    # 1..10 committed: the refused 11..20 goes with it, counted as refused, not as acked.
    await uploader.on_message(TelemetryAck("sim", 10, accepted=10))
    assert uploader.stats.observations_acked == 10
    assert uploader.stats.rejected_observations == 10
    assert await spool.peek(max_items=100) == [SpoolBatch("sim", 21, 30, obs(10, start=20))]
    await uploader.on_message(TelemetryAck("sim", 30, accepted=10))
    assert (await spool.depth()).observations == 0
    assert uploader.stats.observations_acked == 20


async def test_a_deferred_batch_is_sent_again_from_its_first_sequence(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(30))
    uploader = make_uploader(max_batch=10, window=3, initial_window=3)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: len(link.batches()) == 3, "three batches")
    # The store failed for 1..10; the cloud defers what follows it in the stream too.
    for first in (1, 11, 21):
        await uploader.on_message(
            TelemetryReject("sim", first, first + 9, "store unavailable", permanent=False)
        )
    await until(lambda: 30 in covered(link.batches()[3:]), "the resend")
    resent = covered(link.batches()[3:])
    assert resent[:10] == list(range(1, 11)), "the resend starts at the deferred batch"
    assert set(resent) == set(range(1, 31))
    assert uploader.stats.rejected_observations == 0
    assert (await spool.depth()).observations == 30, "a deferral deletes nothing"
    await uploader.on_message(TelemetryAck("sim", 30, accepted=30))
    assert (await spool.depth()).observations == 0


async def test_a_batch_larger_than_a_frame_is_split_to_fit(
    spool: AsyncSpool, make_uploader: Callable[..., Uploader]
) -> None:
    await spool.append("sim", obs(500))
    max_frame = 4096
    uploader = make_uploader(max_batch=500, window=1, max_frame=max_frame)
    link = Link()
    uploader.on_link_open(link)
    await until(lambda: covered(link.batches())[-1:] == [500], "every part")
    parts = link.batches()
    assert len(parts) > 1
    assert covered(parts) == list(range(1, 501))
    assert all(len(encode_frame(p)) - HEADER.size <= max_frame for p in parts)
    assert [o for p in parts for o in p.observations] == obs(500)
    # The window counts the whole peeked batch: nothing more goes out until its last part is
    # acknowledged.
    for p in parts[:-1]:
        await ack(uploader, p)
    assert (await spool.depth()).observations == 500 - len(covered(parts[:-1]))
    await ack(uploader, parts[-1])
    assert (await spool.depth()).observations == 0


async def test_drops_are_reported_until_the_cloud_acknowledges_them(
    tmp_path: Path, make_uploader: Callable[..., Uploader]
) -> None:
    small = await AsyncSpool.open(tmp_path / "small.db", max_bytes=8192, max_age=1e9)
    try:
        for n in range(20):  # far more than 8 KiB: the oldest chunks are dropped
            await small.append("sim", obs(40, start=40 * n))
        [(stream, count)] = (await small.drop_report()).items()
        assert stream == "sim"
        assert count.total > 0
        uploader = Uploader(small, max_batch=10_000, window=1)
        try:
            link = Link()
            uploader.on_link_open(link)
            await until(lambda: len(link.batches()) == 1, "the batch")
            assert link.sent[0] == DropReport(stream="sim", dropped_total=count.total)
            [b] = link.batches()
            # Oldest first: what is left starts right after the dropped sequence numbers.
            assert b.first_seq == count.last_seq + 1 == count.total + 1
            assert b.last_seq == 800
            await uploader.on_message(DropReportAck(stream="sim", dropped_total=count.total))
            await ack(uploader, b)
            await small.append("sim", obs(1, start=900))
            uploader.wake()
            await until(lambda: len(link.batches()) == 2, "the next batch")
            assert link.drop_reports() == [DropReport("sim", count.total)], "not sent again"
        finally:
            await uploader.stop()
    finally:
        await small.close()


class SlowSpool(AsyncSpool):
    """A real spool whose peek waits until the test lets it return (a slow disk)."""

    gate: asyncio.Event | None = None
    peeking: asyncio.Event

    async def peek(self, *args: Any, **kw: Any) -> list[SpoolBatch]:
        result = await super().peek(*args, **kw)
        if self.gate is not None:
            self.peeking.set()
            await self.gate.wait()
        return result


async def test_a_peek_that_spans_a_relink_is_not_sent_on_the_new_link(tmp_path: Path) -> None:
    """The link drops and comes back while the uploader reads the spool: what it read was
    chosen for the old link (it skips what was in flight there) and must be read again."""
    spool = await SlowSpool.open(tmp_path / "slow.db", max_bytes=1 << 30, max_age=1e9)
    assert isinstance(spool, SlowSpool)
    uploader = Uploader(spool, max_batch=10, window=2, initial_window=2)
    try:
        await spool.append("sim", obs(40))
        old = Link()
        uploader.on_link_open(old)
        await until(lambda: len(old.batches()) == 2, "a full window")  # 1..20 in flight
        spool.gate, spool.peeking = asyncio.Event(), asyncio.Event()
        await ack(uploader, old.batches()[0])  # the pump wakes and reads after 20
        await asyncio.wait_for(spool.peeking.wait(), WITHIN)
        uploader.on_link_closed()  # 11..20 was never committed
        new = Link()
        uploader.on_link_open(new)
        spool.gate.set()
        spool.gate = None
        await until(lambda: len(new.batches()) == 2, "a full window on the new link")
        assert covered(new.batches()) == list(range(11, 31)), "11..20 sent again first"
        for b in new.batches():
            await ack(uploader, b)
        await until(lambda: len(new.batches()) == 3, "the rest")
        assert covered(new.batches()) == list(range(11, 41))
    finally:
        await uploader.stop()
        await spool.close()
