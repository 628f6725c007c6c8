"""The tier benchmark runs end to end (a real cloud process, three pinned agents) and records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import tiers

pytestmark = [pytest.mark.slow]


def test_percentile_is_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert tiers.percentile(samples, 50) == 50.0
    assert tiers.percentile(samples, 99) == 99.0
    assert tiers.percentile(samples, 100) == 100.0
    assert tiers.percentile([7.0], 99) == 7.0
    assert tiers.percentile([3.0, 1.0, 2.0], 0) == 1.0


def test_summary_states_each_tier_as_a_ratio_to_the_websocket() -> None:
    figures = tiers.summarise(
        {"ws": [0.010, 0.020, 0.030], "long-poll": [0.020, 0.040, 0.060], "poll": [0.5, 1.0, 1.5]}
    )
    assert figures["ws"]["p50_ms"] == pytest.approx(20.0)
    assert figures["ws"]["ratio_p50"] == pytest.approx(1.0)
    assert figures["long-poll"]["ratio_p50"] == pytest.approx(2.0)
    assert figures["long-poll"]["ratio_p99"] == pytest.approx(2.0)
    assert figures["poll"]["p50_ms"] == pytest.approx(1000.0)
    assert figures["poll"]["ratio_p99"] == pytest.approx(50.0)
    rows = tiers.table(figures).splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["ws", "long-poll", "poll"]
    assert rows[3].split()[-2:] == ["50.00", "50.00"]


def test_bench_measures_every_tier_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tiers.main(
        [
            "--commands",
            "3",
            "--poll-interval",
            "1",
            "--dir",
            str(tmp_path),
            "--results",
            str(tmp_path / "results"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    recorded = json.loads((tmp_path / "results" / "tiers.json").read_text())
    assert recorded["benchmark"] == "tiers"
    assert recorded["machine"]["cores"] >= 1
    assert recorded["commands_per_tier"] == 3
    assert recorded["reference"] == "ws"
    figures = recorded["figures"]
    assert list(figures) == ["ws", "long-poll", "poll"]
    for tier, figure in figures.items():
        assert figure["commands"] == 3
        assert len(figure["samples_ms"]) == 3
        assert 0 < figure["p50_ms"] <= figure["p99_ms"] <= figure["max_ms"]
        assert f"\n{tier} " in out
    assert figures["ws"]["ratio_p50"] == pytest.approx(1.0)
    assert figures["poll"]["ratio_p50"] == pytest.approx(
        figures["poll"]["p50_ms"] / figures["ws"]["p50_ms"]
    )
    assert "recorded in" in out
    assert list(tmp_path.iterdir()) == [tmp_path / "results"]  # the cloud's state is gone
