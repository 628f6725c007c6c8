"""The link capacity benchmark, run small: every link connects, every figure is measured, and every
process it started is gone afterwards (also when a phase fails)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import psutil
import pytest

from bench import link_capacity as lc

pytestmark = [pytest.mark.slow]

LINKS = 100


def _children() -> set[int]:
    """Our live child processes, but multiprocessing's resource tracker (it lives as long as we
    do, started by the first spawned process)."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE and not any(
                "resource_tracker" in part for part in child.cmdline()
            ):
                out.add(child.pid)
    return out


def test_percentile_is_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 201)]
    assert lc.percentile(samples, 50) == 100.0
    assert lc.percentile(samples, 99) == 198.0
    assert lc.percentile([5.0], 99) == 5.0


def test_server_timing_durations_are_read_in_seconds() -> None:
    header = "auth;dur=0.040, queue;desc=commit;dur=1.5,push;dur=bad, total;dur=2"
    assert lc.server_timing(header) == {"auth": 0.00004, "queue": 0.0015, "total": 0.002}
    assert lc.server_timing("") == {}


def test_receive_timeout_is_never_zero() -> None:
    # aiohttp takes receive(timeout=0) for "no timeout": a deadline just passed must still wake.
    assert lc.until(0.0) == lc.MIN_WAIT
    assert lc.until(float("-inf")) == lc.MIN_WAIT


def test_mqtt_remaining_length_round_trips() -> None:
    async def decode(packet: bytes) -> tuple[int, int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(packet)
        return await lc.mqtt_read(reader)

    for size in (0, 1, 127, 128, 16_383, 16_384, 300_000):
        body = bytes(size)
        kind, flags, decoded = asyncio.run(decode(lc._mqtt_packet(0x32, body)))
        assert (kind, flags, decoded) == (lc.MQTT_PUBLISH, 2, body)
    assert lc.mqtt_puback(513) == b"\x40\x02\x02\x01"
    assert lc.mqtt_connect("gw", 30)[-4:] == b"\x00\x02gw"


def test_bench_connects_every_link_and_measures_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _children()
    config = lc.BenchConfig(
        links=LINKS,
        heartbeat=2.0,
        idle_window=2.0,
        samples=20,
        links_per_process=LINKS // 2,  # two load processes
        concurrency=20,
        results=tmp_path / "results",
    )
    result = lc.run(config)

    recorded = json.loads((tmp_path / "results" / "link_capacity.json").read_text())
    assert recorded["benchmark"] == "link_capacity"
    assert recorded["systems"] == result["systems"]
    machine = recorded["machine"]
    assert machine["cores"] >= 1
    assert machine["mosquitto"] not in ("", "unknown", "not installed")
    assert machine["uvloop"]
    assert machine["aiohttp"]
    assert recorded["parameters"]["load_processes"] == 2

    assert set(recorded["systems"]) == set(lc.SYSTEMS)
    for name, figures in recorded["systems"].items():
        assert figures["connected"] == LINKS, (name, figures["connect_errors"])
        assert figures["failed"] == 0, name
        assert figures["open_after_idle"] == LINKS, (name, figures["lost"])
        assert figures["open_at_end"] == LINKS, (name, figures["lost"])
        for key in ("rss_per_link_kib", "handshake_cpu_ms", "idle_cpu_percent", "latency_p50_ms"):
            assert figures[key] > 0, (name, key)
        assert figures["latency_p99_ms"] >= figures["latency_p50_ms"]
        assert figures["latency_samples"] == 20

    tether = recorded["systems"]["tether"]
    # Commit → gateway is part of API POST start → gateway, sample by sample.
    assert 0 < tether["cloud_push_p50_ms"] <= tether["latency_p50_ms"]
    assert tether["cloud_push_p99_ms"] <= tether["latency_p99_ms"]
    assert set(tether["server_steps"]) == {
        "answer (client)",
        "auth",
        "queue",
        "push",
        "mark",
        "total",
    }
    for system in ("ws_echo", "mosquitto"):
        assert recorded["systems"][system]["cloud_push_p99_ms"] is None

    rows = {row["figure"]: row for row in recorded["comparisons"]}
    assert set(rows) == {key for key, *_ in lc.TARGETS}
    for key, row in rows.items():
        assert row["ratio"] > 0, key
        assert row["ratio"] == pytest.approx(row["tether"] / row["mosquitto"])
    # The cloud-side rows hold Mosquitto's own publish → receive figure as the reference.
    mosquitto = recorded["systems"]["mosquitto"]
    assert rows["cloud_push_p99_ms"]["mosquitto"] == mosquitto["latency_p99_ms"]
    assert rows["cloud_push_p99_ms"]["tether"] == tether["cloud_push_p99_ms"]
    out = capsys.readouterr().out
    assert "tether/mosq" in out
    assert "CPU per mTLS handshake" in out
    assert _children() <= before


def test_a_failing_phase_still_stops_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _children()

    def broken(values: object, q: float) -> float:
        raise lc.BenchError("measurement failed on purpose")

    # Fails after the echo server and both load processes are up and every link is connected.
    monkeypatch.setattr(lc, "percentile", broken)
    config = lc.BenchConfig(
        links=20,
        heartbeat=2.0,
        idle_window=0.5,
        samples=2,
        links_per_process=10,
        systems=("ws_echo",),
        results=tmp_path / "results",
        quiet=True,
    )
    with pytest.raises(lc.BenchError, match="on purpose"):
        lc.run(config)
    assert _children() <= before
    assert not (tmp_path / "results").exists()
