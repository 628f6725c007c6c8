"""Spool benchmark: observations per second durably spooled, next to raw SQLite inserts.

Ours: ``Spool.append`` of one poll's worth of observations (the simulated building's points),
WAL with ``synchronous=FULL``: every append is fsynced before it returns. Reference, in the same
run on the same disk: stdlib sqlite3 ``executemany`` of the same observations into a plain
table (point_id, ts, value, quality), same journal and synchronous setting, one transaction per
batch. Runs alternate (ours, reference, ours...) and the median of each is reported.

Also measured: ``AsyncSpool`` with several connectors submitting small batches concurrently
(group commit folds them into shared transactions), against the reference at that batch size.

Target (DESIGN.md): at least 50,000 observations/s durably spooled.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import ratio_line, record
from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig
from tether.gateway.spool import AsyncSpool, Spool
from tether.protocol.telemetry import Observation

TARGET = 50_000.0
BIG = 1 << 40


def workload(points_per_batch: int) -> list[list[Observation]]:
    """Consecutive polls of a simulated building, cut into batches of the given size."""
    model = BuildingModel(
        SimulatedBuildingConfig(seed=1, air_handlers=8, vavs_per_ahu=12, meters=4, zone_sensors=40)
    )
    flat: list[Observation] = []
    t = 1_718_000_000.0
    while len(flat) < max(points_per_batch * 64, 20_000):
        flat += model.observations_at(t)
        t += 1.0
    return [
        flat[i : i + points_per_batch]
        for i in range(0, len(flat) - points_per_batch + 1, points_per_batch)
    ]


def timed(seconds: float, step: Callable[[], int]) -> float:
    """Run ``step`` (returning observations stored) for about ``seconds``; observations/s."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        done += step()
    return done / (time.perf_counter() - start)


def ours(directory: Path, batches: list[list[Observation]], seconds: float, sync: str) -> float:
    path = directory / "spool.db"
    spool = Spool.open(path, max_bytes=BIG, max_age=1e9, synchronous=sync)  # type: ignore[arg-type]
    n = 0

    def step() -> int:
        nonlocal n
        batch = batches[n % len(batches)]
        n += 1
        spool.append("bench", batch, now=time.time())
        return len(batch)

    try:
        return timed(seconds, step)
    finally:
        spool.close()
        for suffix in ("", "-wal", "-reserve"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def reference(
    directory: Path, batches: list[list[Observation]], seconds: float, sync: str
) -> float:
    path = directory / "raw.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync.upper()}")
    db.execute("CREATE TABLE obs (point_id TEXT NOT NULL, ts REAL NOT NULL, value, quality TEXT)")
    rows = [[(o.point_id, o.ts, o.value, o.quality) for o in batch] for batch in batches]
    n = 0

    def step() -> int:
        nonlocal n
        batch = rows[n % len(rows)]
        n += 1
        db.execute("BEGIN")
        db.executemany("INSERT INTO obs VALUES (?, ?, ?, ?)", batch)
        db.execute("COMMIT")
        return len(batch)

    try:
        return timed(seconds, step)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


async def ours_concurrent(
    directory: Path, batches: list[list[Observation]], seconds: float, writers: int
) -> tuple[float, float]:
    """Observations/s and appends per transaction with ``writers`` concurrent submitters."""
    path = directory / "async.db"
    spool = await AsyncSpool.open(path, max_bytes=BIG, max_age=1e9)
    done = 0
    appends = 0
    deadline = time.perf_counter() + seconds

    async def writer(k: int) -> None:
        nonlocal done, appends
        n = k
        while time.perf_counter() < deadline:
            batch = batches[n % len(batches)]
            n += writers
            await spool.append(f"connector-{k}", batch)
            done += len(batch)
            appends += 1

    start = time.perf_counter()
    before = spool.transactions
    try:
        await asyncio.gather(*(writer(k) for k in range(writers)))
        elapsed = time.perf_counter() - start
        transactions = spool.transactions - before
    finally:
        await spool.close()
        for suffix in ("", "-wal", "-reserve"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return done / elapsed, appends / max(transactions, 1)


def median_pair(
    rounds: int, a: Callable[[], float], b: Callable[[], float]
) -> tuple[float, float, list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys), xs, ys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spool", description=__doc__)
    parser.add_argument("--batch", type=int, default=1000, help="observations per append")
    parser.add_argument("--small-batch", type=int, default=100, help="per concurrent submit")
    parser.add_argument("--writers", type=int, default=8, help="concurrent submitters")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"target_observations_per_s": TARGET, "figures": {}}
    with tempfile.TemporaryDirectory(prefix="tether-bench-spool-", dir=args.dir) as tmp:
        where = Path(tmp)
        results["directory"] = str(where)
        big = workload(args.batch)
        small = workload(args.small_batch)
        print(
            f"observations: a simulated building's points, {args.batch} per append;"
            f" {args.seconds}s per measurement, median of {args.rounds} alternating rounds"
        )
        ok = True
        for sync in ("full", "normal"):
            spooled, raw, xs, ys = median_pair(
                args.rounds,
                functools.partial(ours, where, big, args.seconds, sync),
                functools.partial(reference, where, big, args.seconds, sync),
            )
            label = f"spool append, {args.batch}/append, sync={sync}"
            print(ratio_line(label, spooled, raw, "obs/s", "raw executemany"))
            results["figures"][f"append_{sync}"] = {
                "batch": args.batch,
                "synchronous": sync,
                "observations_per_s": spooled,
                "reference_observations_per_s": raw,
                "ratio": spooled / raw,
                "rounds": xs,
                "reference_rounds": ys,
            }
            if sync == "full":
                ok = spooled >= TARGET
                print(
                    f"{'durable (sync=full) vs target':<44} {spooled:>12,.0f} obs/s   "
                    f"target: {TARGET:>12,.0f} obs/s   {'MET' if ok else 'MISSED'}"
                )
        grouped: list[float] = []
        per_txn: list[float] = []
        refs: list[float] = []
        for _ in range(args.rounds):
            rate, fold = asyncio.run(ours_concurrent(where, small, args.seconds, args.writers))
            grouped.append(rate)
            per_txn.append(fold)
            refs.append(reference(where, small, args.seconds, "full"))
        rate, raw = statistics.median(grouped), statistics.median(refs)
        label = f"AsyncSpool, {args.writers} writers x {args.small_batch}/append"
        print(ratio_line(label, rate, raw, "obs/s", "raw executemany"))
        print(
            f"{'  appends folded per transaction (median)':<44} {statistics.median(per_txn):>12.1f}"
        )
        results["figures"]["async_group_commit"] = {
            "writers": args.writers,
            "batch": args.small_batch,
            "synchronous": "full",
            "observations_per_s": rate,
            "reference_observations_per_s": raw,
            "ratio": rate / raw,
            "appends_per_transaction": statistics.median(per_txn),
            "rounds": grouped,
            "reference_rounds": refs,
        }
    results["target_met"] = ok
    if not args.no_record:
        path = record("spool", results)
        print(f"recorded in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
