"""TelemetryStore on SQLite and a real PostgreSQL: exactly-once per (gateway, stream), gaps,
drops, discovery, last values and queries. Every test runs on both engines (see conftest)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tether.cloud.store import Store
from tether.cloud.store import telemetry as telemetry_module
from tether.cloud.store.telemetry import (
    SQLITE_KEYS_PER_STATEMENT,
    SQLITE_ROWS_PER_STATEMENT,
    WRITER_CACHE,
    BatchOutcome,
    IncomingBatch,
    TelemetryStore,
    batch_rows,
    points,
    telemetry_streams,
)
from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

GW = "gw-1"
T0 = 1_718_000_000.0


def obs(first: int, last: int, *, point: str = "b1/ahu-1/sat") -> list[Observation]:
    """Observations for sequence numbers first..last: the timestamp encodes the sequence."""
    return [Observation(point, T0 + seq, float(seq)) for seq in range(first, last + 1)]


def batch(first: int, last: int, *, stream: str = "sim", gateway: str = GW) -> IncomingBatch:
    return IncomingBatch(gateway, stream, first, last, obs(first, last))


@pytest.fixture
def telemetry(store: Store) -> TelemetryStore:
    return TelemetryStore(store.engine)


async def stored_seqs(telemetry: TelemetryStore, gateway: str = GW) -> list[int]:
    """The sequence numbers present in the store (decoded from the timestamps), with repeats."""
    rows = await telemetry.query(gateway, point_id=None, since=None, until=None, limit=1_000_000)
    return [round(r.ts - T0) for r in rows]


async def test_a_batch_is_stored_and_raises_the_mark(telemetry: TelemetryStore) -> None:
    [outcome] = await telemetry.commit_batches([batch(1, 50)])
    assert outcome == BatchOutcome(accepted=50, duplicates=0, gap=0)
    [stream] = await telemetry.streams(GW)
    assert (stream.stream, stream.hwm, stream.accepted, stream.duplicates, stream.gaps) == (
        "sim",
        50,
        50,
        0,
        0,
    )
    assert await stored_seqs(telemetry) == list(range(1, 51))
    assert await telemetry.count(GW) == 50


async def test_a_batch_sent_again_after_a_lost_ack_is_stored_once(
    telemetry: TelemetryStore,
) -> None:
    await telemetry.commit_batches([batch(1, 20)])
    [again] = await telemetry.commit_batches([batch(1, 20)])
    assert again == BatchOutcome(accepted=0, duplicates=20, gap=0)
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.accepted, stream.duplicates) == (20, 20, 20)
    assert await stored_seqs(telemetry) == list(range(1, 21))


async def test_a_partly_overlapping_batch_adds_only_its_new_tail(
    telemetry: TelemetryStore,
) -> None:
    await telemetry.commit_batches([batch(1, 10)])
    [outcome] = await telemetry.commit_batches([batch(6, 15)])
    assert outcome == BatchOutcome(accepted=5, duplicates=5, gap=0)
    assert await stored_seqs(telemetry) == list(range(1, 16))
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.accepted, stream.duplicates, stream.gaps) == (15, 15, 5, 0)


async def test_repeats_and_overlaps_inside_one_group(telemetry: TelemetryStore) -> None:
    outcomes = await telemetry.commit_batches(
        [batch(1, 10), batch(6, 15), batch(1, 15), batch(16, 20), batch(16, 20)]
    )
    assert [(o.accepted, o.duplicates) for o in outcomes] == [
        (10, 0),
        (5, 5),
        (0, 15),
        (5, 0),
        (0, 5),
    ]
    assert await stored_seqs(telemetry) == list(range(1, 21))
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.accepted, stream.duplicates) == (20, 20, 25)


async def test_a_skipped_range_is_counted_as_a_gap(telemetry: TelemetryStore) -> None:
    await telemetry.commit_batches([batch(1, 10)])
    [outcome] = await telemetry.commit_batches([batch(31, 40)])
    assert outcome == BatchOutcome(accepted=10, duplicates=0, gap=20)
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.accepted, stream.gaps) == (40, 20, 20)
    # A first batch that does not start at 1 is a gap too (the oldest were dropped).
    [first] = await telemetry.commit_batches([batch(5, 9, stream="other")])
    assert first.gap == 4


async def test_streams_and_gateways_are_deduplicated_independently(
    telemetry: TelemetryStore,
) -> None:
    outcomes = await telemetry.commit_batches(
        [
            batch(1, 10),
            batch(1, 10, stream="meter"),
            batch(1, 10, gateway="gw-2"),
            batch(1, 10, gateway="gw-2"),
        ]
    )
    assert [o.accepted for o in outcomes] == [10, 10, 10, 0]
    assert await telemetry.count(GW) == 20
    assert await telemetry.count("gw-2") == 10
    assert await telemetry.count() == 30
    assert [s.stream for s in await telemetry.streams(GW)] == ["meter", "sim"]
    assert [(s.stream, s.hwm) for s in await telemetry.streams("gw-2")] == [("sim", 10)]


async def test_concurrent_commits_of_the_same_stream_store_each_sequence_once(
    telemetry: TelemetryStore,
) -> None:
    """Two writers (an old and a new link of one gateway, or two cloud nodes) send the same
    ascending sequence numbers in differently cut batches at the same time."""

    def cuts(size: int, top: int) -> list[IncomingBatch]:
        return [batch(f, min(f + size - 1, top)) for f in range(1, top + 1, size)]

    async def writer(batches: Sequence[IncomingBatch]) -> list[BatchOutcome]:
        out: list[BatchOutcome] = []
        for b in batches:
            out += await telemetry.commit_batches([b])
        return out

    top = 600
    first, second = await asyncio.gather(writer(cuts(25, top)), writer(cuts(40, top)))
    accepted = sum(o.accepted for o in first + second)
    duplicates = sum(o.duplicates for o in first + second)
    assert accepted == top
    assert duplicates == top  # everything was sent twice
    assert all(o.gap == 0 for o in first + second)
    seqs = await stored_seqs(telemetry)
    assert Counter(seqs) == Counter(range(1, top + 1))
    [stream] = await telemetry.streams(GW)
    assert (stream.hwm, stream.accepted, stream.duplicates, stream.gaps) == (top, top, top, 0)


async def test_a_large_group_takes_the_bulk_path(telemetry: TelemetryStore) -> None:
    batches = [batch(f, f + 999) for f in range(1, 20_001, 1000)]
    outcomes = await telemetry.commit_batches(batches)
    assert sum(o.accepted for o in outcomes) == 20_000
    assert await telemetry.count(GW) == 20_000
    [stream] = await telemetry.streams(GW)
    assert stream.hwm == 20_000


async def test_values_of_every_kind_and_quality_round_trip(telemetry: TelemetryStore) -> None:
    values: list[Observation] = [
        Observation("p/num", T0 + 1, 21.5),
        Observation("p/int", T0 + 2, 7),
        Observation("p/bool", T0 + 3, True),
        Observation("p/text", T0 + 4, "fault: filter clogged ✓", "bad"),
        Observation("p/num", T0 + 5, -0.0, "uncertain"),
    ]
    await telemetry.commit_batches([IncomingBatch(GW, "mix", 1, 5, values)])
    rows = await telemetry.query(GW, point_id=None, since=None, until=None, limit=10)
    assert [(r.point_id, r.ts, r.value, r.quality) for r in rows] == [
        ("p/num", T0 + 1, 21.5, "good"),
        ("p/int", T0 + 2, 7.0, "good"),
        ("p/bool", T0 + 3, 1.0, "good"),  # booleans are stored as numbers (1/0)
        ("p/text", T0 + 4, "fault: filter clogged ✓", "bad"),
        ("p/num", T0 + 5, -0.0, "uncertain"),
    ]


async def test_query_windows_cursor_limit_and_point(telemetry: TelemetryStore) -> None:
    other = [Observation("b1/zone-1/co2", T0 + seq + 0.5, 400 + seq) for seq in range(1, 11)]
    await telemetry.commit_batches(
        [batch(1, 10), IncomingBatch(GW, "zone", 1, 10, other), batch(1, 3, gateway="gw-2")]
    )

    async def ts(**kw: object) -> list[float]:
        args: dict[str, object] = {"point_id": None, "since": None, "until": None, "limit": 100}
        args.update(kw)
        rows = await telemetry.query(GW, **args)  # type: ignore[arg-type]
        assert [r.ts for r in rows] == sorted(r.ts for r in rows), "oldest first"
        return [r.ts - T0 for r in rows]

    assert len(await ts()) == 20  # the other gateway's rows are not visible
    assert await ts(point_id="b1/ahu-1/sat", since=T0 + 3, until=T0 + 6) == [3, 4, 5]
    assert await ts(point_id="b1/ahu-1/sat", after=T0 + 8) == [9, 10]
    assert await ts(since=T0 + 9) == [9, 9.5, 10, 10.5]
    assert await ts(limit=3) == [1, 1.5, 2]
    assert await ts(point_id="b1/zone-1/co2", since=T0 + 2, until=T0 + 4, after=T0 + 2.5) == [3.5]
    assert await ts(point_id="nope") == []


async def test_discovery_registers_devices_and_points_and_updates_them(
    telemetry: TelemetryStore,
) -> None:
    device = DeviceInfo(device_id="b1/ahu-1", name="AHU-1", kind="ahu", vendor="acme")
    point = PointInfo(point_id="b1/ahu-1/sat", device_id="b1/ahu-1", name="Supply air", unit="°C")
    await telemetry.record_discovery(GW, "sim", [device], [point])
    [dev] = await telemetry.list_devices(GW)
    assert (dev["device_id"], dev["name"], dev["kind"], dev["connector"], dev["vendor"]) == (
        "b1/ahu-1",
        "AHU-1",
        "ahu",
        "sim",
        "acme",
    )
    [p] = await telemetry.list_points(GW)
    assert (p.point_id, p.name, p.kind, p.unit, p.last_ts) == (
        "b1/ahu-1/sat",
        "Supply air",
        "numeric",
        "°C",
        None,
    )
    # A second discovery renames; it does not duplicate.
    renamed = PointInfo(
        point_id="b1/ahu-1/sat", device_id="b1/ahu-1", name="Supply air temp", unit="K"
    )
    await telemetry.record_discovery(GW, "sim", [device], [renamed])
    [p] = await telemetry.list_points(GW)
    assert (p.name, p.unit) == ("Supply air temp", "K")
    assert await telemetry.list_points("gw-2") == []


async def test_points_keep_their_newest_value(telemetry: TelemetryStore) -> None:
    await telemetry.record_discovery(
        GW,
        "sim",
        [],
        [PointInfo(point_id="b1/ahu-1/sat", device_id="b1/ahu-1", name="Supply air")],
    )
    await telemetry.commit_batches([batch(1, 10)])
    [p] = await telemetry.list_points(GW)
    assert (p.last_ts, p.last_value) == (T0 + 10, 10.0)
    # Older data arriving late (another stream, delayed) does not move the latest value back.
    late = [Observation("b1/ahu-1/sat", T0 + 2, 99.0)]
    await telemetry.commit_batches([IncomingBatch(GW, "late", 1, 1, late)])
    [p] = await telemetry.list_points(GW)
    assert (p.last_ts, p.last_value) == (T0 + 10, 10.0)
    # Observations of points nobody discovered are stored all the same.
    await telemetry.commit_batches([IncomingBatch(GW, "x", 1, 1, [Observation("x/y", T0, 1)])])
    assert await telemetry.count(GW) == 12


async def test_a_group_of_more_streams_and_points_than_one_statement_takes(
    telemetry: TelemetryStore,
) -> None:
    """Marks, stream counts and newest values of a group over many streams, some new and some
    already holding data, each with a point of its own: more keys than one keyed statement
    takes on SQLite, and a count that is no power of two (the statements are padded)."""
    count = SQLITE_KEYS_PER_STATEMENT + 91
    names = [f"s{i:04d}" for i in range(count)]
    await telemetry.record_discovery(
        GW, "sim", [], [PointInfo(point_id=n, device_id="d", name=n) for n in names]
    )

    def one(stream: str, first: int, last: int, value: float) -> IncomingBatch:
        rows = [Observation(stream, T0 + seq, value + seq) for seq in range(first, last + 1)]
        return IncomingBatch(GW, stream, first, last, rows)

    older = names[::2]  # these hold 1..5 already
    await telemetry.commit_batches([one(n, 1, 5, 0.0) for n in older])
    group = [one(n, 1, 8, 100.0) for n in names]  # 1..5 of the older ones are repeats
    group.append(one(names[1], 12, 12, 100.0))  # a gap of 3 in a new stream
    outcomes = await telemetry.commit_batches(group)

    older_set = set(older)
    for b, outcome in zip(group[:count], outcomes, strict=False):
        if b.stream in older_set:
            assert outcome == BatchOutcome(accepted=3, duplicates=5, gap=0)
        else:
            assert outcome == BatchOutcome(accepted=8, duplicates=0, gap=0)
    assert outcomes[-1] == BatchOutcome(accepted=1, duplicates=0, gap=3)
    streams = {s.stream: s for s in await telemetry.streams(GW)}
    assert len(streams) == count
    for name in names:
        s = streams[name]
        expected_hwm = 12 if name == names[1] else 8
        dup = 5 if name in older_set else 0
        gaps = 3 if name == names[1] else 0
        assert (s.hwm, s.accepted, s.duplicates, s.gaps) == (
            expected_hwm,
            expected_hwm - gaps,
            dup,
            gaps,
        )
    latest = {p.point_id: (p.last_ts, p.last_value) for p in await telemetry.list_points(GW)}
    assert len(latest) == count
    for name in names:
        newest = 12 if name == names[1] else 8
        assert latest[name] == (T0 + newest, 100.0 + newest)
    assert (
        await telemetry.count(GW) == len(older) * 5 + (count - len(older)) * 8 + len(older) * 3 + 1
    )


@pytest.mark.parametrize("keys", [1, 8, 100, SQLITE_KEYS_PER_STATEMENT])
async def test_sqlite_keyed_statements_look_rows_up_by_primary_key(store: Store, keys: int) -> None:
    """A group's marks, stream counts and newest values are found through the tables' primary
    keys: a scan would cost a pass over every stream or point of the fleet per group."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's statements")
    size = telemetry_module._padded_keys(keys)
    assert size >= keys
    keyed = telemetry_module._keyed_statement
    statements = {
        "telemetry_streams": [
            keyed(telemetry_module._SQLITE_MARKS, size, 2),
            keyed(telemetry_module._SQLITE_ADVANCE, size, 6),
        ],
        "points": [keyed(telemetry_module._SQLITE_SET_LAST, size, 5)],
    }
    async with store.engine.connect() as conn:
        for table, texts in statements.items():
            for text in texts:
                plan = (
                    await conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN " + text, (None,) * text.count("?")
                    )
                ).all()
                details = [row[-1] for row in plan]
                assert any(
                    d.startswith("SEARCH") and table in d and "INDEX" in d for d in details
                ), details
                assert not any(d.startswith("SCAN") and table in d for d in details), details


async def test_drop_reports_keep_the_largest_total(telemetry: TelemetryStore) -> None:
    await telemetry.record_drops(GW, "sim", 5)  # before any batch of the stream arrived
    await telemetry.record_drops(GW, "sim", 3)  # a late, older report
    [stream] = await telemetry.streams(GW)
    assert (stream.dropped_reported, stream.hwm) == (5, 0)
    await telemetry.commit_batches([batch(6, 10)])
    await telemetry.record_drops(GW, "sim", 8)
    [stream] = await telemetry.streams(GW)
    assert (stream.dropped_reported, stream.gaps, stream.hwm, stream.accepted) == (8, 5, 10, 5)


async def test_raw_insert_only_inserts(telemetry: TelemetryStore) -> None:
    rows = [(GW, "p", T0 + i, float(i), None, "good") for i in range(1000)]
    await telemetry.raw_insert(rows)
    assert await telemetry.count(GW) == 1000
    assert await telemetry.streams(GW) == []


async def test_bulk_inserts_of_every_statement_size_keep_every_row_once(
    telemetry: TelemetryStore,
) -> None:
    # 4096 + 512 + 3 * 64 + 7 * 8 + 7 rows: statements of every size on SQLite, each full.
    count = sum(SQLITE_ROWS_PER_STATEMENT) + 2 * 64 + 6 * 8 + 6
    [outcome] = await telemetry.commit_batches([batch(1, count)])
    assert outcome.accepted == count
    assert await stored_seqs(telemetry) == list(range(1, count + 1))
    rows = [("gw-raw", f"p{i % 7}", T0 + i, float(i), None, "good") for i in range(count)]
    await telemetry.raw_insert(rows)
    stored = await telemetry.query("gw-raw", point_id=None, since=None, until=None, limit=count)
    assert [(r.point_id, r.ts, r.value) for r in stored] == [(p, t, v) for _, p, t, v, _, _ in rows]


async def test_raw_insert_refuses_rows_of_the_wrong_width(
    store: Store, telemetry: TelemetryStore
) -> None:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("COPY checks each row itself")
    with pytest.raises(ValueError, match="6 values"):
        await telemetry.raw_insert([(GW, "p", T0, 1.0, None)] * 7)
    assert await telemetry.count() == 0


# --- the bulk path: rows prepared column by column, one writer for many groups ---------------


def test_batch_rows_split_values_and_keep_each_points_newest() -> None:
    numeric = [
        Observation("a", T0 + 1, 1),
        Observation("b", T0 + 1, True),
        Observation("a", T0 + 2, 2.5, "bad"),
    ]
    rows = batch_rows(numeric)
    assert rows.texts is None  # no text value: the text column is all NULL
    assert list(rows.rows(GW)) == [
        (GW, "a", T0 + 1, 1.0, None, "good"),
        (GW, "b", T0 + 1, 1.0, None, "good"),
        (GW, "a", T0 + 2, 2.5, None, "bad"),
    ]
    assert all(type(n) is float for n in rows.nums)
    assert rows.latest == {"a": (T0 + 2, 2.5, None), "b": (T0 + 1, 1.0, None)}
    mixed = [Observation("t", T0 + 3, "open"), Observation("t", T0 + 1, 4), Observation("u", T0, 0)]
    rows = batch_rows(mixed)
    assert rows.texts == ["open", None, None]
    assert rows.nums == [None, 4.0, 0.0]
    # Out of time order: the newest is found by time, not by position.
    assert rows.latest == {"t": (T0 + 3, None, "open"), "u": (T0, 0.0, None)}


@pytest.mark.parametrize("ordered", [True, False])
def test_on_equal_times_the_later_observation_is_the_newest(ordered: bool) -> None:
    tail = [] if ordered else [Observation("p", T0 - 5, 0.0)]  # forces the row-by-row path
    rows = batch_rows([Observation("p", T0, 1.0), Observation("p", T0, 2.0), *tail])
    assert rows.latest["p"] == (T0, 2.0, None)


async def test_prepared_rows_are_what_is_stored(telemetry: TelemetryStore) -> None:
    observations = obs(1, 10)
    prepared = IncomingBatch(GW, "sim", 1, 10, observations, batch_rows(observations))
    [outcome] = await telemetry.commit_batches([prepared])
    assert outcome == BatchOutcome(10, 0, 0)
    assert await stored_seqs(telemetry) == list(range(1, 11))


async def test_one_writer_commits_many_groups(store: Store, telemetry: TelemetryStore) -> None:
    async with telemetry.writer() as writer:
        for first in range(1, 100, 10):
            [outcome] = await writer.commit([batch(first, first + 9)])
            assert outcome.accepted == 10
        assert await writer.commit([]) == []
        [again] = await writer.commit([batch(91, 100)])
        assert again == BatchOutcome(0, 10, 0)
    assert await stored_seqs(telemetry) == list(range(1, 101))
    if store.engine.dialect.name == "sqlite":
        # The writer's larger page cache is given back with its connection.
        async with store.engine.connect() as conn:
            sizes = {
                (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one() for _ in range(8)
            }
        assert WRITER_CACHE not in sizes


async def test_a_group_commit_stamps_rows_as_the_store_does(
    store: Store, telemetry: TelemetryStore
) -> None:
    await telemetry.record_discovery(
        GW, "sim", [], [PointInfo(point_id="b1/ahu-1/sat", device_id="b1/ahu-1", name="SAT")]
    )
    async with store.engine.connect() as conn:
        discovered = (await conn.execute(sa.select(points.c.updated_at))).scalar_one()
    before = datetime.now(UTC)
    await telemetry.commit_batches([batch(1, 3)])
    async with store.engine.connect() as conn:
        stamps = [
            (await conn.execute(sa.select(points.c.updated_at))).scalar_one(),
            (await conn.execute(sa.select(telemetry_streams.c.updated_at))).scalar_one(),
        ]
        if store.engine.dialect.name == "sqlite":  # the stored text has the store's one format
            texts = [
                (await conn.exec_driver_sql(f"SELECT updated_at FROM {table}")).scalar_one()
                for table in ("points", "telemetry_streams")
            ]
            assert {len(t) for t in texts} == {len(str(discovered.replace(tzinfo=None)))}
    assert all(s.tzinfo is not None and s >= before - timedelta(seconds=1) for s in stamps)
    assert stamps[0] >= discovered


async def test_a_driver_error_in_the_bulk_path_is_a_store_error(
    store: Store, telemetry: TelemetryStore
) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE observations RENAME TO observations_away"))
    with pytest.raises(sa.exc.DBAPIError):
        await telemetry.commit_batches([batch(1, 5)])
    with pytest.raises(sa.exc.DBAPIError):
        await telemetry.raw_insert([(GW, "p", T0, 1.0, None, "good")])
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE observations_away RENAME TO observations"))
    # Nothing of the failed group stayed: the mark did not move.
    assert [s.hwm for s in await telemetry.streams(GW)] in ([], [0])
    [outcome] = await telemetry.commit_batches([batch(1, 5)])
    assert outcome.accepted == 5


async def test_the_bulk_path_binds_times_exactly_as_the_store_stores_them(
    store: Store, telemetry: TelemetryStore
) -> None:
    """Statements run on the driver's own connection bind ``updated_at`` as SQLAlchemy would
    (on SQLite: the same fixed-width text, never the driver's own datetime adapter)."""
    await telemetry.record_discovery(
        GW, "sim", [], [PointInfo(point_id="b1/ahu-1/sat", device_id="b1/ahu-1", name="SAT")]
    )
    whole_second = datetime(2024, 1, 1, tzinfo=UTC)  # no microseconds: where formats differ
    async with store.engine.begin() as conn:
        await conn.execute(points.update().values(updated_at=whole_second))
        stored = (await conn.exec_driver_sql("SELECT updated_at FROM points")).scalar_one()
    assert telemetry._stamp(whole_second) == stored
