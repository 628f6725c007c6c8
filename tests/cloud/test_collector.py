"""The cloud's process tunes the garbage collector once it serves; a cloud run inside another
process (tests, embedding) leaves that process's collector alone."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.cloudproc import running_cloud

from tether.cloud.app import GC_YOUNG_THRESHOLD


def test_tuning_freezes_start_up_objects_and_widens_the_young_generation() -> None:
    script = textwrap.dedent(
        """
        import gc, json
        from tether.cloud.app import tune_collector
        before = gc.get_threshold()
        tune_collector()
        print(json.dumps({"before": before, "after": gc.get_threshold(),
                          "frozen": gc.get_freeze_count()}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    figures = json.loads(out)
    assert figures["after"][0] == GC_YOUNG_THRESHOLD > figures["before"][0]
    assert figures["after"][1:] == figures["before"][1:]  # older generations as CPython sets them
    assert figures["frozen"] > 10_000  # the modules and objects start-up made


async def test_an_embedded_cloud_leaves_the_collector_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with running_cloud(tmp_path / "cloud") as cloud:
        assert cloud.url.startswith("https://")
        assert gc.get_threshold() == before
