"""Tests for the simulated building: determinism, realistic ranges and patterns, rate, running."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import random

import msgspec
import pytest
from tests.support.connectors import ManualClock

from tether.gateway.connectors import (
    ConnectorRunner,
    ConnectorsConfig,
    InstanceConfig,
    InstanceState,
    builtin_registry,
)
from tether.gateway.connectors.simulated import (
    MANIFEST,
    BuildingModel,
    SimulatedBuilding,
    SimulatedBuildingConfig,
)
from tether.gateway.spool import AsyncSpool
from tether.protocol.telemetry import Discovery, Observation

CONFIG = SimulatedBuildingConfig(
    seed=42, building="HQ North", air_handlers=2, vavs_per_ahu=3, meters=2, zone_sensors=4
)
POINTS = 2 * 7 + 2 * 3 * 4 + 2 * 2 + 4 * 5
MONDAY = dt.datetime(2024, 6, 10, tzinfo=dt.UTC).timestamp()  # a Monday, 00:00 UTC


def at(model: BuildingModel, t: float) -> dict[str, Observation]:
    return {o.point_id: o for o in model.observations_at(t)}


def hourly(days: int) -> list[float]:
    return [MONDAY + h * 3600.0 + 17.0 for h in range(days * 24)]


def test_same_seed_same_ids_and_values_in_any_order() -> None:
    times = hourly(2)
    first = BuildingModel(CONFIG)
    forward = [first.observations_at(t) for t in times]
    second = BuildingModel(msgspec.convert(msgspec.to_builtins(CONFIG), SimulatedBuildingConfig))
    shuffled = times[:]
    random.Random(1).shuffle(shuffled)
    backward = {t: second.observations_at(t) for t in shuffled}
    assert forward == [backward[t] for t in times]
    assert first.discovery() == second.discovery()
    other = BuildingModel(msgspec.structs.replace(CONFIG, seed=43))
    assert [o.point_id for o in other.observations_at(times[10])] == [
        o.point_id for o in forward[10]
    ]
    assert other.observations_at(times[10]) != forward[10]


def test_discovery_describes_every_point_with_a_unit() -> None:
    model = BuildingModel(CONFIG)
    discovery = model.discovery()
    assert model.point_count == POINTS == len(discovery.points)
    kinds = [d.kind for d in discovery.devices]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "ahu": 2,
        "vav": 6,
        "meter": 2,
        "zone-sensor": 4,
    }
    points = {p.point_id: p for p in discovery.points}
    assert points.keys() == at(model, MONDAY).keys()
    device_ids = {d.device_id for d in discovery.devices}
    assert all(p.device_id in device_ids for p in discovery.points)
    assert points["hq-north/ahu-1/supply-air-temp"].unit == "°C"
    assert points["hq-north/ahu-1/vav-2/airflow"].unit == "L/s"
    assert points["hq-north/meter-1/energy"].kind == "counter"
    assert points["hq-north/zone-3/co2"].unit == "ppm"
    assert points["hq-north/zone-3/occupied"].kind == "boolean"


def test_a_week_of_readings_stays_in_realistic_ranges() -> None:
    model = BuildingModel(CONFIG)
    for t in hourly(7):
        for pid, o in at(model, t).items():
            point, v = pid.rsplit("/", 1)[1], o.value
            assert o.ts == t
            assert o.quality == "good"
            if point in ("fan-status", "occupied"):
                assert isinstance(v, bool)
                continue
            assert isinstance(v, int | float)
            assert not isinstance(v, bool)
            match point:
                case "supply-air-temp" | "return-air-temp" | "mixed-air-temp":
                    assert -5.0 <= v <= 35.0, (pid, v)
                case "zone-temp" | "temperature":
                    assert 12.0 <= v <= 30.0, (pid, v)
                case "zone-setpoint":
                    assert v in (18.0, 22.0)
                case "fan-speed" | "outside-air-damper" | "damper" | "humidity":
                    assert 0.0 <= v <= 100.0, (pid, v)
                case "static-pressure" | "airflow":
                    assert 0.0 <= v <= 700.0, (pid, v)
                case "co2":
                    assert 400 <= v <= 2000, (pid, v)
                case "occupants":
                    assert isinstance(v, int)
                    assert 0 <= v <= 40
                case "power":
                    assert 0.0 < v < 400.0
                case "energy":
                    assert v > 0.0
                case _:
                    pytest.fail(f"unexpected point {pid}")


def test_occupancy_drives_co2_temperature_and_fans_on_weekdays() -> None:
    model = BuildingModel(CONFIG)
    night, noon = at(model, MONDAY + 3 * 3600.0), at(model, MONDAY + 11 * 3600.0)
    sunday_noon = at(model, MONDAY - 24 * 3600.0 + 11 * 3600.0)
    for z in range(1, 5):
        zone = f"hq-north/zone-{z}"
        assert number(noon[f"{zone}/co2"]) > number(night[f"{zone}/co2"]) + 300
        assert number(noon[f"{zone}/co2"]) > number(sunday_noon[f"{zone}/co2"]) + 300
        assert noon[f"{zone}/occupied"].value is True
        assert night[f"{zone}/occupants"].value == 0
        assert night[f"{zone}/occupied"].value is False
        assert number(noon[f"{zone}/temperature"]) > number(night[f"{zone}/temperature"])
    assert noon["hq-north/ahu-1/fan-status"].value is True
    assert night["hq-north/ahu-1/fan-status"].value is False
    assert night["hq-north/ahu-1/fan-speed"].value == 0.0
    assert number(noon["hq-north/ahu-1/fan-speed"]) > 50.0


def test_energy_is_monotonic_and_integrates_power() -> None:
    model = BuildingModel(CONFIG)
    step = 60.0
    times = [MONDAY + i * step for i in range(24 * 60 + 1)]
    for m in (1, 2):
        energy = [number(at(model, t)[f"hq-north/meter-{m}/energy"]) for t in times]
        power = [number(at(model, t)[f"hq-north/meter-{m}/power"]) for t in times]
        assert all(b > a for a, b in itertools.pairwise(energy)), "energy must only grow"
        trapezoid = sum((p + q) / 2 * step / 3600.0 for p, q in itertools.pairwise(power))
        assert math.isclose(energy[-1] - energy[0], trapezoid, rel_tol=2e-3)


def number(o: Observation) -> float:
    assert isinstance(o.value, int | float)
    assert not isinstance(o.value, bool)
    return float(o.value)


def test_rate_spreads_samples_over_the_poll_interval() -> None:
    config = msgspec.structs.replace(CONFIG, rate=10_000.0, poll_interval=0.5)
    model = BuildingModel(config)
    k = model.samples_per_point()
    assert k == math.ceil(5_000 / POINTS)
    tick = MONDAY + 1234.5
    batch = model.poll(tick)
    assert len(batch) == k * POINTS
    assert 5_000 <= len(batch) < 5_000 + POINTS
    stamps = sorted({o.ts for o in batch})
    assert len(stamps) == k
    assert stamps[-1] == tick
    assert stamps[0] > tick - 0.5
    assert [o for o in batch if o.ts == tick] == model.observations_at(tick)
    natural = BuildingModel(CONFIG)
    assert natural.samples_per_point() == 1
    assert len(natural.poll(tick)) == POINTS


def test_config_schema_bounds_are_enforced_with_field_names() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.rate"):
        msgspec.convert({"rate": 200_000}, MANIFEST.config_schema)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.poll_interval"):
        msgspec.convert({"poll_interval": 0}, MANIFEST.config_schema)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"floors": 3}, MANIFEST.config_schema)


async def test_runs_under_the_runner_polling_on_its_interval(
    spool: AsyncSpool, clock: ManualClock
) -> None:
    announced: list[Discovery] = []

    async def on_discovery(instance: str, discovery: Discovery) -> None:
        announced.append(discovery)

    runner = ConnectorRunner(
        builtin_registry(),
        spool,
        on_discovery=on_discovery,
        sleep=clock.sleep,
        clock=clock.time,
        wall_clock=clock.time,
    )
    raw = msgspec.to_builtins(msgspec.structs.replace(CONFIG, poll_interval=10.0))
    config = ConnectorsConfig(
        version=1,
        instances={
            "sim": InstanceConfig(connector="simulated-building", config=raw),
            "empty": InstanceConfig(
                connector="simulated-building",
                config={"air_handlers": 0, "meters": 0, "zone_sensors": 0},
            ),
        },
    )
    try:
        await runner.apply_config(config)
        async with asyncio.timeout(10):
            stats = await runner.wait_until(lambda s: s["sim"].polls >= 5)
            await runner.wait_until(lambda s: s["empty"].state is InstanceState.FAILED)
    finally:
        await runner.close()
    assert "no devices" in (runner.stats()["empty"].last_error or "")
    assert announced == [BuildingModel(CONFIG).discovery()]
    polls = runner.stats()["sim"].polls
    assert runner.stats()["sim"].observations == polls * POINTS
    # a submit cancelled by the stop may still have been stored: at least once, never lost
    stored = (await spool.depth()).observations
    assert polls * POINTS <= stored <= (polls + 1) * POINTS
    batches = await spool.peek("sim", max_items=10 * POINTS)
    stamps = sorted({o.ts for b in batches for o in b.observations})
    assert all(t % 10.0 == 0 for t in stamps)
    assert [b - a for a, b in itertools.pairwise(stamps)] == [10.0] * (len(stamps) - 1)
    expected = BuildingModel(CONFIG).observations_at(stamps[0])
    assert batches[0].observations[:POINTS] == expected
    assert stats["sim"].errors == 0


def test_the_factory_refuses_an_empty_building() -> None:
    from tether.gateway.connectors import ConnectorConfigError

    with pytest.raises(ConnectorConfigError, match="no devices"):
        SimulatedBuilding(SimulatedBuildingConfig(air_handlers=0, meters=0, zone_sensors=0))
