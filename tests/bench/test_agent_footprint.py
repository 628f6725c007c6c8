"""The agent footprint benchmark, run small: a real cloud and a real agent process, every figure
measured, nothing dropped, and no process it started left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bench.test_link_capacity import _children

from bench import agent_footprint as af
from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig

pytestmark = [pytest.mark.slow]

RATE = 200.0


@pytest.mark.parametrize("rate", [20.0, 40.0, 200.0, 660.0, 670.0, 1000.0, 1930.0, 5000.0])
def test_building_makes_the_rate_with_one_sample_per_point(rate: float) -> None:
    config = af.building_config(rate)
    assert af.generated_rate(config) == pytest.approx(rate)
    model = BuildingModel(SimulatedBuildingConfig(**config))
    assert model.samples_per_point() == 1
    assert config["poll_interval"] == af.POLL_INTERVAL


def test_a_rate_too_small_for_the_polling_is_refused() -> None:
    with pytest.raises(ValueError, match="too few per poll"):
        af.building_config(10.0)
    with pytest.raises(ValueError, match="too few per poll"):
        af.building_config(30.0)  # 3 points: no building has exactly 3
    with pytest.raises(SystemExit):
        af.main(["--rate", "1005", "--no-record"])  # not whole values per 100 ms poll


def test_the_agent_runs_without_proxies_or_tether_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("TETHER_DATABASE_URL", "sqlite://")
    monkeypatch.setenv("KEEP_ME", "1")
    env = af.agent_env()
    assert env["KEEP_ME"] == "1"
    assert not {"HTTPS_PROXY", "http_proxy", "TETHER_DATABASE_URL"} & set(env)


def test_bench_measures_the_agent_idle_and_forwarding_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _children()
    code = af.main(
        [
            "--idle-window",
            "2",
            "--forward-window",
            "3",
            "--rate",
            str(RATE),
            "--settle",
            "1",
            "--dir",
            str(tmp_path),
            "--results",
            str(tmp_path / "results"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert _children() <= before  # the cloud and the agent are gone
    assert list(tmp_path.iterdir()) == [tmp_path / "results"]  # so is the work dir

    recorded = json.loads((tmp_path / "results" / "agent_footprint.json").read_text())
    assert recorded["benchmark"] == "agent_footprint"
    assert recorded["machine"]["cores"] >= 1
    assert recorded["parameters"]["rate_per_s"] == RATE
    assert recorded["parameters"]["poll_interval_s"] == af.POLL_INTERVAL
    assert recorded["agent_version"]
    assert "not measured in this run" in recorded["reference"]["note"]
    figures = recorded["figures"]
    idle, fwd, totals = figures["idle"], figures["forwarding"], figures["totals"]
    assert idle["window_s"] >= 2.0
    assert fwd["window_s"] >= 3.0
    assert 0 < idle["rss_mib"] < 4096
    assert 0 < fwd["rss_mib"] < 4096
    assert 0 < idle["uss_mib"] <= idle["rss_mib"]
    assert 0 < fwd["uss_mib"] <= fwd["rss_mib"]
    assert idle["cpu_percent_of_core"] >= 0
    assert fwd["cpu_percent_of_core"] > 0
    assert figures["generated_per_s"] == pytest.approx(RATE)
    # The rate over a window of seconds depends on where the uploads fall in it (a loaded
    # machine bunches them): the test checks the figure is what was counted, and that every
    # value reached the cloud once; the bench run itself judges the rate.
    assert fwd["forwarded_per_s"] == pytest.approx(fwd["accepted_in_window"] / fwd["window_s"])
    assert totals["duplicates"] == 0
    assert totals["gaps"] == 0
    assert totals["dropped_on_gateway"] == 0
    assert totals["accepted"] >= fwd["accepted_in_window"] > 0
    assert recorded["target_met"]["none_dropped"] is True
    assert recorded["reference"]["forwarding_cpu_ratio"] == pytest.approx(
        fwd["cpu_percent_of_core"] / af.TB_CPU_PERCENT
    )

    assert "RSS idle" in out
    assert "CPU idle" in out
    assert "DESIGN.md figure, not measured in this run" in out
    assert "dropped on the gateway" in out
    assert "recorded in" in out


def test_a_failing_phase_still_stops_the_agent_and_the_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def never_flows(api: object, agent: af.AgentProcess) -> None:
        assert agent.process.poll() is None  # the agent runs when the phase fails
        raise RuntimeError("no value reached the cloud")

    monkeypatch.setattr(af, "wait_flowing", never_flows)
    before = _children()
    with pytest.raises(RuntimeError, match="no value reached the cloud"):
        af.main(["--idle-window", "0.5", "--settle", "0", "--dir", str(tmp_path), "--no-record"])
    assert _children() <= before
    assert list(tmp_path.iterdir()) == []
    assert "agent.log (last lines)" in capsys.readouterr().err
