"""The link scale benchmark, run small: a cloud of two worker processes on PostgreSQL holds every
link dialled from two loopback source addresses, pushes commands across its workers, and every
process the bench started is gone afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bench.test_link_capacity import _children

from bench import link_capacity as lc
from bench import link_scale as ls

pytestmark = [pytest.mark.slow]

LINKS = 240


def test_config_refuses_what_the_machine_cannot_hold() -> None:
    with pytest.raises(lc.BenchError, match="more than 1 cloud workers"):
        ls.ScaleConfig(links=20_000, cloud_workers=1).check()
    with pytest.raises(lc.BenchError, match="source addresses"):
        ls.ScaleConfig(links=60_000, cloud_workers=4, source_addresses=2).check()
    with pytest.raises(lc.BenchError, match="heartbeat"):
        ls.ScaleConfig(links=10, heartbeat=0.5).check()
    ls.ScaleConfig().check()  # the default run: 100,000 links over 6 workers, 8 addresses


def test_load_processes_dial_from_every_source_address_in_turn() -> None:
    config = ls.ScaleConfig(links=10, links_per_process=2, source_addresses=3)
    gateways = [(f"gw-{i}", f"/creds/gw-{i}.pem") for i in range(10)]
    specs = ls._specs(config, 4433, Path("/creds/ca.pem"), gateways)
    assert [s.local_host for s in specs] == [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.2",
        "127.0.0.3",
    ]
    # Every gateway dials from exactly one load process.
    assert sorted(link for s in specs for link in s.links) == sorted(gateways)


def test_workers_share_the_port_and_hold_every_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _children()
    config = ls.ScaleConfig(
        links=LINKS,
        cloud_workers=2,
        heartbeat=1.0,
        idle_window=2.0,
        samples=12,
        links_per_process=LINKS // 2,  # two load processes
        source_addresses=2,
        concurrency=20,
        results=tmp_path / "results",
    )
    result = ls.run(config)

    recorded = json.loads((tmp_path / "results" / "link_scale.json").read_text())
    assert recorded["benchmark"] == "link_scale"
    assert recorded["figures"] == result["figures"]
    assert recorded["parameters"]["load_processes"] == 2
    assert recorded["parameters"]["cloud_workers"] == 2
    figures = recorded["figures"]
    assert figures["connected"] == LINKS, figures["connect_errors"]
    assert figures["failed"] == 0
    assert figures["open_after_idle"] == LINKS, figures["lost"]
    assert figures["open_at_end"] == LINKS, figures["lost"]
    assert figures["lost"] == {}
    assert recorded["met"] is True
    # Both workers hold links: the kernel spread the connections over the shared port. (A
    # worker's descriptor count may also have grown by a store connection, never shrunk.)
    per_worker = figures["links_per_worker"]
    assert len(per_worker) == 2
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(per_worker) >= LINKS
    for key in ("rss_per_link_kib", "handshake_cpu_ms", "idle_cpu_percent", "latency_p50_ms"):
        assert figures[key] > 0, key
    # Each of the commands reached its gateway, whichever worker took the POST.
    assert figures["latency_samples"] == 12
    assert figures["latency_p99_ms"] >= figures["latency_p50_ms"]
    out = capsys.readouterr().out
    assert f"{LINKS:,} of {LINKS:,} (0 failed)" in out
    verdict = next(line for line in out.splitlines() if line.startswith("target: every link"))
    assert verdict.split()[-2:] == ["held", "met"], verdict
    assert _children() <= before
