"""Tests for tether.gateway.spool: ordering, acks, bounds and drop counts, crashes, full disks."""

from __future__ import annotations

import asyncio
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway.spool import (
    ROW_OVERHEAD,
    AsyncSpool,
    BatchTooLarge,
    DropCount,
    Spool,
    SpoolBatch,
    SpoolClosed,
    SpoolFull,
    SpoolLocked,
)
from tether.protocol.telemetry import Observation, encode_observations

WRITER = Path(__file__).with_name("spool_writer.py")
BIG = 1 << 30


def obs(tag: str, n: int, *, ts: float = 0.0) -> list[Observation]:
    return [Observation(f"{tag}/{i}", ts + i, i) for i in range(n)]


def flatten(batches: list[SpoolBatch]) -> list[tuple[str, int, Observation]]:
    return [(b.stream, b.first_seq + i, o) for b in batches for i, o in enumerate(b.observations)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool.open(tmp_path / "spool.db", max_bytes=BIG, max_age=1e9, chunk_size=4)
    yield s
    s.close()


# --- basics ---------------------------------------------------------------------------------------


def test_append_assigns_consecutive_sequences_per_stream(spool: Spool) -> None:
    assert spool.append("a", obs("x", 10), now=1.0) == (1, 10)
    assert spool.append("b", obs("y", 3), now=2.0) == (1, 3)
    assert spool.append("a", obs("z", 2), now=3.0) == (11, 12)
    assert spool.last_seqs() == {"a": 12, "b": 3}
    depth = spool.depth()
    assert (depth.observations, depth.streams, depth.oldest_ts) == (15, 2, 1.0)
    assert depth.bytes > 0


def test_peek_returns_oldest_first_and_changes_nothing(spool: Spool) -> None:
    spool.append("a", obs("x", 6), now=1.0)
    spool.append("b", obs("y", 2), now=2.0)
    spool.append("a", obs("z", 3), now=3.0)
    first = spool.peek(max_items=7)
    assert [(b.stream, b.first_seq, b.last_seq) for b in first] == [("a", 1, 6), ("b", 1, 1)]
    assert first[0].observations == obs("x", 6)
    everything = spool.peek(max_items=100)
    # Rows of one stream that follow each other come back as one batch.
    assert [(b.stream, b.first_seq, b.last_seq) for b in everything] == [("a", 1, 9), ("b", 1, 2)]
    assert everything[0].observations == obs("x", 6) + obs("z", 3)
    assert spool.peek(max_items=100) == everything
    assert spool.depth().observations == 11


def test_peek_after_skips_what_is_in_flight(spool: Spool) -> None:
    spool.append("a", obs("x", 10), now=1.0)
    spool.append("b", obs("y", 5), now=1.0)
    in_flight: dict[str, int] = {}
    seen: list[tuple[str, int, Observation]] = []
    for _ in range(20):  # bounded: 15 observations, 3 at a time
        batches = spool.peek(max_items=3, after=in_flight)
        if not batches:
            break
        for b in batches:
            in_flight[b.stream] = b.last_seq
        seen += flatten(batches)
    keys = [(s, q) for s, q, _ in seen]
    assert len(keys) == len(set(keys)) == 15
    one_stream = spool.peek("b", max_items=100, after={"b": 2})
    assert [(b.first_seq, b.last_seq) for b in one_stream] == [(3, 5)]
    assert one_stream[0].observations == obs("y", 5)[2:]


def test_ack_deletes_up_to_a_sequence_even_inside_a_row(spool: Spool) -> None:
    spool.append("a", obs("x", 10), now=1.0)  # rows of 4: 1-4, 5-8, 9-10
    spool.append("b", obs("y", 3), now=1.0)
    assert spool.ack("a", 6) == 6
    assert spool.ack("a", 6) == 0  # a repeated acknowledgement is harmless
    assert spool.ack("a", 3) == 0
    batches = spool.peek("a", max_items=100)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(7, 10)]
    assert batches[0].observations == obs("x", 10)[6:]
    assert spool.depth().observations == 7
    assert spool.ack("a", 1000) == 4
    assert spool.ack("nobody", 5) == 0
    assert spool.depth().streams == 1


def test_sequences_are_never_reused_after_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path, max_bytes=BIG, max_age=1e9) as s:
        s.append("a", obs("x", 5), now=1.0)
        assert s.ack("a", 5) == 5
        assert s.depth().observations == 0
    with Spool.open(path, max_bytes=BIG, max_age=1e9) as s:
        assert s.append("a", obs("x", 1), now=2.0) == (6, 6)


def test_bad_appends_are_refused(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        spool.append("a", [], now=1.0)
    with pytest.raises(ValueError, match="stream"):
        spool.append("", obs("x", 1), now=1.0)
    with Spool.open(tmp_path / "small.db", max_bytes=500, max_age=10) as small:
        with pytest.raises(BatchTooLarge):
            small.append("a", obs("x", 200), now=1.0)
        assert small.last_seqs() == {}
    assert spool.last_seqs() == {}


def test_a_second_opener_is_refused_and_closed_spools_say_so(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    first = Spool.open(path, max_bytes=BIG, max_age=10)
    with pytest.raises(SpoolLocked):
        Spool.open(path, max_bytes=BIG, max_age=10, lock_timeout=0.01)
    first.close()
    first.close()
    with pytest.raises(SpoolClosed):
        first.append("a", obs("x", 1), now=1.0)
    with pytest.raises(SpoolClosed):
        first.peek(max_items=1)
    Spool.open(path, max_bytes=BIG, max_age=10).close()


def test_append_many_is_one_transaction(spool: Spool) -> None:
    before = spool.transactions
    ranges = spool.append_many([("a", obs("x", 3)), ("b", obs("y", 2)), ("a", obs("z", 1))], now=1)
    assert ranges == [(1, 3), (1, 2), (4, 4)]
    assert spool.transactions == before + 1


def test_synchronous_normal_is_accepted_and_nonsense_refused(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "n.db", max_bytes=BIG, max_age=10, synchronous="normal") as s:
        assert s.append("a", obs("x", 1), now=1.0) == (1, 1)
    with pytest.raises(ValueError, match="synchronous"):
        Spool.open(tmp_path / "o.db", max_bytes=BIG, max_age=10, synchronous="off")  # type: ignore[arg-type]


# --- bounds and drop counts -----------------------------------------------------------------------


def _append_size(tmp_path: Path) -> int:
    with Spool.open(tmp_path / "probe.db", max_bytes=BIG, max_age=10, chunk_size=10) as probe:
        probe.append("a", obs("x", 10), now=0.0)
        return probe.depth().bytes


def test_byte_bound_drops_oldest_whole_rows_and_counts_them_across_restarts(
    tmp_path: Path,
) -> None:
    size = _append_size(tmp_path)
    path = tmp_path / "spool.db"
    bound = 5 * size + size // 2
    with Spool.open(path, max_bytes=bound, max_age=1e9, chunk_size=10) as s:
        for n in range(10):  # a, b, a, b...: appends 0-4 must go, 5-9 stay
            s.append("ab"[n % 2], obs("x", 10), now=float(n))
            assert s.depth().bytes <= bound
        assert s.depth().observations == 50
        kept = s.peek(max_items=100)
        assert {(b.stream, b.first_seq, b.last_seq) for b in kept} == {("a", 31, 50), ("b", 21, 50)}
        assert s.drop_report() == {"a": DropCount(30, 0, 30), "b": DropCount(20, 0, 20)}
    with Spool.open(path, max_bytes=bound, max_age=1e9, chunk_size=10) as s:
        report = s.drop_report()
        assert report == {"a": DropCount(30, 0, 30), "b": DropCount(20, 0, 20)}
        s.clear_drop_report("a", report["a"].total)
        assert s.drop_report() == {"b": DropCount(20, 0, 20)}
        s.append("b", obs("x", 10), now=20.0)  # drops the oldest row: b 21-30
        assert s.drop_report() == {"b": DropCount(30, 0, 30)}
        s.append("b", obs("x", 10), now=21.0)  # and then a 31-40
        assert s.drop_report() == {"a": DropCount(40, 30, 40), "b": DropCount(30, 0, 30)}
        assert s.drop_report()["a"].pending == 10
        s.clear_drop_report("a", 20)  # a late acknowledgement of an older report
        s.clear_drop_report("b", 999)  # never beyond what was counted
    with Spool.open(path, max_bytes=bound, max_age=1e9, chunk_size=10) as s:
        assert s.drop_report() == {"a": DropCount(40, 30, 40)}
        assert s.drop_report(include_reported=True)["b"] == DropCount(30, 30, 30)
        assert s.append("a", obs("x", 1), now=22.0) == (51, 51)


def test_age_bound_drops_and_counts_what_is_too_old(spool: Spool, tmp_path: Path) -> None:
    path = tmp_path / "aged.db"
    with Spool.open(path, max_bytes=BIG, max_age=100, chunk_size=4) as s:
        s.append("a", obs("x", 5), now=0.0)
        s.append("b", obs("y", 2), now=50.0)
        s.append("a", obs("z", 3), now=120.0)  # the append at 0 is now too old
        assert s.drop_report() == {"a": DropCount(5, 0, 5)}
        assert s.depth().oldest_ts == 50.0
        assert s.expire(now=149.0) == 0
        assert s.expire(now=151.0) == 2
        assert s.drop_report()["b"] == DropCount(2, 0, 2)
        assert [(b.stream, b.first_seq) for b in s.peek(max_items=10)] == [("a", 6)]


# --- model-based: random operations against an in-memory model ------------------------------------

STREAMS = ("a", "b", "c")
MAX_AGE = 100
MAX_BYTES = 1200  # a handful of rows: the byte bound bites often
CHUNK = 3


@dataclass
class ModelChunk:
    stream: str
    first: int
    observations: list[Observation]
    stored_at: int

    @property
    def last(self) -> int:
        return self.first + len(self.observations) - 1

    @property
    def nbytes(self) -> int:
        return len(encode_observations(self.observations)) + ROW_OVERHEAD


class SpoolMachine(RuleBasedStateMachine):
    """Appends, acks, peeks, bounds and reopening, compared step by step with a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tether-spool-model-"))
        self.spool = self._open()
        self.now = 0
        self.counter = 0
        self.chunks: list[ModelChunk] = []  # oldest first, as the rows are
        self.last: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.reported: dict[str, int] = {}
        self.top_dropped: dict[str, int] = {}

    def _open(self) -> Spool:
        return Spool.open(
            self.dir / "spool.db",
            max_bytes=MAX_BYTES,
            max_age=MAX_AGE,
            chunk_size=CHUNK,
            reserve_bytes=0,
        )

    def _model_drop(self, room_for: int) -> int:
        cutoff = self.now - MAX_AGE
        gone = [c for c in self.chunks if c.stored_at < cutoff]
        held = sum(c.nbytes for c in self.chunks) - sum(c.nbytes for c in gone)
        for c in self.chunks:
            if held + room_for <= MAX_BYTES:
                break
            if c not in gone:
                gone.append(c)
                held -= c.nbytes
        for c in gone:
            self.dropped[c.stream] = self.dropped.get(c.stream, 0) + len(c.observations)
            self.top_dropped[c.stream] = max(self.top_dropped.get(c.stream, 0), c.last)
        self.chunks = [c for c in self.chunks if c not in gone]
        return sum(len(c.observations) for c in gone)

    def _held(self) -> list[tuple[str, int, Observation]]:
        return [
            (c.stream, c.first + i, o) for c in self.chunks for i, o in enumerate(c.observations)
        ]

    @rule(stream=st.sampled_from(STREAMS), n=st.integers(1, 8), dt=st.integers(0, 60))
    def append(self, stream: str, n: int, dt: int) -> None:
        self.now += dt
        self.counter += 1
        batch = [
            Observation(f"p{self.counter}/{i}", float(self.now), self.counter) for i in range(n)
        ]
        first = self.last.get(stream, 0) + 1
        parts = [
            ModelChunk(stream, first + i, batch[i : i + CHUNK], self.now)
            for i in range(0, n, CHUNK)
        ]
        assert self.spool.append(stream, batch, now=float(self.now)) == (first, first + n - 1)
        self._model_drop(room_for=sum(c.nbytes for c in parts))
        self.chunks += parts
        self.last[stream] = first + n - 1

    @rule(stream=st.sampled_from(STREAMS), data=st.data())
    def ack(self, stream: str, data: st.DataObject) -> None:
        up_to = data.draw(st.integers(0, self.last.get(stream, 0) + 2))
        deleted = 0
        kept: list[ModelChunk] = []
        for c in self.chunks:
            if c.stream != stream or c.first > up_to:
                kept.append(c)
            elif c.last <= up_to:
                deleted += len(c.observations)
            else:  # the row straddling the acknowledged number keeps its tail
                cut = up_to - c.first + 1
                kept.append(ModelChunk(c.stream, up_to + 1, c.observations[cut:], c.stored_at))
                deleted += cut
        assert self.spool.ack(stream, up_to) == deleted
        self.chunks = kept

    @rule(dt=st.integers(0, 80))
    def expire(self, dt: int) -> None:
        self.now += dt
        assert self.spool.expire(now=float(self.now)) == self._model_drop(room_for=0)

    @rule(
        which=st.sampled_from((None, *STREAMS)),
        max_items=st.integers(1, 20),
        with_after=st.booleans(),
        data=st.data(),
    )
    def peek(
        self, which: str | None, max_items: int, with_after: bool, data: st.DataObject
    ) -> None:
        after = (
            {s: data.draw(st.integers(0, self.last.get(s, 0))) for s in STREAMS}
            if with_after
            else None
        )
        floor = after or {}
        expected = [
            (s, q, o) for s, q, o in self._held() if which in (None, s) and q > floor.get(s, 0)
        ][:max_items]
        batches = self.spool.peek(which, max_items=max_items, after=after)
        got = flatten(batches)
        assert len(got) == len(expected)
        assert {(s, q): o for s, q, o in got} == {(s, q): o for s, q, o in expected}
        for b in batches:
            assert b.last_seq - b.first_seq + 1 == len(b.observations)

    @rule(stream=st.sampled_from(STREAMS), data=st.data())
    def clear_drops(self, stream: str, data: st.DataObject) -> None:
        total = self.dropped.get(stream, 0)
        upto = data.draw(st.integers(0, total + 3))
        self.spool.clear_drop_report(stream, upto)
        if stream in self.last:
            self.reported[stream] = max(self.reported.get(stream, 0), min(upto, total))

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = self._open()

    @invariant()
    def agrees_with_model(self) -> None:
        depth = self.spool.depth()
        assert depth.observations == sum(len(c.observations) for c in self.chunks)
        assert depth.bytes == sum(c.nbytes for c in self.chunks) <= MAX_BYTES
        assert depth.streams == len({c.stream for c in self.chunks})
        assert depth.oldest_ts == min((c.stored_at for c in self.chunks), default=None)
        assert self.spool.last_seqs() == self.last
        expected = {
            s: DropCount(n, self.reported.get(s, 0), self.top_dropped[s])
            for s, n in self.dropped.items()
        }
        assert self.spool.drop_report(include_reported=True) == expected

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir)


TestSpoolModel = SpoolMachine.TestCase
TestSpoolModel.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- kill -9 --------------------------------------------------------------------------------------


def _read_lines(proc: subprocess.Popen[bytes], want: int, timeout: float) -> bytes:
    """Read the child's stdout until it printed ``want`` lines (bounded by ``timeout``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < want:
        left = deadline - time.monotonic()
        if left <= 0:
            lines = data.count(b"\n")
            raise AssertionError(f"writer printed {lines} of {want} lines in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"writer exited early: {stderr}")
            data += chunk
    return data


def _check_survivors(
    path: Path,
    reported: list[tuple[int, str, int, int]],
    acked: dict[str, int],
    ever: dict[tuple[str, int], str],
) -> None:
    with Spool.open(path, max_bytes=BIG, max_age=1e9) as s:
        stored = {(st_, q): o for st_, q, o in flatten(s.peek(max_items=10**7))}
        last_seqs = s.last_seqs()
    # every append the writer saw return is there, intact
    for batch_id, stream, first, last in reported:
        for q in range(first, last + 1):
            if q <= acked.get(stream, 0):
                continue
            o = stored[(stream, q)]
            assert (o.point_id, o.ts, o.value) == (f"batch-{batch_id}", q - first, last - first + 1)
    # no torn batch: each batch present is present whole, in consecutive sequence numbers
    batches: dict[str, list[tuple[str, int, Observation]]] = {}
    for (stream, q), o in stored.items():
        batches.setdefault(o.point_id, []).append((stream, q, o))
    for point_id, items in batches.items():
        size = items[0][2].value
        assert isinstance(size, int)
        if len(items) != size:  # the head of a batch may only be missing if it was acked
            assert items[0][0] == "alpha"
            assert min(q for _, q, _ in items) == acked["alpha"] + 1, point_id
        assert len({s for s, _, _ in items}) == 1
        seqs = sorted(q for _, q, _ in items)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # a sequence number, once used, always means the same observation
    for (stream, q), o in stored.items():
        assert ever.setdefault((stream, q), o.point_id) == o.point_id
        assert q <= last_seqs[stream]


def test_kill_9_at_random_instants_loses_no_reported_append(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rng = random.Random(20240611)
    reported: list[tuple[int, str, int, int]] = []
    acked: dict[str, int] = {}
    ever: dict[tuple[str, int], str] = {}
    for run in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(run), str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out = _read_lines(proc, rng.randint(1, 60), timeout=60)
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        complete = (out + rest).rsplit(b"\n", 1)[0].decode().splitlines()
        fresh = [(int(b), s, int(f), int(last)) for b, s, f, last in map(str.split, complete)]
        assert fresh, "the writer reported nothing before it was killed"
        for _, stream, first, _ in fresh[:2]:  # nothing acked or stored before is ever reused
            assert all(q < first for (s, q) in ever if s == stream)
        reported += fresh
        _check_survivors(path, reported, acked, ever)
        # acknowledge part of one stream, so the next run must not reuse freed numbers either
        alpha = [r for r in reported if r[1] == "alpha"]
        up_to = alpha[len(alpha) // 2][3]
        with Spool.open(path, max_bytes=BIG, max_age=1e9) as s:
            s.ack("alpha", up_to)
        acked["alpha"] = max(acked.get("alpha", 0), up_to)


# --- a full disk ----------------------------------------------------------------------------------


def fill_until_full(
    append: Callable[[int], tuple[int, int]],
) -> tuple[list[tuple[int, int]], SpoolFull]:
    """Append until the disk is full (bounded); return what was stored and the error."""
    ranges: list[tuple[int, int]] = []
    for n in range(10_000):  # a couple of MiB hold far fewer
        try:
            ranges.append(append(n))
        except SpoolFull as exc:
            return ranges, exc
    raise AssertionError("the disk never filled up")


def test_full_disk_raises_spool_full_keeps_what_was_stored_and_recovers() -> None:
    with mounted_tmpfs("2m") as where:
        path = where / "spool.db"
        batch = obs("point", 200)
        s = Spool.open(
            path,
            max_bytes=BIG,
            max_age=1e9,
            reserve_bytes=256 * 1024,
            checkpoint_pages=64,
            disk_headroom=None,  # no free-space bound: the spool itself fills the disk
        )
        try:
            assert s.reserve_held
            ranges, error = fill_until_full(lambda n: s.append("a", batch, now=1.0))
            assert "disk is full" in str(error)
            assert ranges
            assert not s.reserve_held  # given back so that acknowledgements can still write
            assert s.last_seqs() == {"a": ranges[-1][1]}
            assert s.depth().observations == 200 * len(ranges)
            # acknowledging frees room inside the file: appends work again
            assert s.ack("a", ranges[len(ranges) // 2][1]) == 200 * (len(ranges) // 2 + 1)
            after = s.append("a", batch, now=2.0)
            assert after[0] == ranges[-1][1] + 1
        finally:
            s.close()
        with Spool.open(path, max_bytes=BIG, max_age=1e9, reserve_bytes=0) as again:
            kept = flatten(again.peek(max_items=10**6))
            expected_first = ranges[len(ranges) // 2][1] + 1
            assert [q for _, q, _ in kept] == list(range(expected_first, after[1] + 1))
            assert [o for _, _, o in kept[:200]] == batch


def test_full_disk_without_reserve_still_raises_and_loses_nothing() -> None:
    with mounted_tmpfs("1m") as where:
        path = where / "spool.db"
        with Spool.open(path, max_bytes=BIG, max_age=1e9, reserve_bytes=0, disk_headroom=None) as s:
            ranges, _ = fill_until_full(lambda n: s.append("a", obs(f"b{n}", 100), now=1.0))
            with pytest.raises(SpoolFull):
                s.append("a", obs("late", 100), now=1.0)
        with Spool.open(path, max_bytes=BIG, max_age=1e9, reserve_bytes=0) as s:
            kept = flatten(s.peek(max_items=10**6))
        assert len(kept) == 100 * len(ranges)
        assert [q for _, q, _ in kept] == list(range(1, ranges[-1][1] + 1))
        assert kept[-1][2].point_id == f"b{len(ranges) - 1}/99"


# --- the asyncio face -----------------------------------------------------------------------------


async def test_async_spool_folds_concurrent_appends_into_one_transaction(tmp_path: Path) -> None:
    spool = await AsyncSpool.open(tmp_path / "spool.db", max_bytes=BIG, max_age=1e9)
    try:
        gate = threading.Event()
        # Hold the spool's thread so that every append below is waiting when it wakes.
        blocked = spool._executor.submit(gate.wait, 30)
        before = spool.transactions
        tasks = [
            asyncio.ensure_future(spool.append("ab"[n % 2], obs(f"t{n}", 5), now=1.0))
            for n in range(40)
        ]
        bad = asyncio.ensure_future(spool.append("a", [], now=1.0))
        await asyncio.sleep(0)
        gate.set()
        ranges = await asyncio.gather(*tasks)
        with pytest.raises(ValueError, match="at least one"):
            await bad
        assert blocked.result() is True
        assert spool.transactions == before + 1
        for stream in "ab":
            mine = sorted(r for n, r in enumerate(ranges) if "ab"[n % 2] == stream)
            assert mine == [(1 + 5 * i, 5 + 5 * i) for i in range(20)]
        batches = await spool.peek("b", max_items=1000)
        assert [o.point_id for o in batches[0].observations][:5] == [f"t1/{i}" for i in range(5)]
        assert await spool.ack("b", 100) == 100
        assert (await spool.depth()).observations == 100
        assert await spool.last_seqs() == {"a": 100, "b": 100}
        assert await spool.drop_report() == {}
    finally:
        await spool.close()
    with pytest.raises(SpoolClosed):
        await spool.append("a", obs("x", 1))


async def test_async_spool_dates_appends_with_its_clock_and_expires(tmp_path: Path) -> None:
    now = [1000.0]
    spool = await AsyncSpool.open(
        tmp_path / "spool.db", max_bytes=BIG, max_age=60, clock=lambda: now[0]
    )
    try:
        await spool.append("a", obs("x", 3))
        assert (await spool.depth()).oldest_ts == 1000.0
        now[0] = 1061.0
        assert await spool.expire() == 3
        report = await spool.drop_report()
        assert report == {"a": DropCount(3, 0, 3)}
        await spool.clear_drop_report("a", 3)
        assert await spool.drop_report() == {}
    finally:
        await spool.close()


async def test_async_spool_reports_a_full_disk_to_the_appender() -> None:
    with mounted_tmpfs("1m") as where:
        spool = await AsyncSpool.open(
            where / "spool.db", max_bytes=BIG, max_age=1e9, reserve_bytes=0, disk_headroom=None
        )
        stored: list[tuple[int, int]] = []
        try:
            for n in range(10_000):  # bounded: 1 MiB holds far fewer
                try:
                    stored.append(await spool.append("a", obs(f"b{n}", 100), now=1.0))
                except SpoolFull:
                    break
            else:
                pytest.fail("the disk never filled up")
            assert stored
        finally:
            await spool.close()
        with Spool.open(where / "spool.db", max_bytes=BIG, max_age=1e9, reserve_bytes=0) as s:
            assert s.depth().observations == 100 * len(stored)
