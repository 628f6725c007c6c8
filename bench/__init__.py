"""Benchmarks: each prints its figure next to a reference measured in the same run, as a ratio.

Run them with ``python -m bench [names...]`` (``make bench``). Each records its figures and the
machine they were measured on in ``bench/results/<name>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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
