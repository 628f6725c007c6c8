"""Upload of spooled observations: batches with (stream, sequence range), deleted only on ack.

At-least-once on the wire: after a link opens, everything still in the spool is sent again from
the oldest unacknowledged sequence; the cloud deduplicates on (gateway, stream, sequence). A small
window of batches in flight keeps a replay after an outage at link speed without starving live
data or commands: the link interleaves other messages between batches.

The window opens as the cloud answers: a new link starts with one batch in flight, and each
acknowledgement lets one more go, up to the whole window (the window doubles every round trip).
A batch the cloud defers (it could not store it now) closes it to one again. So a fleet that
relinks together after a cloud outage sends what the cloud takes, not every gateway's whole
window at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tether.aio import cancel_and_wait
from tether.gateway.settings import UPLOAD_WINDOW
from tether.gateway.spool import AsyncSpool
from tether.protocol.codec import HEADER, encode_frame
from tether.protocol.messages import (
    DropReport,
    DropReportAck,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)

__all__ = ["Uploader", "UploaderStats"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UploaderStats:
    batches_sent: int = 0
    observations_sent: int = 0
    observations_acked: int = 0
    duplicates: int = 0
    rejected_batches: int = 0
    rejected_observations: int = 0
    last_reject: str | None = None


class Uploader:
    def __init__(
        self,
        spool: AsyncSpool,
        *,
        max_batch: int = 2000,
        window: int = UPLOAD_WINDOW,
        initial_window: int = 1,
        max_frame: int = 1 << 20,
    ) -> None:
        self.spool = spool
        self.max_batch = max_batch
        self.window = window
        #: Batches in flight when a link opens or after a deferral; each ack adds one.
        self.initial_window = max(1, min(initial_window, window))
        self._allowed = self.initial_window  # batches that may be in flight now
        self.max_frame = max_frame
        self.stats = UploaderStats()
        self._send: Callable[[Message], None] | None = None
        self._sent_upto: dict[str, int] = {}  # per stream: highest sequence sent on this link
        self._in_flight: list[tuple[str, int]] = []  # (stream, last_seq) awaiting an ack
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._link = 0  # changes at every link open and close
        # per stream: ranges refused for good, deleted once the batches before them are answered
        self._refused: dict[str, list[tuple[int, int]]] = {}
        # Per stream: observations the spool refused to store (a full disk), ever. They are
        # lost like the spool's drops and travel in the same DropReport, added to its total.
        self._lost: dict[str, int] = {}
        self._lost_acked: dict[str, int] = {}
        # per stream: total reported -> (the spool's drops, the refused) it was made of
        self._reported: dict[str, dict[int, tuple[int, int]]] = {}

    # -- link events -------------------------------------------------------------------------

    def on_link_open(self, send: Callable[[Message], None]) -> None:
        self._link += 1
        self._send = send
        self._sent_upto.clear()
        self._in_flight.clear()
        self._allowed = self.initial_window
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())
        self._wake.set()

    def on_link_closed(self) -> None:
        self._link += 1
        self._send = None
        self._in_flight.clear()
        self._sent_upto.clear()
        self._refused.clear()  # sent again on the next link, and refused again there

    def wake(self) -> None:
        """New observations are in the spool."""
        self._wake.set()

    def note_refused(self, refused: dict[str, int]) -> None:
        """*refused*: per stream, the observations the spool refused ever (kept by the caller,
        read at each report); they are reported to the cloud with the drops."""
        self._lost = refused
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def on_message(self, message: Message) -> bool:
        """Handle telemetry-related messages; False if *message* is not one."""
        if isinstance(message, TelemetryAck):
            removed = await self.spool.ack(message.stream, message.last_seq)
            self.stats.observations_acked += removed
            self.stats.duplicates += message.duplicates
            self._in_flight = [
                (s, last)
                for s, last in self._in_flight
                if not (s == message.stream and last <= message.last_seq)
            ]
            self._allowed = min(self.window, self._allowed + 1)
            await self._delete_refused(message.stream)
            self._wake.set()
            return True
        if isinstance(message, TelemetryReject):
            await self._rejected(message)
            return True
        if isinstance(message, DropReportAck):
            parts = self._reported.get(message.stream, {}).pop(message.dropped_total, None)
            if parts is None:  # not sent by this process: made of the spool's drops alone
                parts = (message.dropped_total, 0)
            dropped, refused = parts
            await self.spool.clear_drop_report(message.stream, dropped)
            acked = self._lost_acked.get(message.stream, 0)
            self._lost_acked[message.stream] = max(acked, refused)
            return True
        return False

    async def _rejected(self, message: TelemetryReject) -> None:
        self.stats.rejected_batches += 1
        self.stats.last_reject = message.reason
        self._in_flight = [
            (s, last)
            for s, last in self._in_flight
            if not (s == message.stream and message.first_seq <= last <= message.last_seq)
        ]
        if message.permanent:
            # The cloud will never take these rows; keeping them would block the stream forever.
            # They are counted and the reason logged, never dropped silently.
            log.error(
                "cloud rejected %s %d..%d for good (%s); removed from the spool",
                message.stream,
                message.first_seq,
                message.last_seq,
                message.reason,
            )
            self._refused.setdefault(message.stream, []).append(
                (message.first_seq, message.last_seq)
            )
            await self._delete_refused(message.stream)
        else:
            self._allowed = self.initial_window  # the cloud could not take it: send less
            # Several batches of a stream may be deferred in a row: resend from the earliest.
            sent = self._sent_upto.get(message.stream)
            if sent is not None:
                self._sent_upto[message.stream] = min(sent, message.first_seq - 1)
            log.warning(
                "cloud deferred %s %d..%d: %s",
                message.stream,
                message.first_seq,
                message.last_seq,
                message.reason,
            )
        self._wake.set()

    async def _delete_refused(self, stream: str) -> None:
        """Delete refused ranges once the spool holds nothing of the stream before them.

        A refusal comes at once while the batches before it wait for their commit: deleting
        (which is "everything up to") at once would delete them too, and if their commit then
        failed they could not be sent again.
        """
        ranges = self._refused.get(stream)
        while ranges:
            first, last = ranges[0]
            oldest = await self.spool.peek(stream, max_items=1)
            if oldest and oldest[0].first_seq < first:
                return  # not acknowledged yet: deleted at a later ack
            ranges.pop(0)
            self.stats.rejected_observations += await self.spool.ack(stream, last)
        self._refused.pop(stream, None)

    # -- sending -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send_drop_reports()
            while self._send is not None and len(self._in_flight) < self._allowed:
                link = self._link
                batches = await self.spool.peek(max_items=self.max_batch, after=self._sent_upto)
                if link != self._link:
                    continue  # read for a link that is gone: it skipped what was in flight there
                if not batches or self._send is None:
                    break
                for batch in batches:
                    if self._send is None or len(self._in_flight) >= self._allowed:
                        break
                    for message in self._split(
                        TelemetryBatch(
                            stream=batch.stream,
                            first_seq=batch.first_seq,
                            last_seq=batch.last_seq,
                            observations=batch.observations,
                        )
                    ):
                        self._send(message)
                        self.stats.batches_sent += 1
                        self.stats.observations_sent += len(message.observations)
                    self._sent_upto[batch.stream] = batch.last_seq
                    self._in_flight.append((batch.stream, batch.last_seq))

    def _split(self, batch: TelemetryBatch) -> list[TelemetryBatch]:
        """Halve a batch until each part fits the link's frame limit."""
        if len(encode_frame(batch)) - HEADER.size <= self.max_frame or len(batch.observations) == 1:
            return [batch]
        half = len(batch.observations) // 2
        head = TelemetryBatch(
            batch.stream, batch.first_seq, batch.first_seq + half - 1, batch.observations[:half]
        )
        tail = TelemetryBatch(
            batch.stream, batch.first_seq + half, batch.last_seq, batch.observations[half:]
        )
        return self._split(head) + self._split(tail)

    async def _send_drop_reports(self) -> None:
        if self._send is None:
            return
        lost = {s: n for s, n in self._lost.items() if n > self._lost_acked.get(s, 0)}
        counts = await self.spool.drop_report(include_reported=bool(lost))
        for stream in sorted(set(counts) | set(lost)):
            count = counts.get(stream)
            dropped = count.total if count is not None else 0
            if (count is None or count.pending == 0) and stream not in lost:
                continue
            refused = self._lost.get(stream, 0)
            total = dropped + refused
            sent = self._reported.setdefault(stream, {})
            sent[total] = (dropped, refused)
            while len(sent) > 16:  # answers to old reports are not waited for forever
                sent.pop(next(iter(sent)))
            if self._send is not None:
                self._send(DropReport(stream=stream, dropped_total=total))
