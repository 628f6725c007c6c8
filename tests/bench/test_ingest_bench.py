"""The ingest benchmark, run small: both ways of delivering reach the store exactly once (the
benchmark checks it and fails otherwise) and every figure it records is there and sane."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from bench.ingest import MODES, Options, report, run

pytestmark = [pytest.mark.slow]


def _children() -> set[int]:
    """Our live child processes (multiprocessing's resource tracker aside)."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and not any(
                "resource_tracker" in part for part in child.cmdline()
            ):
                out.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


async def test_a_small_ingest_benchmark_run(tmp_path: Path) -> None:
    options = Options(agents=2, observations=3000, upload_batch=500, rounds=2, directory=tmp_path)
    before = _children()
    outcome = await run(options)
    assert _children() <= before, "the cloud and agent processes are gone"
    assert outcome.database == "sqlite"
    assert outcome.rows == 6000
    assert [r.mode for r in outcome.runs] == [*MODES, *MODES]  # two rounds
    for r in outcome.runs:
        assert r.rate > 0
        assert 0 < r.window_seconds <= r.total_seconds
        assert r.cloud_cpu > 0
    # Before each round and once after.
    assert all(len(rates) == 3 and min(rates) > 0 for rates in outcome.reference_rates.values())

    summary = report(outcome, options)
    assert summary["database"] == "sqlite"
    assert summary["reference_observations_per_s"] == outcome.reference_rate
    assert set(summary["runs"]) == set(MODES)
    for mode, figures in summary["runs"].items():
        rates = sorted(r.rate for r in outcome.runs if r.mode == mode)
        assert figures["runs_observations_per_s"] == rates
        assert figures["observations_per_s"] == rates[0]  # the lower middle of two
        assert figures["ratio"] == rates[0] / outcome.reference_rate
        assert figures["runs_ratios"] == [r / outcome.reference_rate for r in rates]
        assert set(figures["target_met"]) == {"issue", "design"}
    assert list(tmp_path.iterdir()) == [], "the run's files are removed"
