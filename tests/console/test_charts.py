"""The console's server-drawn charts and the fleet's alert rules (no server, no browser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tether.cloud.console import charts
from tether.cloud.console.views import gateway_alerts
from tether.cloud.store.records import GatewayRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _gateway(**changes: object) -> GatewayRecord:
    values: dict[str, object] = {
        "gateway_id": "gw-1",
        "name": "boiler room",
        "created_at": NOW - timedelta(days=10),
        "revoked_at": None,
        "linked": True,
        "tier": "ws",
        "last_seen": NOW,
        "link_since": NOW - timedelta(hours=1),
        "agent_version": "0.1.0",
        "peer": "192.0.2.10",
        "cert_serial": "ab",
        "cert_not_after": NOW + timedelta(days=80),
    }
    values.update(changes)
    return GatewayRecord(**values)  # type: ignore[arg-type]


def test_a_sparkline_draws_every_point_in_its_box_and_says_what_it_shows() -> None:
    points = [(float(t), float(v)) for t, v in enumerate([3, 5, 4, 9, 1, 6])]
    svg = str(charts.sparkline(points, width=100, height=20, label="Zone <1>", unit="°C"))
    path = re.search(r'd="([^"]+)"', svg)
    assert path is not None
    coords = [float(x) for x in re.findall(r"-?\d+\.\d", path.group(1))]
    assert len(coords) == 2 * len(points)
    assert all(0 <= x <= 100 for x in coords[0::2])
    assert all(0 <= y <= 20 for y in coords[1::2])
    assert "latest 6 °C" in svg
    assert "range 1 to 9 °C" in svg
    assert "Zone &lt;1&gt;" in svg
    assert "<1>" not in svg


def test_a_sparkline_without_enough_values_says_so() -> None:
    svg = str(charts.sparkline([(0.0, 1.0)], label="fan"))
    assert "spark-empty" in svg
    assert "not enough values" in svg


def test_downsampling_keeps_the_spikes() -> None:
    points = [(float(t), 0.0) for t in range(1000)]
    points[537] = (537.0, 99.0)
    points[812] = (812.0, -5.0)
    kept = charts.downsample(points, 40)
    assert len(kept) <= 40
    assert (537.0, 99.0) in kept
    assert (812.0, -5.0) in kept
    assert kept == sorted(kept)


def test_a_line_chart_has_a_readable_axis_a_legend_and_a_text_alternative() -> None:
    spool = [(float(t), float(t % 3)) for t in range(0, 600, 60)]
    svg = str(charts.line_chart({"waiting": spool}, title="Spool <depth>"))
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert all(label.isdigit() for label in labels[:5])  # counts: whole numbers only
    assert "Spool &lt;depth&gt;: latest waiting 0" in svg
    assert "<li>" in svg
    percent = str(charts.line_chart({"CPU": [(0.0, 30.0), (60.0, 140.0)]}, title="CPU", y_max=100))
    assert ">100</text>" in percent
    assert 'y1="10.0"' in percent  # the top grid line is the chart's top


def test_a_chart_without_history_says_so_instead_of_drawing_nothing() -> None:
    text = str(charts.line_chart({"CPU": [(0.0, 5.0)]}, title="CPU"))
    assert "not enough reports" in text
    assert "<svg" not in text


def test_gauges_are_coloured_by_how_full_they_are() -> None:
    assert 'class="gauge-bar ok"' in str(charts.gauge(40.0, label="Disk"))
    assert 'class="gauge-bar mid"' in str(charts.gauge(75.0, label="Disk"))
    assert 'class="gauge-bar high"' in str(charts.gauge(97.0, label="Disk"))
    assert 'width="100.0"' in str(charts.gauge(130.0, label="Disk"))
    assert "gauge-bar" not in str(charts.gauge(None, label="Disk"))


def test_alerts_name_what_needs_attention() -> None:
    assert gateway_alerts(_gateway(), NOW) == ()
    revoked = gateway_alerts(_gateway(revoked_at=NOW, linked=False), NOW)
    assert [(a.level, a.text) for a in revoked] == [("bad", "revoked")]
    quiet = gateway_alerts(_gateway(linked=False, last_seen=NOW - timedelta(hours=3)), NOW)
    assert [(a.level, a.text) for a in quiet] == [("bad", "offline for 3 h")]
    brief = gateway_alerts(_gateway(linked=False, last_seen=NOW - timedelta(minutes=5)), NOW)
    assert [a.level for a in brief] == ["warn"]
    expiring = gateway_alerts(_gateway(cert_not_after=NOW + timedelta(days=3)), NOW)
    assert [a.text for a in expiring] == ["certificate expires in 3 d"]
    busy = gateway_alerts(
        _gateway(), NOW, {"cpu_percent": 96.0, "disk_percent": 50.0, "spool_dropped": 12.0}
    )
    assert [a.text for a in busy] == ["CPU 96 %", "12 observations dropped"]
