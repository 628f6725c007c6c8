"""Test helpers for connectors: a clock the test drives, and a probe connector it scripts."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import msgspec

from tether.gateway.connectors import (
    ConnectorContext,
    ConnectorManifest,
    ConnectorRegistry,
    IotClass,
)
from tether.protocol.telemetry import DeviceInfo, Discovery, Observation, PointInfo


class ManualClock:
    """Time that moves only when someone sleeps on it: retries and polls run without waiting."""

    def __init__(self, start: float = 1_718_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # let the rest of the loop run, as a real sleep would


class ProbeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    label: str = "probe"
    period: float = 1.0
    burst: int = 3


@dataclass
class Lab:
    """Scripts probe connectors and records what the runner did to them."""

    start_outcomes: dict[str, deque[BaseException | None]] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    crash: dict[str, asyncio.Event] = field(default_factory=dict)
    crash_with: dict[str, BaseException] = field(default_factory=dict)
    stop_error: dict[str, BaseException] = field(default_factory=dict)

    def plan(self, label: str, *outcomes: BaseException | None) -> None:
        self.start_outcomes[label] = deque(outcomes)

    def count(self, event: str, label: str) -> int:
        return self.events.count((event, label))

    def registry(self) -> ConnectorRegistry:
        registry = ConnectorRegistry()
        registry.register(PROBE_MANIFEST, lambda config: Probe(self, config))
        return registry


PROBE_MANIFEST = ConnectorManifest(
    name="probe",
    version="0.1.0",
    description="a scripted connector for tests",
    config_schema=ProbeConfig,
    iot_class=IotClass.LOCAL_POLLING,
)


class Probe:
    """Starts as scripted, submits one burst, then waits until told to crash."""

    def __init__(self, lab: Lab, config: ProbeConfig) -> None:
        self.lab = lab
        self.config = config

    async def start(self, ctx: ConnectorContext) -> None:
        label = self.config.label
        self.lab.events.append(("start", label))
        outcomes = self.lab.start_outcomes.get(label)
        outcome = outcomes.popleft() if outcomes else None
        if outcome is not None:
            raise outcome
        ctx.spawn(self._run(ctx), name="run")

    async def _run(self, ctx: ConnectorContext) -> None:
        label = self.config.label
        t = ctx.time()
        await ctx.submit(
            [Observation(f"{label}/p{i}", t, float(i)) for i in range(self.config.burst)]
        )
        ctx.report_poll()
        crash = self.lab.crash.setdefault(label, asyncio.Event())
        await crash.wait()
        crash.clear()
        raise self.lab.crash_with.get(label, RuntimeError(f"{label} crashed"))

    async def stop(self) -> None:
        self.lab.events.append(("stop", self.config.label))
        error = self.lab.stop_error.pop(self.config.label, None)
        if error is not None:
            raise error

    async def discover(self) -> Discovery:
        device = f"{self.config.label}/dev"
        return Discovery(
            devices=(DeviceInfo(device_id=device, name="Probe", kind="probe"),),
            points=(PointInfo(point_id=f"{device}/p0", device_id=device, name="p0", unit="1"),),
        )
