"""HealthStore on SQLite and a real PostgreSQL: reports with their charted figures, the fleet's
latest figures, series across raw and hourly rows, downsampling with exact hourly averages and
retention, logs with level and customer-data filters, and the preflight a gateway ran."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tether.cloud.store import Store
from tether.cloud.store.health import HEALTH_FIGURES, HealthStore

NOW = datetime(2024, 6, 10, 12, 30, tzinfo=UTC)
HOUR = 3600.0
#: The start of the hour three days before NOW: well past the raw retention below.
OLD = (NOW - timedelta(days=3)).replace(minute=0).timestamp()
RAW = timedelta(hours=48)
KEEP = timedelta(days=30)


def report(
    *,
    cpu: float | None = None,
    memory: float | None = None,
    disk: float | None = None,
    spool: int | None = None,
    dropped: int | None = None,
    rx: float | None = None,
    tx: float | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    return {
        "system": {
            "cpu_percent": cpu,
            "memory": {"percent": memory},
            "disk": {"percent": disk},
            "temperature_max": temperature,
        },
        "network": {"rx_bps": rx, "tx_bps": tx} if rx is not None else {},
        "spool": {"observations": spool, "dropped": dropped},
        "link": {"tier": "ws"},
    }


@pytest.fixture
def health(store: Store) -> HealthStore:
    return HealthStore(store.engine)


async def test_a_report_keeps_its_document_and_its_figures_as_columns(health: HealthStore) -> None:
    ts = NOW.timestamp()
    await health.add_report(
        "gw-1",
        ts,
        report(
            cpu=12.5, memory=40, disk=71.2, spool=30, dropped=2, rx=1000, tx=250, temperature=48
        ),
    )
    latest = await health.latest("gw-1")
    assert latest is not None
    assert latest["ts"] == ts
    assert latest["link"] == {"tier": "ws"}
    assert latest["system"]["cpu_percent"] == 12.5
    [point] = await health.series("gw-1", since=ts - 1, until=ts + 1)
    assert point.ts == ts
    assert point.figures == {
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
        "disk_percent": 71.2,
        "temperature_max": 48.0,
        "net_rx_bps": 1000.0,
        "net_tx_bps": 250.0,
        "spool_depth": 30.0,
        "spool_dropped": 2.0,
    }
    assert await health.latest("gw-unknown") is None


async def test_figures_that_are_missing_or_not_numbers_are_null(health: HealthStore) -> None:
    ts = NOW.timestamp()
    odd = report(cpu=5)
    odd["system"]["memory"] = "plenty"  # not a dict: the path ends early
    odd["spool"]["observations"] = True  # a bool is not a figure
    odd["spool"]["dropped"] = "3"  # nor is a string
    await health.add_report("gw-1", ts, odd)
    [point] = await health.series("gw-1", since=ts - 1, until=ts + 1)
    assert point.figures["cpu_percent"] == 5.0
    assert {k for k, v in point.figures.items() if v is None} == set(HEALTH_FIGURES) - {
        "cpu_percent"
    }


async def test_latest_all_has_the_newest_figures_of_every_gateway(health: HealthStore) -> None:
    t = NOW.timestamp()
    await health.add_report("gw-1", t - 120, report(cpu=90, spool=5))
    await health.add_report("gw-1", t - 60, report(cpu=10, spool=7))
    await health.add_report("gw-2", t - 300, report(cpu=33))
    fleet = await health.latest_all()
    assert set(fleet) == {"gw-1", "gw-2"}
    assert fleet["gw-1"]["cpu_percent"] == 10.0
    assert fleet["gw-1"]["spool_depth"] == 7.0
    assert fleet["gw-2"]["cpu_percent"] == 33.0
    assert fleet["gw-2"]["spool_depth"] is None
    assert set(fleet["gw-1"]) == set(HEALTH_FIGURES)


async def test_series_is_in_time_order_within_the_range_and_per_gateway(
    health: HealthStore,
) -> None:
    t = NOW.timestamp()
    for i in (3, 1, 2, 0):
        await health.add_report("gw-1", t + i * 60, report(cpu=float(i)))
    await health.add_report("gw-2", t + 90, report(cpu=99))
    points = await health.series("gw-1", since=t + 60, until=t + 180)
    assert [(p.ts, p.figures["cpu_percent"]) for p in points] == [(t + 60, 1.0), (t + 120, 2.0)]


async def test_downsampling_folds_old_reports_into_exact_hourly_averages(
    health: HealthStore,
) -> None:
    # Hour OLD: three reports; memory missing in one (the average is over those that have it).
    await health.add_report("gw-1", OLD + 10, report(cpu=10, memory=40, spool=0, rx=100))
    await health.add_report("gw-1", OLD + 1800, report(cpu=20, memory=50, spool=6, rx=300))
    await health.add_report("gw-1", OLD + 3599, report(cpu=60, spool=9, rx=800))
    # The next hour: one report. Another gateway, same hour: its own average.
    await health.add_report("gw-1", OLD + HOUR + 5, report(cpu=5, memory=30))
    await health.add_report("gw-2", OLD + 20, report(cpu=70))
    await health.add_report("gw-2", OLD + 40, report(cpu=80))
    # Recent reports stay raw.
    recent = NOW.timestamp() - 600
    await health.add_report("gw-1", recent, report(cpu=1, memory=2))

    folded = await health.downsample(now=NOW, raw_retention=RAW, hourly_retention=KEEP)
    assert folded == 6

    points = await health.series("gw-1", since=OLD, until=NOW.timestamp())
    assert [p.ts for p in points] == [OLD + 1800, OLD + HOUR + 1800, recent]
    first, second, raw = points
    assert first.figures["cpu_percent"] == 30.0  # (10 + 20 + 60) / 3
    assert first.figures["memory_percent"] == 45.0  # (40 + 50) / 2
    assert first.figures["spool_depth"] == 5.0  # (0 + 6 + 9) / 3
    assert first.figures["net_rx_bps"] == 400.0  # (100 + 300 + 800) / 3
    assert first.figures["net_tx_bps"] is None
    assert second.figures["cpu_percent"] == 5.0
    assert second.figures["memory_percent"] == 30.0
    assert raw.figures["cpu_percent"] == 1.0
    [gw2] = await health.series("gw-2", since=OLD, until=NOW.timestamp())
    assert gw2.figures["cpu_percent"] == 75.0

    # The folded reports are gone from the raw rows; the latest report is still the recent one.
    latest = await health.latest("gw-1")
    assert latest is not None
    assert latest["ts"] == recent
    assert await health.downsample(now=NOW, raw_retention=RAW, hourly_retention=KEEP) == 0
    again = await health.series("gw-1", since=OLD, until=NOW.timestamp())
    assert again == points


async def test_hourly_rows_and_logs_beyond_the_retention_are_deleted(health: HealthStore) -> None:
    ancient = (NOW - KEEP - timedelta(days=2)).timestamp()
    kept = OLD
    await health.add_report("gw-1", ancient, report(cpu=50))
    await health.add_report("gw-1", kept, report(cpu=40))
    await health.add_logs("gw-1", [_log(ancient, "ancient"), _log(kept, "kept")])
    assert await health.downsample(now=NOW, raw_retention=RAW, hourly_retention=KEEP) == 2
    points = await health.series("gw-1", since=ancient - HOUR, until=NOW.timestamp())
    assert [(p.ts, p.figures["cpu_percent"]) for p in points] == [(kept + 1800, 40.0)]
    logs = await health.logs("gw-1", after=0)
    assert [r.message for r in logs] == ["kept"]
    # Later, the remaining hour ages out too.
    later = NOW + KEEP + timedelta(days=4)
    await health.downsample(now=later, raw_retention=RAW, hourly_retention=KEEP)
    assert await health.series("gw-1", since=0, until=later.timestamp()) == []


async def test_a_late_report_in_an_hour_already_folded_is_merged_not_an_error(
    health: HealthStore,
) -> None:
    await health.add_report("gw-1", OLD + 100, report(cpu=10))
    await health.add_report("gw-1", OLD + 200, report(cpu=20))
    assert await health.downsample(now=NOW, raw_retention=RAW, hourly_retention=KEEP) == 2
    # A report arrives late (a gateway's clock, or a short raw retention): same hour.
    await health.add_report("gw-1", OLD + 300, report(cpu=60))
    await health.add_report("gw-1", NOW.timestamp() - 60, report(cpu=1))
    assert await health.downsample(now=NOW, raw_retention=RAW, hourly_retention=KEEP) == 1
    points = await health.series("gw-1", since=OLD, until=NOW.timestamp())
    assert [(p.ts, p.figures["cpu_percent"]) for p in points] == [
        (OLD + 1800, 30.0),  # (10 + 20 + 60) / 3, weighted by the reports of each fold
        (NOW.timestamp() - 60, 1.0),
    ]


def _log(
    ts: float,
    message: str,
    *,
    level: str = "info",
    customer_data: bool = False,
    source: str = "agent:tether.gateway.link",
) -> dict[str, Any]:
    return {
        "ts": ts,
        "level": level,
        "source": source,
        "message": message,
        "customer_data": customer_data,
        "fields": None,
    }


async def test_logs_filter_by_level_customer_data_and_cursor(health: HealthStore) -> None:
    t = NOW.timestamp()
    await health.add_logs(
        "gw-1",
        [
            _log(t + 1, "a debug", level="debug"),
            _log(t + 2, "an info"),
            _log(t + 3, "a warning", level="warning"),
            _log(t + 4, "zone 4 is 21 degC", customer_data=True),
            _log(t + 5, "an error", level="error"),
            _log(t + 6, "a critical", level="critical"),
        ],
    )
    await health.add_logs("gw-2", [_log(t + 2, "another gateway's")])
    await health.add_logs("gw-1", [])  # nothing to do

    every = await health.logs("gw-1")
    assert [r.message for r in every] == [
        "a debug",
        "an info",
        "a warning",
        "zone 4 is 21 degC",
        "an error",
        "a critical",
    ]
    assert every[3].customer_data is True
    assert every[0].customer_data is False
    warnings = await health.logs("gw-1", level="warning")
    assert [r.level for r in warnings] == ["warning", "error", "critical"]
    hidden = await health.logs("gw-1", include_customer_data=False)
    assert "zone 4 is 21 degC" not in [r.message for r in hidden]
    assert len(hidden) == 5
    # Without a cursor: the newest `limit`, oldest first. With one: the next `limit` after it.
    assert [r.message for r in await health.logs("gw-1", limit=2)] == ["an error", "a critical"]
    page = await health.logs("gw-1", after=t + 2, limit=2)
    assert [r.message for r in page] == ["a warning", "zone 4 is 21 degC"]
    assert await health.logs("gw-1", after=t + 6) == []


async def test_the_preflight_a_gateway_ran_replaces_the_previous_one(health: HealthStore) -> None:
    assert await health.preflight("gw-1") is None
    first = {"status": "fail", "results": [{"check": "websocket", "status": "fail"}]}
    await health.set_preflight("gw-1", NOW.timestamp(), first)
    await health.set_preflight("gw-2", NOW.timestamp(), {"status": "pass", "results": []})
    assert await health.preflight("gw-1") == {
        "ts": NOW.timestamp(),
        "status": "fail",
        "report": first,
    }
    second = {"status": "warn", "results": []}
    await health.set_preflight("gw-1", NOW.timestamp() + 60, second)
    stored = await health.preflight("gw-1")
    assert stored is not None
    assert (stored["status"], stored["report"]) == ("warn", second)
    other = await health.preflight("gw-2")
    assert other is not None
    assert other["status"] == "pass"
    await health.set_preflight("gw-3", NOW.timestamp(), {"results": []})  # no status given
    unknown = await health.preflight("gw-3")
    assert unknown is not None
    assert unknown["status"] == "unknown"
