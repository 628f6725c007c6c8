"""IngestPipeline against a real store (SQLite file): validation, group commit, acks after
commit, duplicates across links, drops and discovery, and what a store failure does."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.cloudproc import wait_for
from tests.support.ingest import started

from tether.cloud.ingest import MAX_OBSERVATIONS, BatchInvalid, IngestPipeline, validate_batch
from tether.cloud.store import Store
from tether.cloud.store.telemetry import BatchOutcome, GroupWriter, IncomingBatch, TelemetryStore
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
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

GW = "gw-1"
T0 = 1_718_000_000.0
POINT = "b1/ahu-1/sat"


def obs(first: int, last: int) -> list[Observation]:
    return [Observation(POINT, T0 + seq, float(seq)) for seq in range(first, last + 1)]


def tm(first: int, last: int, stream: str = "sim") -> TelemetryBatch:
    return TelemetryBatch(
        stream=stream, first_seq=first, last_seq=last, observations=obs(first, last)
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def telemetry(store: Store) -> TelemetryStore:
    return TelemetryStore(store.engine)


@pytest.fixture
async def pipeline(telemetry: TelemetryStore) -> AsyncIterator[IngestPipeline]:
    async with started(IngestPipeline(telemetry)) as running:
        yield running


async def one(pipeline: IngestPipeline, message: Message, gateway: str = GW) -> Message:
    [reply] = await pipeline.on_batch(gateway, message)
    return reply


async def stored_seqs(telemetry: TelemetryStore, gateway: str = GW) -> list[int]:
    rows = await telemetry.query(gateway, point_id=None, since=None, until=None, limit=100_000)
    return [round(r.ts - T0) for r in rows]


@asynccontextmanager
async def store_down(store: Store) -> AsyncIterator[None]:
    """The observations table is gone for a while: every commit fails, as with a lost database."""
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE observations RENAME TO observations_away"))
    try:
        yield
    finally:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE observations_away RENAME TO observations"))


# --- validation ----------------------------------------------------------------------------


def _malformed() -> Iterator[tuple[str, TelemetryBatch, str]]:
    yield "empty stream", tm(1, 1, stream=""), "stream name"
    yield "space in stream", tm(1, 1, stream="bad stream"), "stream name"
    yield "stream starts with dash", tm(1, 1, stream="-x"), "stream name"
    yield "stream too long", tm(1, 1, stream="s" * 129), "stream name"
    yield "control char in stream", tm(1, 1, stream="a\x00b"), "stream name"
    yield "sequence zero", TelemetryBatch("sim", 0, 0, obs(0, 0)), "at least 1"
    yield "negative sequence", TelemetryBatch("sim", -5, -5, obs(1, 1)), "at least 1"
    yield "out of order", TelemetryBatch("sim", 10, 9, obs(1, 2)), "out of order"
    yield "no observations", TelemetryBatch("sim", 1, 1, []), "no observations"
    yield "count too small", TelemetryBatch("sim", 1, 10, obs(1, 9)), "does not match 9"
    yield "count too large", TelemetryBatch("sim", 1, 10, obs(1, 11)), "does not match 11"
    nan = [Observation(POINT, T0, math.nan)]
    yield "NaN value", TelemetryBatch("sim", 1, 1, nan), "not a finite number"
    inf = [Observation(POINT, T0, -math.inf)]
    yield "infinite value", TelemetryBatch("sim", 1, 1, inf), "not a finite number"
    bad_ts = [Observation(POINT, math.inf, 1.0)]
    yield "infinite time", TelemetryBatch("sim", 1, 1, bad_ts), "timestamp"
    yield "empty point", TelemetryBatch("sim", 1, 1, [Observation("", T0, 1.0)]), "point id"
    long_point = [Observation("p" * 256, T0, 1.0)]
    yield "long point", TelemetryBatch("sim", 1, 1, long_point), "point id"
    nul_point = [Observation(POINT, T0, 1.0), Observation("b1\x00", T0, 1.0)]
    yield "NUL in point", TelemetryBatch("sim", 1, 2, nul_point), "NUL character"
    nul_text_point = [Observation("\x00", T0, "text")]
    yield "NUL in point, text", TelemetryBatch("sim", 1, 1, nul_text_point), "NUL character"
    yield "sequence past 64 bits", TelemetryBatch("sim", 2**63, 2**63, obs(1, 1)), "past the"
    long_text = [Observation(POINT, T0, "x" * 4097)]
    yield "long text", TelemetryBatch("sim", 1, 1, long_text), "4096"
    odd_quality = [Observation(POINT, T0, 1.0, "stale-" * 10)]
    yield "unknown quality", TelemetryBatch("sim", 1, 1, odd_quality), "quality"


@pytest.mark.parametrize(
    ("message", "reason"),
    [pytest.param(m, r, id=name) for name, m, r in _malformed()],
)
def test_malformed_batches_are_named(message: TelemetryBatch, reason: str) -> None:
    with pytest.raises(BatchInvalid, match=reason):
        validate_batch(message)


def test_a_batch_over_the_observation_limit_is_refused() -> None:
    n = MAX_OBSERVATIONS + 1
    huge = TelemetryBatch("sim", 1, n, [Observation(POINT, T0, 1.0)] * n)
    with pytest.raises(BatchInvalid, match="exceeds"):
        validate_batch(huge)


@pytest.mark.parametrize(
    "message",
    [
        tm(1, 1),
        tm(7, 20, stream="a.b:c/d-e_f"),
        TelemetryBatch("s" * 128, 1, 1, [Observation("p" * 255, T0, "x" * 4096, "bad")]),
        TelemetryBatch("sim", 1, 3, [Observation(POINT, T0, v) for v in (True, 3, -0.0)]),
        TelemetryBatch("sim", 1, 1, [Observation(POINT, T0, "a\x00b")]),  # stored as U+FFFD
        TelemetryBatch("sim", 2**63 - 1, 2**63 - 1, [Observation(POINT, T0, 1.0)]),
    ],
)
def test_well_formed_batches_pass(message: TelemetryBatch) -> None:
    validate_batch(message)


# --- the pipeline --------------------------------------------------------------------------


async def test_a_malformed_batch_is_refused_for_good_and_nothing_is_stored(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    reply = await one(pipeline, TelemetryBatch("sim", 1, 10, obs(1, 9)))
    assert isinstance(reply, TelemetryReject)
    assert (reply.stream, reply.first_seq, reply.last_seq, reply.permanent) == ("sim", 1, 10, True)
    assert "does not match" in reply.reason
    assert pipeline.stats.rejected == 1
    assert await telemetry.count() == 0
    assert await telemetry.streams(GW) == []


async def test_a_batch_is_acknowledged_once_committed(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    reply = await one(pipeline, tm(1, 100))
    assert reply == TelemetryAck(stream="sim", last_seq=100, accepted=100, duplicates=0)
    # The ack comes after the commit: the rows are there as soon as it is received.
    assert await stored_seqs(telemetry) == list(range(1, 101))
    assert (pipeline.stats.batches, pipeline.stats.observations) == (1, 100)


async def test_batches_waiting_together_share_one_transaction(
    telemetry: TelemetryStore,
) -> None:
    pipeline = IngestPipeline(telemetry)
    # Queued before the writer runs, as when many links deliver while a commit is under way.
    tasks = [
        asyncio.create_task(pipeline.on_batch(f"gw-{g}", tm(f, f + 9)))
        for g in range(4)
        for f in range(1, 51, 10)
    ]
    await asyncio.sleep(0)  # every on_batch has queued its batch
    async with started(pipeline):
        replies = await asyncio.gather(*tasks)
    assert all(isinstance(r, TelemetryAck) for [r] in replies)
    assert pipeline.stats.groups == 1
    assert pipeline.stats.batches == 20
    for g in range(4):
        assert await stored_seqs(telemetry, f"gw-{g}") == list(range(1, 51))


async def test_a_group_holds_at_most_max_rows(telemetry: TelemetryStore) -> None:
    pipeline = IngestPipeline(telemetry, max_rows=25)
    tasks = [asyncio.create_task(pipeline.on_batch(GW, tm(f, f + 9))) for f in range(1, 101, 10)]
    await asyncio.sleep(0)
    async with started(pipeline):
        replies = await asyncio.gather(*tasks)
    assert [r.last_seq for [r] in replies] == list(range(10, 101, 10))  # type: ignore[attr-defined]
    assert pipeline.stats.groups == 5  # two batches of 10 per group of at most 25 rows
    assert await telemetry.count() == 100


async def test_the_same_batches_from_two_links_are_stored_once(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    """An old link still delivering while the gateway's new link sends the same data again."""
    old = [pipeline.on_batch(GW, tm(f, f + 9)) for f in range(1, 101, 10)]
    new = [pipeline.on_batch(GW, tm(f, min(f + 24, 100))) for f in range(1, 101, 25)]
    replies = [r for [r] in await asyncio.gather(*old, *new)]
    assert all(isinstance(r, TelemetryAck) for r in replies)
    acks = [r for r in replies if isinstance(r, TelemetryAck)]
    assert sum(a.accepted for a in acks) == 100
    assert sum(a.duplicates for a in acks) == 100
    assert await stored_seqs(telemetry) == list(range(1, 101))


async def test_drop_reports_and_discovery_are_recorded_and_acknowledged(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    replies = await pipeline.on_drop_report(GW, DropReport(stream="sim", dropped_total=42))
    assert replies == [DropReportAck(stream="sim", dropped_total=42)]
    [stream] = await telemetry.streams(GW)
    assert stream.dropped_reported == 42
    found = Discovery(
        connector="sim",
        devices=[DeviceInfo(device_id="b1/ahu-1", name="AHU-1", kind="ahu")],
        points=[PointInfo(point_id=POINT, device_id="b1/ahu-1", name="SAT", unit="°C")],
    )
    assert await pipeline.on_discovery(GW, found) == [DiscoveryAck(connector="sim", points=1)]
    [point] = await telemetry.list_points(GW)
    assert (point.point_id, point.unit) == (POINT, "°C")


async def test_a_discovery_keeps_what_fits_the_store_and_names_what_it_left_out(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    found = Discovery(
        connector="sim",
        devices=[
            DeviceInfo(device_id="b1/ahu-1", name="AHU-1", kind="ahu"),
            DeviceInfo(device_id="b1/odd", name="odd", kind="k" * 65),
        ],
        points=[
            PointInfo(point_id=POINT, device_id="b1/ahu-1", name="SAT", unit="°C"),
            PointInfo(point_id="b1/ahu-1/long", device_id="b1/ahu-1", name="x", unit="u" * 33),
            PointInfo(point_id="p" * 256, device_id="b1/ahu-1", name="long id"),
        ],
    )
    answers = await pipeline.on_discovery(GW, found)
    assert answers[0] == DiscoveryAck(connector="sim", points=1)
    [report] = answers[1:]
    assert isinstance(report, ErrorReport)
    assert report.code == "invalid"
    assert "1 device(s) and 2 point(s) left out" in report.message
    assert "kind longer than 64" in report.message
    assert [p.point_id for p in await telemetry.list_points(GW)] == [POINT]
    too_long = Discovery(connector="c" * 129, devices=[], points=[])
    [refused] = await pipeline.on_discovery(GW, too_long)
    assert isinstance(refused, ErrorReport)
    assert "connector name longer than 128" in refused.message


async def test_a_sequence_past_64_bits_is_refused_for_good_and_ingest_goes_on(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    last = 2**64 - 1  # what msgpack carries at most; the store's columns hold 63 bits
    reply = await one(pipeline, TelemetryBatch("sim", last, last, obs(1, 1)))
    assert isinstance(reply, TelemetryReject)
    assert reply.permanent
    assert await telemetry.streams(GW) == []
    # The writer is still there: the next batch is committed.
    assert await one(pipeline, tm(1, 5)) == TelemetryAck("sim", 5, accepted=5)
    assert pipeline.stats.failures == 0


async def test_a_drop_report_the_store_cannot_hold_is_refused(
    pipeline: IngestPipeline, telemetry: TelemetryStore
) -> None:
    for report in (
        DropReport(stream="bad stream", dropped_total=1),
        DropReport(stream="s" * 129, dropped_total=1),
        DropReport(stream="sim", dropped_total=2**63),
    ):
        [refused] = await pipeline.on_drop_report(GW, report)
        assert isinstance(refused, ErrorReport)
        assert refused.code == "invalid"
    assert await telemetry.streams(GW) == []


async def test_a_store_failure_defers_the_batch_and_a_resend_is_stored(
    pipeline: IngestPipeline, store: Store, telemetry: TelemetryStore
) -> None:
    async with store_down(store):
        reply = await one(pipeline, tm(1, 10))
    assert isinstance(reply, TelemetryReject)
    assert (reply.permanent, reply.first_seq, reply.last_seq) == (False, 1, 10)
    assert "store unavailable" in reply.reason
    assert pipeline.stats.failures == 1
    assert await telemetry.count() == 0
    assert await one(pipeline, tm(1, 10)) == TelemetryAck("sim", 10, accepted=10)
    assert await stored_seqs(telemetry) == list(range(1, 11))


async def test_a_later_batch_does_not_overtake_a_deferred_one(
    pipeline: IngestPipeline, store: Store, telemetry: TelemetryStore
) -> None:
    """Batches 1..10 and 11..20 are in flight; the store fails for the first only. Committing
    11..20 would raise the mark over 1..10, and their resend would then count as duplicates:
    lost, and the gateway would delete them on the ack of 20."""
    async with store_down(store):
        first = await one(pipeline, tm(1, 10))
    assert isinstance(first, TelemetryReject)
    assert not first.permanent
    second = await one(pipeline, tm(11, 20))  # sent before the gateway saw the deferral
    assert isinstance(second, TelemetryReject)
    assert not second.permanent
    assert await telemetry.count() == 0
    # The gateway sends both again, in order.
    assert await one(pipeline, tm(1, 10)) == TelemetryAck("sim", 10, accepted=10)
    assert await one(pipeline, tm(11, 20)) == TelemetryAck("sim", 20, accepted=10)
    assert await stored_seqs(telemetry) == list(range(1, 21))
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.gaps) == (20, 0)


async def test_a_deferred_batch_the_gateway_dropped_meanwhile_does_not_block_its_stream(
    pipeline: IngestPipeline, store: Store, telemetry: TelemetryStore
) -> None:
    async with store_down(store):
        assert isinstance(await one(pipeline, tm(1, 10)), TelemetryReject)
    # Other streams and gateways are not held back.
    assert await one(pipeline, tm(1, 5, stream="meter")) == TelemetryAck("meter", 5, accepted=5)
    assert await one(pipeline, tm(1, 5), "gw-2") == TelemetryAck("sim", 5, accepted=5)
    # The spool's bound dropped 1..10 before the resend: the gateway reports it, then goes on.
    await pipeline.on_drop_report(GW, DropReport(stream="sim", dropped_total=10))
    assert await one(pipeline, tm(11, 20)) == TelemetryAck("sim", 20, accepted=10)
    [_, stream] = await telemetry.streams(GW)
    assert (stream.stream, stream.hwm, stream.accepted, stream.gaps) == ("sim", 20, 10, 10)
    assert stream.dropped_reported == 10


async def test_stopping_defers_what_is_still_queued(telemetry: TelemetryStore) -> None:
    pipeline = IngestPipeline(telemetry)  # never started: nothing is committed
    task = asyncio.create_task(pipeline.on_batch(GW, tm(1, 10)))
    await asyncio.sleep(0)
    await pipeline.stop()
    [reply] = await asyncio.wait_for(task, 5)
    assert isinstance(reply, TelemetryReject)
    assert not reply.permanent
    assert "shutting down" in reply.reason
    assert await telemetry.count() == 0


# --- column-wise validation agrees with the row-by-row rules -----------------------------------


def _row_by_row(observations: list[Observation]) -> str | None:
    """The rules, one observation at a time: the first offence, named as the pipeline does."""
    for o in observations:
        if not o.point_id or len(o.point_id) > 255 or "\x00" in o.point_id:
            return "point id"
        if not math.isfinite(o.ts):
            return "timestamp"
        if isinstance(o.value, float) and not math.isfinite(o.value):
            return "not a finite number"
        if isinstance(o.value, str) and len(o.value) > 4096:
            return "4096"
        if o.quality not in ("good", "uncertain", "bad"):
            return "quality"
    return None


_values = st.one_of(
    st.floats(),  # NaN and infinities included
    st.floats(min_value=1e300, max_value=1.7e308),  # sums that overflow, values that do not
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.text(max_size=3),
    st.just("x" * 4097),
)
_observations = st.builds(
    Observation,
    point_id=st.one_of(
        st.just(POINT), st.just(""), st.just("p" * 256), st.just("b1\x00"), st.text(max_size=4)
    ),
    ts=st.one_of(st.just(T0), st.floats()),
    value=_values,
    quality=st.sampled_from(["good", "uncertain", "bad", "", "GOOD", "q" * 17]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_observations, min_size=1, max_size=12))
def test_column_checks_find_exactly_what_the_row_checks_find(
    observations: list[Observation],
) -> None:
    message = TelemetryBatch("sim", 1, len(observations), observations)
    offence = _row_by_row(observations)
    if offence is None:
        columns = validate_batch(message)
        assert columns.point_ids == [o.point_id for o in observations]
        assert columns.values == [o.value for o in observations]
    else:
        with pytest.raises(BatchInvalid, match=offence):
            validate_batch(message)


def test_a_large_valid_batch_passes_on_columns_alone() -> None:
    big = [Observation(f"p{i % 96}", T0 + i, 1.5e308 if i % 2 else i) for i in range(10_000)]
    columns = validate_batch(TelemetryBatch("sim", 1, len(big), big))
    assert len(columns.ts) == 10_000


async def test_the_writer_lets_its_connection_go_when_idle_and_takes_one_again(
    telemetry: TelemetryStore,
) -> None:
    async with started(IngestPipeline(telemetry, hold_writer=0.01)) as pipeline:
        assert await one(pipeline, tm(1, 10)) == TelemetryAck("sim", 10, accepted=10)
        # No batch for longer than the hold: the writer gives its connection back.
        pool = telemetry.engine.sync_engine.pool
        await wait_for(lambda: pool.checkedout() == 0, within=5, what="the writer to go idle")
        assert await one(pipeline, tm(11, 20)) == TelemetryAck("sim", 20, accepted=10)
    assert await stored_seqs(telemetry) == list(range(1, 21))


# --- groups side by side (PostgreSQL's two writers) -------------------------------------------


class _WatchedStore(TelemetryStore):
    """A store recording the streams of each group in flight, whose group commits wait (up to
    ``hold`` seconds) until two are under way."""

    def __init__(self, engine: AsyncEngine, hold: float) -> None:
        super().__init__(engine)
        self.hold = hold
        self.in_flight: list[set[tuple[str, str]]] = []
        self.overlapping: list[tuple[set[tuple[str, str]], set[tuple[str, str]]]] = []
        self.side_by_side = asyncio.Event()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[GroupWriter]:
        async with super().writer() as inner:
            yield _WatchedWriter(self, inner)


class _WatchedWriter(GroupWriter):
    def __init__(self, store: _WatchedStore, inner: GroupWriter) -> None:
        self.watched = store
        self.inner = inner

    async def commit(self, batches: Sequence[IncomingBatch]) -> list[BatchOutcome]:
        store = self.watched
        streams = {(b.gateway_id, b.stream) for b in batches}
        store.overlapping += [(streams, other) for other in store.in_flight]
        store.in_flight.append(streams)
        if len(store.in_flight) == 2:
            store.side_by_side.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(store.side_by_side.wait(), store.hold)
            return await self.inner.commit(batches)
        finally:
            store.in_flight.remove(streams)


async def test_two_writers_commit_groups_of_distinct_streams_side_by_side(
    store: Store,
) -> None:
    watched = _WatchedStore(store.engine, hold=10)
    async with started(IngestPipeline(watched, writers=2)) as pipeline:
        replies = await asyncio.gather(
            *(
                pipeline.on_batch(f"gw-{g}", tm(f, f + 9, stream=s))
                for g in range(3)
                for s in ("a", "b")
                for f in range(1, 101, 10)
            )
        )
    assert all(isinstance(r, TelemetryAck) for [r] in replies)
    assert watched.side_by_side.is_set()
    assert watched.overlapping  # two groups were under way at once ...
    assert all(not (mine & other) for mine, other in watched.overlapping)  # ... never one stream
    for g in range(3):
        assert [s.hwm for s in await watched.streams(f"gw-{g}")] == [100, 100]
        assert sorted(await stored_seqs(watched, f"gw-{g}")) == sorted(2 * list(range(1, 101)))


async def test_a_stream_waits_for_its_group_under_way_and_keeps_its_order(
    store: Store,
) -> None:
    watched = _WatchedStore(store.engine, hold=0)
    async with started(IngestPipeline(watched, writers=2, max_rows=20)) as pipeline:
        replies = await asyncio.gather(
            *(pipeline.on_batch(GW, tm(f, f + 9)) for f in range(1, 201, 10))
        )
    # One stream: never two groups at once, each batch taken in its turn.
    acks = [r for [r] in replies if isinstance(r, TelemetryAck)]
    assert [(a.last_seq, a.accepted, a.duplicates) for a in acks] == [
        (last, 10, 0) for last in range(10, 201, 10)
    ]
    assert watched.overlapping == []
    assert await stored_seqs(watched) == list(range(1, 201))


# --- a bounded queue -----------------------------------------------------------------------


async def test_a_full_queue_holds_later_batches_in_their_order_until_there_is_room(
    telemetry: TelemetryStore,
) -> None:
    pipeline = IngestPipeline(telemetry, max_queued_rows=25)  # not started: nothing drains
    first = [asyncio.create_task(pipeline.on_batch(GW, tm(f, f + 9))) for f in (1, 11, 21)]
    await asyncio.sleep(0)  # each on_batch has run up to its wait for the ack
    # 20 rows left room, so the third was queued; with 30 the queue is full.
    assert pipeline.queued_rows == 30
    assert not pipeline.has_room()
    waiter = asyncio.create_task(pipeline.room())
    later = [asyncio.create_task(pipeline.on_batch(GW, tm(f, f + 9))) for f in (31, 41, 51)]
    other = asyncio.create_task(pipeline.on_batch("gw-2", tm(1, 10)))
    await asyncio.sleep(0)
    assert pipeline.queued_rows == 30  # the later ones wait outside the queue
    assert not waiter.done()
    async with started(pipeline):
        replies = await asyncio.wait_for(asyncio.gather(*first, *later, other), 10)
        await asyncio.wait_for(waiter, 10)
        assert pipeline.has_room()
    assert [r.last_seq for [r] in replies] == [10, 20, 30, 40, 50, 60, 10]  # type: ignore[attr-defined]
    assert all(isinstance(r, TelemetryAck) and r.accepted == 10 for [r] in replies)
    assert await stored_seqs(telemetry) == list(range(1, 61))
    assert await stored_seqs(telemetry, "gw-2") == list(range(1, 11))
    assert pipeline.stats.groups >= 2  # the waiting ones went in a later group
    assert pipeline.queued_rows == 0


async def test_stopping_defers_the_batches_waiting_for_room(telemetry: TelemetryStore) -> None:
    pipeline = IngestPipeline(telemetry, max_queued_rows=5)
    queued = asyncio.create_task(pipeline.on_batch(GW, tm(1, 10)))
    waiting = asyncio.create_task(pipeline.on_batch(GW, tm(11, 20)))
    await asyncio.sleep(0)
    assert pipeline.queued_rows == 10
    assert not pipeline.has_room()
    await pipeline.stop()
    for task in (queued, waiting):
        [reply] = await asyncio.wait_for(task, 5)
        assert isinstance(reply, TelemetryReject), reply
        assert not reply.permanent
        assert "shutting down" in reply.reason
    assert pipeline.has_room()
    assert await telemetry.count() == 0
