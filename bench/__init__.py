"""Benchmarks: each prints its figure next to a reference measured in the same run, as a ratio.

Run them with ``python -m bench [names...]`` (``make bench``). Each records its figures and the
machine they were measured on in ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop

_T = TypeVar("_T")

RESULTS = Path(__file__).resolve().parent / "results"


def log_tail(path: Path, lines: int = 15) -> str:
    """The last *lines* of a server's log, to say why it failed ("" if there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--dir`` (where the work directory goes), ``--results`` and ``--no-record``."""
    parser.add_argument("--dir", type=Path, default=None, help="where the work directory goes")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"the directory {name}.json is written to"
    )
    parser.add_argument("--no-record", action="store_true", help="record nothing")


@contextmanager
def work_directory(prefix: str, parent: Path | None) -> Iterator[Path]:
    """A new directory for a run's servers and data, removed afterwards whatever happens."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_async(main: Coroutine[Any, Any, _T], name: str = "benchmark") -> _T:
    """Run a benchmark's main coroutine on uvloop, as ``tether`` runs, so that SIGTERM stops
    it as Ctrl-C does: the coroutine is cancelled, its clean-up runs (servers and load
    processes stopped by PID, work directories removed), then this exits with a message."""

    async def guarded() -> _T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return uvloop.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit(f"{name}: stopped by SIGTERM (what it started is stopped)") from None


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, Python and SQLite versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def record(name: str, payload: dict[str, Any], *, results: Path = RESULTS) -> Path:
    """Write ``payload`` with the machine and the time to ``results/<name>.json``."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    document = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def ratio_line(label: str, ours: float, reference: float, unit: str, ref_label: str) -> str:
    """One printed line: our figure, the reference's, and their ratio."""
    ratio = ours / reference if reference else float("inf")
    return (
        f"{label:<44} {ours:>12,.0f} {unit}   {ref_label}: {reference:>12,.0f} {unit}"
        f"   ratio {ratio:.2f}"
    )
