"""Telemetry ingest: validate each batch, commit batches in groups, acknowledge after commit.

Batches from every link wait in one queue; a writer takes whatever has gathered (up to
:attr:`IngestPipeline.max_rows` observations) and commits it in one transaction with the store's
bulk path. Each batch is acknowledged only after its group committed. A batch that is malformed
is refused with a clear reason and the link goes on; a store failure defers the batch (the
gateway keeps it spooled and sends it again).

On PostgreSQL two writers commit groups side by side, each on its own connection, so the
server inserts one group while the other is being acknowledged, refilled and sent. A stream is
in one group being committed at a time: a writer leaves the batches of streams another writer
holds in the queue, and while another writer waits it leaves it half of the streams queued.
SQLite has one writer at a time whatever the connections, so it gets one.

The queue is bounded (:attr:`IngestPipeline.max_queued_rows` observations): past it, a batch
waits for room in arrival order, and a WebSocket link that delivered one reads nothing more until
there is room (:meth:`IngestPipeline.has_room`, :meth:`IngestPipeline.room`). So a fleet
replaying after an outage waits in the kernel's buffers and on the gateways' spools, not in the
cloud's memory; nothing is refused or lost.

A stream's batches are committed in sequence order: once a batch was deferred, later batches of
its stream (already in flight when the gateway learnt of the deferral) are deferred too until the
deferred one comes back. Committing them first would raise the stream's high-water mark over the
deferred range, and its resend would be taken for a duplicate. If the gateway has meanwhile
dropped that range (its spool's bound), its drop report releases the stream.

What the store cannot hold alike on SQLite and PostgreSQL never reaches a group (see
:mod:`tether.cloud.storable`): a NUL in a point id or stream name, or a sequence number past 64
bits, refuses the batch for good, so it can neither fail the group it would join (other
gateways' batches) nor be deferred and sent again forever. A NUL in a text value is stored as
U+FFFD. A discovery leaves out the devices and points whose ids hold a NUL and stores the NUL
of their names, units and attributes as U+FFFD.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from tether.aio import cancel_and_wait
from tether.cloud.storable import MAX_INT64, has_nul, storable
from tether.cloud.store.telemetry import (
    BatchOutcome,
    GroupWriter,
    IncomingBatch,
    TelemetryStore,
    batch_rows,
    devices,
    points,
)
from tether.protocol.messages import (
    Discovery,
    DiscoveryAck,
    DropReport,
    DropReportAck,
    ErrorReport,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.telemetry import (
    DeviceInfo,
    Observation,
    ObservationColumns,
    PointInfo,
    Quality,
    Value,
    observation_columns,
)

__all__ = ["BatchInvalid", "IngestPipeline", "IngestStats", "validate_batch"]

log = logging.getLogger(__name__)

MAX_OBSERVATIONS = 100_000
MAX_POINT_ID = 255
MAX_TEXT = 4096
_NUMERIC = frozenset((float, int, bool))
_QUALITIES = frozenset(q.value for q in Quality)
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class BatchInvalid(ValueError):
    """A telemetry batch that can never be accepted; the message says why."""


def validate_batch(batch: TelemetryBatch) -> ObservationColumns:
    """Check a batch; its observations as columns when it is valid.

    The observations are checked a column at a time with C-level passes (a set of distinct point
    ids, sums that are finite only if every term is, the set of value types); only a batch those
    passes cannot clear is walked row by row, which names the first offending observation.
    A NUL in a point id refuses the batch (one ``in`` over the joined distinct ids finds it);
    a NUL in a text value is no reason to refuse it (the store keeps it as U+FFFD).
    """
    if not _STREAM.fullmatch(batch.stream):
        raise BatchInvalid(f"stream name {batch.stream[:64]!r} is not valid")
    if batch.first_seq < 1:
        raise BatchInvalid(f"first_seq {batch.first_seq} must be at least 1")
    if batch.last_seq > MAX_INT64:
        raise BatchInvalid(f"last_seq {batch.last_seq} is past the largest, {MAX_INT64}")
    if batch.last_seq < batch.first_seq:
        raise BatchInvalid(
            f"out of order: last_seq {batch.last_seq} is before first_seq {batch.first_seq}"
        )
    count = len(batch.observations)
    if count == 0:
        raise BatchInvalid("batch carries no observations")
    if count > MAX_OBSERVATIONS:
        raise BatchInvalid(f"batch of {count} observations exceeds {MAX_OBSERVATIONS}")
    if batch.last_seq - batch.first_seq + 1 != count:
        raise BatchInvalid(
            f"sequence range {batch.first_seq}..{batch.last_seq} does not match "
            f"{count} observations"
        )
    columns = observation_columns(batch.observations)
    if not _columns_pass(columns):
        _check_rows(batch.observations)
    return columns


def _finite_sum(values: list[float] | list[Value]) -> bool:
    """True if the sum is finite: then no term is NaN or infinite. (A false alarm, a sum that
    overflows, only sends the batch to the row-by-row check.)"""
    try:
        return math.isfinite(sum(values))  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        return False


def _columns_pass(columns: ObservationColumns) -> bool:
    point_ids = set(columns.point_ids)
    if "" in point_ids or max(map(len, point_ids)) > MAX_POINT_ID:
        return False
    if has_nul("".join(point_ids)):
        return False
    if not _finite_sum(columns.ts):
        return False
    if not set(columns.qualities) <= _QUALITIES:
        return False
    return set(map(type, columns.values)) <= _NUMERIC and _finite_sum(columns.values)


def _check_rows(observations: Sequence[Observation]) -> None:
    for o in observations:
        if not o.point_id or len(o.point_id) > MAX_POINT_ID:
            raise BatchInvalid("an observation has an empty or over-long point id")
        if has_nul(o.point_id):
            raise BatchInvalid(f"point {o.point_id[:64]!r}: the point id holds a NUL character")
        if not math.isfinite(o.ts):
            raise BatchInvalid(f"point {o.point_id!r}: timestamp is not a finite number")
        if isinstance(o.value, float) and not math.isfinite(o.value):
            raise BatchInvalid(f"point {o.point_id!r}: value is not a finite number")
        if isinstance(o.value, str) and len(o.value) > MAX_TEXT:
            raise BatchInvalid(
                f"point {o.point_id!r}: text value longer than {MAX_TEXT} characters"
            )
        if o.quality not in _QUALITIES:
            known = ", ".join(q.value for q in Quality)
            raise BatchInvalid(
                f"point {o.point_id!r}: quality {o.quality[:32]!r} is not one of {known}"
            )


def _lengths(table: sa.Table, *names: str) -> dict[str, int]:
    """The longest string each of *names* may hold in *table* (its column's declared length)."""
    limits: dict[str, int] = {}
    for name in names:
        length = getattr(table.c[name].type, "length", None)
        if isinstance(length, int):
            limits[name] = length
    return limits


#: What the store's columns hold: a discovered device or point past these is left out.
_DEVICE_LIMITS = _lengths(devices, "device_id", "name", "kind", "vendor", "model", "location")
_POINT_LIMITS = _lengths(points, "point_id", "device_id", "name", "kind", "unit")
_CONNECTOR_MAX = _lengths(devices, "connector")["connector"]
_ATTRIBUTES_MAX = 64  # attributes per device
_Found = TypeVar("_Found", DeviceInfo, PointInfo)


def _left_out(item: DeviceInfo | PointInfo, limits: dict[str, int], key: str) -> str | None:
    """Why the store cannot hold *item*: an id with a NUL, a field over its column's length."""
    name = getattr(item, key)[:64]
    ids = ("point_id", "device_id") if isinstance(item, PointInfo) else ("device_id",)
    for column in ids:
        if has_nul(getattr(item, column)):
            return f"{key} {name!r}: {column} holds a NUL character"
    if not getattr(item, key):
        return f"{key} {name!r}: empty {key}"
    for column, limit in limits.items():
        if len(getattr(item, column)) > limit:
            return f"{key} {name!r}: {column} longer than {limit}"
    if isinstance(item, DeviceInfo) and len(item.attributes) > _ATTRIBUTES_MAX:
        return f"device {name!r}: over {_ATTRIBUTES_MAX} attributes"
    return None


def _fitting(
    items: Sequence[_Found], limits: dict[str, int], key: str
) -> tuple[list[_Found], list[str]]:
    """The items the store can hold, as it keeps them (a NUL of their names, units and
    attributes as U+FFFD), and a reason for each one left out."""
    kept: list[_Found] = []
    errors: list[str] = []
    for item in items:
        reason = _left_out(item, limits, key)
        if reason is None:
            kept.append(storable(item))
        else:
            errors.append(reason)
    return kept, errors


@dataclass(slots=True)
class IngestStats:
    batches: int = 0
    observations: int = 0
    duplicates: int = 0
    rejected: int = 0
    groups: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Pending:
    batch: IncomingBatch
    future: asyncio.Future[TelemetryAck | TelemetryReject] = field(repr=False)


_Key = tuple[str, str]  # (gateway, stream)

#: Observations queued for ingest at most (about 100 bytes each in memory, twice: the decoded
#: batch and its rows), the groups being committed aside.
MAX_QUEUED_ROWS = 1_000_000


class IngestPipeline:
    def __init__(
        self,
        telemetry: TelemetryStore,
        *,
        max_rows: int = 50_000,
        max_queued_rows: int = MAX_QUEUED_ROWS,
        hold_writer: float = 1.0,
        writers: int | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.max_rows = max_rows
        #: Observations the queue holds at most before batches wait for room.
        self.max_queued_rows = max_queued_rows
        #: Seconds a writer keeps its connection once no batch waits for it.
        self.hold_writer = hold_writer
        #: Groups committed side by side (default: 2 on PostgreSQL, 1 on SQLite).
        self.writers = writers or (1 if telemetry.dialect == "sqlite" else 2)
        self.stats = IngestStats()
        self._queue: list[_Pending] = []
        self._queued_rows = 0  # observations in _queue
        # Batches that came while the queue was full, in arrival order (rows already built).
        self._blocked: collections.deque[_Pending] = collections.deque()
        self._room = asyncio.Event()
        self._room.set()
        # Each writer's group being committed (deferred if it fails), and their streams.
        self._committing: dict[int, list[_Pending]] = {}
        self._busy: set[_Key] = set()
        self._ready = asyncio.Event()  # a batch came, or a group's streams were let go
        self._tasks: list[asyncio.Task[None]] = []
        # (gateway, stream) -> first sequence number of a batch deferred by a store failure
        self._resume_at: dict[tuple[str, str], int] = {}
        self._drops_seen: dict[tuple[str, str], int] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(n)) for n in range(self.writers)]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        committing = [p for group in self._committing.values() for p in group]
        # The groups being committed, the queue, and the batches waiting for room in it.
        for pending in [*committing, *self._queue, *self._blocked]:
            if not pending.future.done():
                pending.future.set_result(self._deferred(pending.batch, "cloud shutting down"))
        self._committing.clear()
        self._busy.clear()
        self._queue.clear()
        self._blocked.clear()
        self._queued_rows = 0
        self._room.set()

    # -- room in the queue --------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        """Observations waiting for a group (those waiting for room not counted)."""
        return self._queued_rows

    def has_room(self) -> bool:
        """Whether a batch that comes now is queued at once."""
        return self._room.is_set()

    async def room(self) -> None:
        """Return once batches are queued at once again."""
        await self._room.wait()

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        self._queued_rows += len(pending.batch.observations)
        self._ready.set()

    def _admit(self) -> None:
        """Queue the batches that waited for room, in their order, while there is room."""
        while self._blocked and self._queued_rows < self.max_queued_rows:
            self._enqueue(self._blocked.popleft())
        if self._blocked or self._queued_rows >= self.max_queued_rows:
            self._room.clear()
        else:
            self._room.set()

    # -- message handlers (registered with GatewayService) ------------------------------------

    async def on_batch(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, TelemetryBatch)
        answer = self.submit(gateway_id, message)
        if isinstance(answer, TelemetryReject):
            return [answer]
        return [await answer]

    def submit(
        self, gateway_id: str, message: TelemetryBatch
    ) -> TelemetryReject | asyncio.Future[TelemetryAck | TelemetryReject]:
        """Take a batch without a coroutine of its own: a batch refused at once gets its
        ``TelemetryReject`` back; a queued one, the future of its answer (the ack once its group
        committed, or a reject). What :meth:`on_batch` does, for a link that answers from a
        done-callback."""
        try:
            columns = validate_batch(message)
        except BatchInvalid as exc:
            self.stats.rejected += 1
            log.warning(
                "gateway %s: batch %s %d..%d refused: %s",
                gateway_id,
                message.stream,
                message.first_seq,
                message.last_seq,
                exc,
            )
            return TelemetryReject(
                stream=message.stream,
                first_seq=message.first_seq,
                last_seq=message.last_seq,
                reason=str(exc),
                permanent=True,
            )
        future: asyncio.Future[TelemetryAck | TelemetryReject] = (
            asyncio.get_running_loop().create_future()
        )
        pending = _Pending(
            IncomingBatch(
                gateway_id,
                message.stream,
                message.first_seq,
                message.last_seq,
                message.observations,
                # Rows built here, while the writer commits the group before this one.
                batch_rows(message.observations, columns),
            ),
            future,
        )
        # Behind any batch waiting for room: a stream's batches are queued in arrival order.
        self._blocked.append(pending)
        self._admit()
        return future

    async def on_discovery(self, gateway_id: str, message: Message) -> list[Message]:
        """Store what a connector found; devices and points the store could not hold (a field
        over its column's length, a NUL in an id) are left out and named in an ``ErrorReport``,
        the rest kept."""
        assert isinstance(message, Discovery)
        problem = None
        if len(message.connector) > _CONNECTOR_MAX:
            problem = f"connector name longer than {_CONNECTOR_MAX} characters"
        elif has_nul(message.connector):
            problem = "connector name holds a NUL character"
        if problem is not None:
            return [
                ErrorReport(
                    code="invalid", message=f"discovery: {problem}", ref=message.connector[:64]
                )
            ]
        found_devices, device_errors = _fitting(message.devices, _DEVICE_LIMITS, "device_id")
        found_points, point_errors = _fitting(message.points, _POINT_LIMITS, "point_id")
        await self.telemetry.record_discovery(
            gateway_id, message.connector, found_devices, found_points
        )
        answers: list[Message] = [
            DiscoveryAck(connector=message.connector, points=len(found_points))
        ]
        errors = device_errors + point_errors
        if errors:
            log.warning(
                "gateway %s: discovery of %r: %d device(s) and %d point(s) left out, first: %s",
                gateway_id,
                message.connector,
                len(device_errors),
                len(point_errors),
                errors[0],
            )
            answers.append(
                ErrorReport(
                    code="invalid",
                    message=(
                        f"discovery: {len(device_errors)} device(s) and {len(point_errors)} "
                        f"point(s) left out, e.g. {errors[0]}"
                    ),
                    ref=message.connector,
                )
            )
        return answers

    async def on_drop_report(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, DropReport)
        problem = None
        if not _STREAM.fullmatch(message.stream):
            problem = f"stream name {message.stream[:64]!r} is not valid"
        elif not 0 <= message.dropped_total <= MAX_INT64:
            problem = f"dropped_total {message.dropped_total} is out of range"
        if problem is not None:
            return [
                ErrorReport(
                    code="invalid", message=f"drop report: {problem}", ref=message.stream[:64]
                )
            ]
        key = (gateway_id, message.stream)
        if message.dropped_total > self._drops_seen.get(key, 0):
            # Drops are oldest first: a deferred batch may be among them, never to come back.
            self._drops_seen[key] = message.dropped_total
            self._resume_at.pop(key, None)
        await self.telemetry.record_drops(gateway_id, message.stream, message.dropped_total)
        log.warning(
            "gateway %s: %d observations of %s dropped on the gateway so far",
            gateway_id,
            message.dropped_total,
            message.stream,
        )
        return [DropReportAck(stream=message.stream, dropped_total=message.dropped_total)]

    # -- the writer --------------------------------------------------------------------------

    @staticmethod
    def _deferred(batch: IncomingBatch, reason: str) -> TelemetryReject:
        return TelemetryReject(
            stream=batch.stream,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            reason=reason,
            permanent=False,
        )

    def _take(self) -> list[_Pending]:
        """The next group: queued batches in order, up to ``max_rows`` observations, of streams
        no other group holds; while another writer is free, of the first half of those streams."""
        free = self._streams_free()
        another_free = len(self._committing) < self.writers - 1
        if another_free:
            free = free[: (len(free) + 1) // 2]
        streams = set(free)
        group: list[_Pending] = []
        rest: list[_Pending] = []
        rows = 0
        for item in self._queue:
            batch = item.batch
            count = len(batch.observations)
            if (batch.gateway_id, batch.stream) not in streams or (
                group and rows + count > self.max_rows
            ):
                streams.discard((batch.gateway_id, batch.stream))  # its later batches wait too
                rest.append(item)
                continue
            group.append(item)
            rows += count
        self._queue = rest
        self._queued_rows -= rows
        self._admit()
        self._busy.update((p.batch.gateway_id, p.batch.stream) for p in group)
        if another_free and rest:
            self._ready.set()  # what is left is for the other writer
        return group

    def _streams_free(self) -> list[_Key]:
        """Queued streams no group holds, in the order of their first batch."""
        busy = self._busy
        queued = dict.fromkeys((p.batch.gateway_id, p.batch.stream) for p in self._queue)
        return [key for key in queued if key not in busy]

    def _in_order(self, group: list[_Pending]) -> list[_Pending]:
        """Defer the batches that would overtake a deferred batch of their stream."""
        ready: list[_Pending] = []
        for p in group:
            key = (p.batch.gateway_id, p.batch.stream)
            resume_at = self._resume_at.get(key)
            if resume_at is not None and p.batch.first_seq > resume_at:
                if not p.future.done():
                    reason = f"waiting for {p.batch.stream} from sequence {resume_at} again"
                    p.future.set_result(self._deferred(p.batch, reason))
                continue
            self._resume_at.pop(key, None)  # the deferred batch is back (or never was)
            ready.append(p)
        return ready

    async def _writer(self, n: int) -> None:
        while True:
            await self._wait_for_work()
            try:
                async with self.telemetry.writer() as writer:
                    await self._write(n, writer)
            except (SQLAlchemyError, OSError) as exc:
                # The group failed (or no connection could be had for it): it is deferred, the
                # gateways send it again, and the next group starts on a fresh connection.
                group = self._committing.pop(n, None) or self._take()
                self._release(group)
                self.stats.failures += 1
                log.error("ingest of %d batches failed, deferred: %s", len(group), exc)
                self._defer(group, "store unavailable")

    async def _wait_for_work(self, within: float | None = None) -> None:
        """Return once a group can be taken; ``TimeoutError`` after ``within`` seconds."""
        while not self._streams_free():
            self._ready.clear()
            if within is None:
                await self._ready.wait()
            else:
                await asyncio.wait_for(self._ready.wait(), within)

    async def _write(self, n: int, writer: GroupWriter) -> None:
        """Commit groups while batches keep coming; return once none came for a while, so the
        connection (and its warm cache) is held through a stream of batches and no longer."""
        while True:
            while self._streams_free():
                taken = self._take()
                group = self._in_order(taken)
                if not group:
                    self._release(taken)
                    continue
                self._committing[n] = group
                outcomes = await writer.commit([p.batch for p in group])
                del self._committing[n]
                self._release(taken)
                self._acknowledge(group, outcomes)
            try:
                await self._wait_for_work(self.hold_writer)
            except TimeoutError:
                return

    def _release(self, group: list[_Pending]) -> None:
        """The group's streams may go into another group: wake a writer waiting for them."""
        self._busy.difference_update((p.batch.gateway_id, p.batch.stream) for p in group)
        if group and self._queue:
            self._ready.set()

    def _defer(self, group: list[_Pending], reason: str) -> None:
        for p in group:
            key = (p.batch.gateway_id, p.batch.stream)
            first = min(p.batch.first_seq, self._resume_at.get(key, p.batch.first_seq))
            self._resume_at[key] = first
            if not p.future.done():
                p.future.set_result(self._deferred(p.batch, reason))

    def _acknowledge(self, group: list[_Pending], outcomes: list[BatchOutcome]) -> None:
        self.stats.groups += 1
        for p, outcome in zip(group, outcomes, strict=True):
            self.stats.batches += 1
            self.stats.observations += outcome.accepted
            self.stats.duplicates += outcome.duplicates
            if not p.future.done():
                p.future.set_result(
                    TelemetryAck(
                        stream=p.batch.stream,
                        last_seq=p.batch.last_seq,
                        accepted=outcome.accepted,
                        duplicates=outcome.duplicates,
                    )
                )
