"""A connector's submit with a non-finite time or value is refused alone, before the spool."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import msgspec

from tether.gateway.connectors import (
    ConnectorContext,
    ConnectorManifest,
    ConnectorRegistry,
    ConnectorRunner,
    ConnectorsConfig,
    InstanceConfig,
    IotClass,
)
from tether.protocol.telemetry import Discovery, Observation


class _Config(msgspec.Struct, frozen=True):
    pass


class _Sink:
    def __init__(self) -> None:
        self.stored: list[Observation] = []

    async def append(self, stream: str, observations: Sequence[Observation]) -> tuple[int, int]:
        first = len(self.stored) + 1
        self.stored.extend(observations)
        return first, len(self.stored)


class _Submitter:
    def __init__(self, config: Any) -> None:
        self.outcomes: list[str] = []
        self.done = asyncio.Event()

    async def start(self, ctx: ConnectorContext) -> None:
        ctx.spawn(self._run(ctx), name="run")

    async def _run(self, ctx: ConnectorContext) -> None:
        good = Observation("p/ok", 1_800_000_000.0, 1.5)
        for batch in (
            [good],
            [good, Observation("p/bad", 1_800_000_000.0, math.nan)],
            [Observation("p/late", math.inf, 2.0)],
            [good],
        ):
            try:
                await ctx.submit(batch)
                self.outcomes.append("taken")
            except ValueError as exc:
                self.outcomes.append(str(exc))
        self.done.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None

    async def discover(self) -> Discovery:
        return Discovery()


async def test_non_finite_submits_are_refused_and_counted() -> None:
    made: list[_Submitter] = []
    created = asyncio.Event()

    def factory(config: Any) -> _Submitter:
        made.append(_Submitter(config))
        created.set()
        return made[-1]

    registry = ConnectorRegistry()
    registry.register(
        ConnectorManifest(
            name="submitter",
            version="1",
            description="test",
            config_schema=_Config,
            iot_class=IotClass.LOCAL_PUSH,
        ),
        factory,
    )
    sink = _Sink()
    runner = ConnectorRunner(registry, sink)
    try:
        await runner.apply_config(
            ConnectorsConfig(version=1, instances={"s": InstanceConfig(connector="submitter")})
        )
        async with asyncio.timeout(10):
            await created.wait()
            await made[0].done.wait()
        outcomes = made[0].outcomes
        assert outcomes[0] == "taken"
        assert "p/bad" in outcomes[1]
        assert "finite" in outcomes[1]
        assert "p/late" in outcomes[2]
        assert outcomes[3] == "taken"
        # Only the two good submits reached the spool; the bad ones left nothing behind.
        assert [o.point_id for o in sink.stored] == ["p/ok", "p/ok"]
        stats = runner.stats()["s"]
        assert stats.errors >= 2
        assert stats.last_error is not None
        assert "finite" in stats.last_error
    finally:
        await runner.close()
