"""A simulated building: air handlers, VAV boxes, meters and zone sensors, for demos and load.

Everything is deterministic. Device and point ids follow from the configuration, and every
value is a pure function of ``(seed, point, t)``: the same seed gives the same readings for the
same timestamps, in any order, on any machine. Readings follow a working week: occupancy rises
from 07:00, dips at lunch and empties after 17:00 on weekdays (local time, ``utc_offset_hours``);
occupancy drives CO2, zone temperatures and fan speeds; air handlers run 06:00-20:00 on
weekdays; each meter's energy register is the exact integral of its power curve.

For load tests, ``rate`` asks for that many observations per second: each poll then carries
several evenly spaced samples per point (never fewer than one per point).

The settings schema, :class:`SimulatedBuildingConfig`, lives in :mod:`tether.protocol.connectors`
(the cloud checks settings against it) and is re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from tether.gateway.connectors.base import (
    ConnectorConfigError,
    ConnectorContext,
    ConnectorManifest,
    IotClass,
)
from tether.protocol.connectors import SIMULATED_BUILDING, SimulatedBuildingConfig
from tether.protocol.telemetry import (
    DeviceInfo,
    Discovery,
    Observation,
    PointInfo,
    PointKind,
    Value,
)

__all__ = ["MANIFEST", "BuildingModel", "SimulatedBuilding", "SimulatedBuildingConfig"]

DAY = 86_400.0
OMEGA = 2 * math.pi / DAY
EPOCH_2020 = 1_577_836_800.0  # meters were installed on 2020-01-01: energy counts from there
_M64 = (1 << 64) - 1


MANIFEST = ConnectorManifest(
    name=SIMULATED_BUILDING,
    version="1.0.0",
    description="A deterministic simulated building (AHUs, VAVs, meters, zone sensors)",
    config_schema=SimulatedBuildingConfig,
    iot_class=IotClass.CALCULATED,
)


# --- deterministic noise and daily patterns ------------------------------------------------------


def _key(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _noise(key: int, t: float) -> float:
    """Uniform in [-1, 1), a pure function of (key, t at millisecond resolution): splitmix64."""
    x = (key + round(t * 1000.0) * 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x / 9_223_372_036_854_775_808.0 - 1.0


def _unit(key: int) -> float:
    """A fixed number in [0, 1) drawn from a key: per-device constants."""
    return ((key * 0x2545F4914F6CDD1D) & _M64) / 18_446_744_073_709_551_616.0


def _smoothstep(x: float) -> float:
    x = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
    return x * x * (3.0 - 2.0 * x)


def _clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def occupancy(hour: float, weekday: int) -> float:
    """Fraction of a zone's capacity present at a local hour (0-24) on a weekday (0 = Monday)."""
    peak = 1.0 if weekday < 5 else 0.06
    arrive = _smoothstep((hour - 7.0) / 2.0)
    leave = 1.0 - _smoothstep((hour - 16.5) / 2.5)
    lunch = 1.0 - 0.3 * math.exp(-(((hour - 12.5) / 0.6) ** 2))
    return peak * arrive * leave * lunch


@dataclass(frozen=True, slots=True)
class _Env:
    """What every device at one instant shares: local time, weather, the AHU schedule."""

    t: float
    hour: float
    weekday: int
    outdoor: float
    ahu_on: bool
    occupancy: float  # of the building as a whole

    @classmethod
    def at(cls, t: float, utc_offset_hours: float, climate: float) -> _Env:
        local = t + utc_offset_hours * 3600.0
        hour = (local % DAY) / 3600.0
        weekday = int(local // DAY + 3) % 7  # 1970-01-01 was a Thursday
        outdoor = climate + 7.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)
        ahu_on = weekday < 5 and 6.0 <= hour < 20.0
        return cls(t, hour, weekday, outdoor, ahu_on, occupancy(hour, weekday))


# --- devices -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PointDef:
    key: str
    name: str
    kind: PointKind
    unit: str


class _Device:
    kind: str = ""
    model: str = ""
    points: tuple[_PointDef, ...] = ()

    def __init__(self, seed: int, device_id: str, name: str) -> None:
        self.device_id = device_id
        self.name = name
        self.key = _key(seed, device_id)
        self.point_ids = tuple(f"{device_id}/{p.key}" for p in self.points)
        self.noise_keys = tuple(_key(seed, pid) for pid in self.point_ids)

    def values(self, env: _Env) -> tuple[Value, ...]:
        raise NotImplementedError


class _AirHandler(_Device):
    kind = "ahu"
    model = "simulated air handling unit"
    points = (
        _PointDef("supply-air-temp", "Supply air temperature", PointKind.NUMERIC, "°C"),
        _PointDef("return-air-temp", "Return air temperature", PointKind.NUMERIC, "°C"),
        _PointDef("mixed-air-temp", "Mixed air temperature", PointKind.NUMERIC, "°C"),
        _PointDef("fan-speed", "Supply fan speed", PointKind.NUMERIC, "%"),
        _PointDef("fan-status", "Supply fan running", PointKind.BOOLEAN, ""),
        _PointDef("outside-air-damper", "Outside air damper position", PointKind.NUMERIC, "%"),
        _PointDef("static-pressure", "Duct static pressure", PointKind.NUMERIC, "Pa"),
    )

    def values(self, env: _Env) -> tuple[Value, ...]:
        n = [_noise(k, env.t) for k in self.noise_keys]
        ret = 21.0 + 2.0 * env.occupancy + 0.3 * n[1]
        if env.ahu_on:
            fan = _clamp(45.0 + 45.0 * env.occupancy + 3.0 * n[3], 20.0, 100.0)
            economise = _smoothstep((ret - env.outdoor - 2.0) / 6.0)
            damper = _clamp(20.0 + 60.0 * economise + 2.0 * n[5], 0.0, 100.0)
            mixed = damper / 100.0 * env.outdoor + (1.0 - damper / 100.0) * ret + 0.2 * n[2]
            supply = 13.0 + 0.5 * n[0]
            static = max(0.0, 250.0 * (fan / 100.0) ** 2 + 5.0 * n[6])
        else:
            fan = damper = static = 0.0
            mixed = ret + 0.2 * n[2]
            supply = mixed + 0.3 * n[0]
        return (
            round(supply, 2),
            round(ret, 2),
            round(mixed, 2),
            round(fan, 1),
            env.ahu_on,
            round(damper, 1),
            round(static, 1),
        )


class _Vav(_Device):
    kind = "vav"
    model = "simulated VAV box"
    points = (
        _PointDef("zone-temp", "Zone temperature", PointKind.NUMERIC, "°C"),
        _PointDef("zone-setpoint", "Zone temperature setpoint", PointKind.NUMERIC, "°C"),
        _PointDef("airflow", "Supply airflow", PointKind.NUMERIC, "L/s"),
        _PointDef("damper", "Damper position", PointKind.NUMERIC, "%"),
    )

    def __init__(self, seed: int, device_id: str, name: str) -> None:
        super().__init__(seed, device_id, name)
        self.shift = _unit(self.key) - 0.5  # hours: zones fill a little earlier or later
        self.max_flow = 100.0 + 500.0 * _unit(self.key ^ 0x5555)

    def values(self, env: _Env) -> tuple[Value, ...]:
        n = [_noise(k, env.t) for k in self.noise_keys]
        occ = occupancy(env.hour - self.shift, env.weekday)
        setpoint = 22.0 if env.ahu_on else 18.0
        if env.ahu_on:
            zone = setpoint + 1.2 * occ - 0.3 + 0.2 * n[0]
            demand = _clamp((zone - setpoint + 0.5) / 1.5, 0.0, 1.0)
            airflow = max(0.0, self.max_flow * (0.25 + 0.75 * demand) + 2.0 * n[2])
            damper = _clamp(100.0 * airflow / self.max_flow + n[3], 0.0, 100.0)
        else:
            zone = _clamp(0.3 * env.outdoor + 0.7 * 20.0 + 0.2 * n[0], 14.0, 28.0)
            airflow = damper = 0.0
        return (round(zone, 2), setpoint, round(airflow, 1), round(damper, 1))


class _Meter(_Device):
    kind = "meter"
    model = "simulated electricity meter"
    points = (
        _PointDef("power", "Active power", PointKind.NUMERIC, "kW"),
        _PointDef("energy", "Active energy imported", PointKind.COUNTER, "kWh"),
    )

    def __init__(self, seed: int, device_id: str, name: str, utc_offset_hours: float) -> None:
        super().__init__(seed, device_id, name)
        self.base = 20.0 + 180.0 * _unit(self.key)  # kW, mean
        self.daily = 0.35 * self.base
        self.twice = 0.15 * self.base
        self.offset = utc_offset_hours * 3600.0
        # The daily term peaks at 14:00 local, the twice-daily one sharpens the working day.
        self.phase1 = math.pi / 2 - OMEGA * 14 * 3600.0
        self.phase2 = -math.pi / 2 - 2 * OMEGA * 3 * 3600.0
        self.register = 1000.0 + 50_000.0 * _unit(self.key ^ 0xAAAA)  # kWh at installation
        self.start = self._integral(EPOCH_2020)

    def power(self, t: float) -> float:
        u = t + self.offset
        return (
            self.base
            + self.daily * math.sin(OMEGA * u + self.phase1)
            + self.twice * math.sin(2 * OMEGA * u + self.phase2)
        )

    def _integral(self, t: float) -> float:
        """kWh of ``power`` from the epoch to ``t`` (closed form: the register is exact)."""
        u = t + self.offset
        kws = (
            self.base * t
            - self.daily / OMEGA * math.cos(OMEGA * u + self.phase1)
            - self.twice / (2 * OMEGA) * math.cos(2 * OMEGA * u + self.phase2)
        )
        return kws / 3600.0

    def energy(self, t: float) -> float:
        return self.register + self._integral(t) - self.start

    def values(self, env: _Env) -> tuple[Value, ...]:
        power = self.power(env.t) * (1.0 + 0.01 * _noise(self.noise_keys[0], env.t))
        return (round(power, 3), round(self.energy(env.t), 4))


class _ZoneSensor(_Device):
    kind = "zone-sensor"
    model = "simulated multi-sensor"
    points = (
        _PointDef("temperature", "Temperature", PointKind.NUMERIC, "°C"),
        _PointDef("co2", "CO2 concentration", PointKind.NUMERIC, "ppm"),
        _PointDef("humidity", "Relative humidity", PointKind.NUMERIC, "%"),
        _PointDef("occupied", "Occupied", PointKind.BOOLEAN, ""),
        _PointDef("occupants", "Occupant count", PointKind.NUMERIC, "people"),
    )

    def __init__(self, seed: int, device_id: str, name: str) -> None:
        super().__init__(seed, device_id, name)
        self.shift = _unit(self.key) - 0.5
        self.capacity = 4 + int(36 * _unit(self.key ^ 0x3333))

    def values(self, env: _Env) -> tuple[Value, ...]:
        n = [_noise(k, env.t) for k in self.noise_keys]
        occ = occupancy(env.hour - self.shift, env.weekday)
        people = max(0, round(self.capacity * occ + 1.2 * n[4] * occ))
        temp = 20.5 + 2.0 * occ + 0.8 * math.sin(2 * math.pi * (env.hour - 9.0) / 24.0)
        co2 = _clamp(420.0 + 1000.0 * occ + 25.0 * n[1], 400.0, 2000.0)
        rh = 45.0 + 8.0 * math.sin(2 * math.pi * (env.hour - 5.0) / 24.0) + 6.0 * occ
        return (
            round(temp + 0.15 * n[0], 2),
            round(co2),
            round(_clamp(rh + 1.5 * n[2], 15.0, 85.0), 1),
            people > 0,
            people,
        )


# --- the building --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "building"


class BuildingModel:
    """The devices of one simulated building and their readings at any instant (no I/O)."""

    def __init__(self, config: SimulatedBuildingConfig) -> None:
        self.config = config
        seed, slug = config.seed, _slug(config.building)
        self.site = slug
        self.climate = 8.0 + 10.0 * _unit(_key(seed, slug))  # °C, mean outdoor temperature
        devices: list[_Device] = []
        for a in range(1, config.air_handlers + 1):
            ahu = f"{slug}/ahu-{a}"
            devices.append(_AirHandler(seed, ahu, f"AHU-{a}"))
            devices += [
                _Vav(seed, f"{ahu}/vav-{v}", f"VAV-{a}-{v}")
                for v in range(1, config.vavs_per_ahu + 1)
            ]
        devices += [
            _Meter(seed, f"{slug}/meter-{m}", f"Meter {m}", config.utc_offset_hours)
            for m in range(1, config.meters + 1)
        ]
        devices += [
            _ZoneSensor(seed, f"{slug}/zone-{z}", f"Zone {z}")
            for z in range(1, config.zone_sensors + 1)
        ]
        self.devices = tuple(devices)
        self.point_count = sum(len(d.points) for d in devices)

    def discovery(self) -> Discovery:
        location = self.config.building
        devices = tuple(
            DeviceInfo(
                device_id=d.device_id,
                name=d.name,
                kind=d.kind,
                vendor="tether",
                model=d.model,
                location=location,
            )
            for d in self.devices
        )
        points = tuple(
            PointInfo(
                point_id=pid,
                device_id=d.device_id,
                name=f"{d.name} {p.name.lower()}",
                kind=p.kind.value,
                unit=p.unit,
            )
            for d in self.devices
            for pid, p in zip(d.point_ids, d.points, strict=True)
        )
        return Discovery(devices=devices, points=points)

    def samples_per_point(self) -> int:
        """Samples of each point per poll needed to reach the configured rate."""
        if self.point_count == 0 or self.config.rate <= 0:
            return 1
        wanted = self.config.rate * self.config.poll_interval
        return max(1, math.ceil(wanted / self.point_count - 1e-9))

    def observations_at(self, t: float) -> list[Observation]:
        """Every point's reading at ``t``."""
        env = _Env.at(t, self.config.utc_offset_hours, self.climate)
        out: list[Observation] = []
        append = out.append
        for device in self.devices:
            for pid, value in zip(device.point_ids, device.values(env), strict=True):
                append(Observation(pid, t, value))
        return out

    def poll(self, tick: float) -> list[Observation]:
        """What the poll at ``tick`` reports: samples spread over the interval that ends there."""
        k = self.samples_per_point()
        if k == 1:
            return self.observations_at(tick)
        step = self.config.poll_interval / k
        out: list[Observation] = []
        for i in range(k - 1, -1, -1):
            out += self.observations_at(tick - i * step)
        return out


class SimulatedBuilding:
    """The ``simulated-building`` connector: polls :class:`BuildingModel` every interval."""

    def __init__(self, config: SimulatedBuildingConfig) -> None:
        if config.air_handlers + config.meters + config.zone_sensors == 0:
            raise ConnectorConfigError(
                "simulated-building: the building has no devices"
                " (air_handlers, meters and zone_sensors are all 0)"
            )
        self.model = BuildingModel(config)
        self._ctx: ConnectorContext | None = None

    async def start(self, ctx: ConnectorContext) -> None:
        self._ctx = ctx
        ctx.spawn(self._poll_loop(ctx), name="poll")

    async def stop(self) -> None:
        self._ctx = None

    async def discover(self) -> Discovery:
        return self.model.discovery()

    async def _poll_loop(self, ctx: ConnectorContext) -> None:
        interval = self.model.config.poll_interval
        tick = math.ceil(ctx.time() / interval) * interval
        while True:  # until the runner cancels this task
            wait = tick - ctx.time()
            if wait > 0:
                await ctx.sleep(wait)
            await ctx.submit(self.model.poll(tick))  # back-pressure: waits for the spool
            ctx.report_poll()
            tick += interval
            behind = ctx.time() - tick
            if behind > interval:  # the spool was slow: skip the missed polls, don't burst
                tick += math.floor(behind / interval) * interval
