"""The link throughput benchmark, run small: every message acknowledged exactly once on both
systems, the CPU figures measured, the ratio computed and recorded, no process left behind."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from bench import link_capacity as lc
from bench import link_throughput as lt
from tether.protocol.codec import decode_frame
from tether.protocol.messages import TelemetryBatch

pytestmark = [pytest.mark.slow]

LINKS = 4
WINDOW = 4
MESSAGES = 400
WARMUP = 40


def _children() -> set[int]:
    """Our live child processes, but multiprocessing's resource tracker."""
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


def test_a_batch_of_one_observation_is_a_200_byte_frame() -> None:
    point_id = lt.point_id_for("bench-000001")
    frame = lt.batch_frame(point_id, 1000, 1_700_000_000.0)
    assert len(frame) == lt.MESSAGE_SIZE
    batch = decode_frame(frame)
    assert isinstance(batch, TelemetryBatch)
    assert (batch.stream, batch.first_seq, batch.last_seq) == (lt.STREAM, 1000, 1000)
    assert [o.point_id for o in batch.observations] == [point_id]
    # The discovery names the same point, so commits move its latest value.
    assert [p.point_id for p in lt.discovery(point_id).points] == [point_id]


def test_mqtt_packets_are_split_from_what_a_read_brought() -> None:
    pubacks = lc.mqtt_puback(1) + lc.mqtt_puback(513)
    big = lc.mqtt_publish_qos1(7, "t", bytes(300))  # a 2-byte remaining length
    stream = pubacks + big + lc.MQTT_PINGREQ + lc.mqtt_puback(9)
    for cut in range(len(stream) + 1):  # the stream may be cut anywhere between two reads
        first, rest = lt.split_packets(stream[:cut])
        second, tail = lt.split_packets(rest + stream[cut:])
        assert tail == b""
        kinds = [kind for kind, _ in first + second]
        assert kinds == [lc.MQTT_PUBACK, lc.MQTT_PUBACK, lc.MQTT_PUBLISH, 12, lc.MQTT_PUBACK]
        bodies = [body for _, body in first + second]
        assert bodies[1] == b"\x02\x01"
        assert len(bodies[2]) == 2 + 1 + 2 + 300
    with pytest.raises(lc.MqttError):
        lt.split_packets(b"\x40\xff\xff\xff\xff\x01")


def test_shares_split_the_messages_exactly() -> None:
    assert lt._shares(10, 3) == [4, 3, 3]
    assert sum(lt._shares(200_001, 2)) == 200_001


def test_bench_acknowledges_every_message_on_both_systems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lc.MOSQUITTO.exists(), "mosquitto is missing: run scripts/sysdeps.sh"
    before = _children()
    config = lt.BenchConfig(
        links=LINKS,
        window=WINDOW,
        messages=MESSAGES,
        warmup=WARMUP,
        load_processes=2,
        results=tmp_path / "results",
    )
    result = lt.run(config)

    recorded = json.loads((tmp_path / "results" / "link_throughput.json").read_text())
    assert recorded["benchmark"] == "link_throughput"
    assert recorded["systems"] == result["systems"]
    assert recorded["machine"]["mosquitto"] not in ("", "unknown", "not installed")
    assert recorded["parameters"]["links"] == LINKS
    assert recorded["parameters"]["window"] == WINDOW
    assert recorded["parameters"]["load_processes"] == 2
    assert set(recorded["systems"]) == {"tether", "mosquitto"}
    for name, figures in recorded["systems"].items():
        assert figures["connected"] == LINKS, (name, figures["connect_errors"])
        assert figures["warmup_acked"] == WARMUP, name
        assert figures["sent"] == figures["acked"] == MESSAGES, name
        assert (figures["rejected"], figures["unacked"], figures["wrong_acks"]) == (0, 0, 0)
        assert figures["errors"] == [], name
        for key in (
            "wall_s",
            "acks_per_s",
            "server_cpu_s",
            "acks_per_cpu_s",
            "client_cpu_s",
        ):
            assert figures[key] > 0, (name, key)
        # From the machine's clock ticks (10 ms): a phase this short may fall between two.
        assert 0 <= figures["machine_busy_percent"] <= 100, name
        assert figures["acks_per_cpu_s"] == pytest.approx(MESSAGES / figures["server_cpu_s"])
        assert figures["event_loop_cpu_s"] > 0, name
        assert figures["server_cpu_s"] == pytest.approx(
            figures["event_loop_cpu_s"]
            + figures["other_threads_cpu_s"]
            + figures["exited_threads_cpu_s"]
        )
        assert any(t["role"] == "event loop" for t in figures["threads"]), name

    tether = recorded["systems"]["tether"]
    assert tether["message_bytes_min"] >= lt.MESSAGE_SIZE - 4
    assert tether["message_bytes_max"] <= lt.MESSAGE_SIZE + 4
    # The store holds every acknowledged observation, once.
    assert tether["store_rows"] == tether["store_accepted"] == WARMUP + MESSAGES
    assert tether["store_duplicates"] == 0
    mosquitto = recorded["systems"]["mosquitto"]
    assert mosquitto["message_bytes_min"] > lt.MESSAGE_SIZE  # the payload plus the header
    assert mosquitto["store_rows"] is None

    rows = {row["figure"]: row for row in recorded["comparisons"]}
    assert set(rows) == {key for key, *_ in lt.ROWS}
    per_core = rows["acks_per_cpu_s"]
    assert per_core["ratio"] == pytest.approx(
        tether["acks_per_cpu_s"] / mosquitto["acks_per_cpu_s"]
    )
    assert per_core["limit"] == lt.TARGET_RATIO
    assert per_core["met"] == (per_core["ratio"] >= lt.TARGET_RATIO)
    assert rows["acks_per_s"]["met"] is None  # reported, not judged
    out = capsys.readouterr().out
    assert "tether/mosq" in out
    assert "acks per server CPU-second" in out
    assert _children() <= before


def test_refused_lost_or_wrong_acks_fail_a_phase() -> None:
    lt._check("tether", "timed phase", [lt.Tally(sent=3, acked=3)])
    for bad in (
        lt.Tally(sent=3, acked=2, rejected=1),
        lt.Tally(sent=3, acked=2, unacked=1),
        lt.Tally(sent=3, acked=2, wrong_acks=1),
        lt.Tally(sent=3, acked=3, errors=["bench-000001: websocket closed"]),
    ):
        with pytest.raises(lt.BenchError, match="timed phase"):
            lt._check("tether", "timed phase", [lt.Tally(sent=1, acked=1), bad])


def test_a_store_short_of_the_acks_fails_the_run_and_stops_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _children()
    real = lt.store_counts

    def one_row_lost(db: Path) -> tuple[int, int, int]:
        accepted, duplicates, rows = real(db)
        assert rows == accepted == 20 + 10  # what the run acknowledged, before the loss
        return accepted, duplicates, rows - 1

    monkeypatch.setattr(lt, "store_counts", one_row_lost)
    config = lt.BenchConfig(
        links=2,
        window=2,
        messages=20,
        warmup=10,
        systems=("tether",),
        results=tmp_path / "results",
        quiet=True,
    )
    with pytest.raises(lt.BenchError, match="the store holds 29 rows"):
        lt.run(config)
    assert _children() <= before
    assert not (tmp_path / "results").exists()
