"""The link capacity benchmark, run small: every link connects, every figure is measured, and every
process it started is gone afterwards (also when a phase fails)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        rounds=2,
        results=tmp_path / "results",
    )
    result = lc.run(config)

    recorded = json.loads((tmp_path / "results" / "link_capacity.json").read_text())
    assert recorded["benchmark"] == "link_capacity"
    assert recorded["rounds"] == result["rounds"]
    assert len(recorded["rounds"]) == 2
    assert recorded["parameters"]["rounds"] == 2
    machine = recorded["machine"]
    assert machine["cores"] >= 1
    assert machine["mosquitto"] not in ("", "unknown", "not installed")
    assert machine["uvloop"]
    assert machine["aiohttp"]
    assert recorded["parameters"]["load_processes"] == 2

    for round_ in recorded["rounds"]:
        _check_round(round_)
    # The judged rows: every system's median figure, the median of the rounds' ratios.
    rows = {row["figure"]: row for row in recorded["comparisons"]}
    assert set(rows) == {target.key for target in lc.TARGETS}
    for key, row in rows.items():
        per_round = [
            {r["figure"]: r for r in round_["comparisons"]}[key] for round_ in recorded["rounds"]
        ]
        assert row["ratios"] == [r["ratio"] for r in per_round]
        for system in lc.SYSTEMS:
            values = [r[system] for r in per_round]
            if None not in values:
                assert row[system] == pytest.approx(sum(values) / 2), (key, system)
        if row["limit"] is not None:
            assert row["met_rounds"] == sum(1 for r in per_round if r["met"])
    out = capsys.readouterr().out
    assert "tether/mosq" in out
    assert "median of 2 rounds" in out
    assert "CPU per mTLS handshake" in out
    assert "reconnect storm: all relinked" in out
    assert "CPU per link in the storm" in out
    assert _children() <= before


def _check_round(round_: dict[str, Any]) -> None:
    """One round's figures: every link connected, every figure measured, every row judged."""
    systems = round_["systems"]
    assert set(systems) == set(lc.SYSTEMS)
    for name, figures in systems.items():
        assert figures["connected"] == LINKS, (name, figures["connect_errors"])
        assert figures["failed"] == 0, name
        assert figures["open_after_idle"] == LINKS, (name, figures["lost"])
        assert figures["open_at_end"] == LINKS, (name, figures["lost"])
        for key in ("rss_per_link_kib", "handshake_cpu_ms", "idle_cpu_percent", "latency_p50_ms"):
            assert figures[key] > 0, (name, key)
        assert figures["load_idle_cpu_percent"] > 0, name  # the clients' heartbeats
        assert figures["latency_p99_ms"] >= figures["latency_p50_ms"]
        assert figures["latency_samples"] == 20
        # The reconnect storm: every link reset at once, every one back, none given up.
        assert figures["storm_links"] == LINKS, name
        assert figures["storm_relinked"] == LINKS, (name, figures["storm_errors"])
        assert figures["storm_gave_up"] == 0, (name, figures["storm_errors"])
        assert figures["storm_attempts"] >= LINKS, name
        assert sum(figures["storm_error_kinds"].values()) == figures["storm_attempts"] - LINKS
        assert figures["storm_seconds"] > 0, name
        assert figures["storm_cpu_ms_per_link"] > 0, name

    tether = systems["tether"]
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
        assert systems[system]["cloud_push_p99_ms"] is None

    rows = {row["figure"]: row for row in round_["comparisons"]}
    assert set(rows) == {target.key for target in lc.TARGETS}
    for key, row in rows.items():
        if key == "storm_gave_up":
            continue
        assert row["ratio"] > 0, key
        assert row["ratio"] == pytest.approx(row["tether"] / row["mosquitto"])
        if row["judged"] == "ratio" and row["limit"] is not None:
            assert row["met"] == (row["ratio"] <= row["limit"]), key
    # Absolute targets judge tether's own figure, not a ratio.
    storm = rows["storm_seconds"]
    assert (storm["judged"], storm["limit"]) == ("absolute", 30.0)
    assert storm["tether"] == tether["storm_seconds"]
    assert storm["met"] == (tether["storm_seconds"] <= 30.0)
    gave_up = rows["storm_gave_up"]
    assert (gave_up["judged"], gave_up["tether"], gave_up["ratio"]) == ("absolute", 0, None)
    assert gave_up["met"] is True
    assert rows["storm_cpu_ms_per_link"]["judged"] == "ratio"
    # The cloud-side rows hold Mosquitto's own publish → receive figure as the reference.
    mosquitto = systems["mosquitto"]
    assert rows["cloud_push_p99_ms"]["mosquitto"] == mosquitto["latency_p99_ms"]
    assert rows["cloud_push_p99_ms"]["tether"] == tether["cloud_push_p99_ms"]


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


async def test_a_dropped_link_ends_with_a_reset_not_a_goodbye() -> None:
    seen: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.set_result(await reader.read(100))
        except ConnectionResetError as exc:
            seen.set_result(exc)
        writer.close()

    server = await asyncio.start_server(handle, lc.HOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(lc.HOST, port)
        lc.reset(writer.transport)
        assert writer.transport.is_closing()
        # A FIN would read as b"" (end of stream); the peer sees the connection reset instead.
        assert isinstance(await asyncio.wait_for(seen, 10), ConnectionResetError)
    finally:
        server.close()
        await server.wait_closed()


async def test_storm_retries_with_backoff_until_the_deadline_then_gives_up() -> None:
    # Nothing listens on the port: every redial is refused, so every link retries and gives up.
    port = lc.free_port()
    ctx = ssl.create_default_context()
    links = [lc.MqttLink(f"bench-{i:06d}", ctx) for i in range(3)]
    spec = lc.WorkerSpec(
        kind="mosquitto",
        host=lc.HOST,
        port=port,
        ca_path="",
        links=(),
        heartbeat=5.0,
        concurrency=2,
        link_timeout=5.0,
        lifetime=60.0,
        seed=1,
    )
    started = time.monotonic()
    deadline, cap = started + 1.0, 0.2
    storm = await lc.relink_all(
        links,
        functools.partial(lc.dial, http=None, spec=spec),
        asyncio.Semaphore(spec.concurrency),
        started=started,
        deadline=deadline,
        rng=random.Random(1),
        initial=0.05,
        cap=cap,
    )
    assert (storm.dropped, storm.relinked, storm.gave_up) == (3, 0, 3)
    assert storm.attempts > 3  # each link tried again before giving up
    assert storm.error_kinds == {"ConnectionRefusedError": storm.attempts}
    assert len(storm.errors) == min(5, storm.attempts)
    # A link gives up only once its next pause would cross the deadline.
    assert storm.seconds >= deadline - started - cap
    for link in links:
        assert not link.open
        assert link.ended.startswith("gave up in the reconnect storm (ConnectionRefusedError")


def test_sigterm_stops_the_bench_and_everything_it_started(tmp_path: Path) -> None:
    """Stopped by SIGTERM (a CI timeout, ``kill``), the bench stops its server and its load
    processes and removes its work directory, as on Ctrl-C, and says so."""
    work = tmp_path / "tmp"
    work.mkdir()
    argv = [sys.executable, "-m", "bench.link_capacity", "--links", "20", "--heartbeat", "2"]
    argv += ["--idle-window", "120", "--samples", "2", "--links-per-process", "10"]
    argv += ["--systems", "mosquitto", "--rounds", "1", "--results", str(tmp_path / "results")]
    process = subprocess.Popen(
        argv,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "TMPDIR": str(work)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        said: list[str] = []
        for line in process.stderr:  # ends if the bench exits early (then the assert says why)
            said.append(line)
            if "links connected" in line:
                break  # now it idles for 120 s
        assert any("links connected" in line for line in said), said
        started = psutil.Process(process.pid).children(recursive=True)
        assert len(started) >= 3  # Mosquitto and two load processes
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=120) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped by SIGTERM" in rest
    _gone, alive = psutil.wait_procs(started, timeout=60)
    assert alive == []
    assert list(work.iterdir()) == []
    assert not (tmp_path / "results").exists()
