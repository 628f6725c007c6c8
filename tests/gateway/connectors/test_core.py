"""Tests for the connector runner: retries, failures, configuration changes, stats, the spool."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.support.connectors import Lab, ManualClock
from tests.support.tmpfs import mounted_tmpfs

from tether.gateway.connectors import (
    ConnectorConfigError,
    ConnectorFatal,
    ConnectorNotReady,
    ConnectorRunner,
    ConnectorsConfig,
    ConnectorsConfigInvalid,
    InstanceConfig,
    InstanceState,
    InstanceStats,
    StaleConnectorsConfig,
    builtin_registry,
    decode_connectors_config,
)
from tether.gateway.spool import AsyncSpool, Spool
from tether.protocol.backoff import backoff_delays
from tether.protocol.telemetry import Discovery

TIMEOUT = 10.0


def probes(version: int, **labels: dict[str, Any]) -> ConnectorsConfig:
    return ConnectorsConfig(
        version=version,
        instances={
            name: InstanceConfig(connector="probe", config={"label": name, **cfg})
            for name, cfg in labels.items()
        },
    )


async def until(
    runner: ConnectorRunner, predicate: Callable[[dict[str, InstanceStats]], bool]
) -> dict[str, InstanceStats]:
    async with asyncio.timeout(TIMEOUT):
        return await runner.wait_until(predicate)


def state_is(name: str, state: InstanceState) -> Callable[[dict[str, InstanceStats]], bool]:
    return lambda stats: name in stats and stats[name].state is state


@pytest.fixture
async def runner(lab: Lab, spool: AsyncSpool, clock: ManualClock) -> AsyncIterator[ConnectorRunner]:
    announced: list[tuple[str, Discovery]] = []

    async def on_discovery(instance: str, discovery: Discovery) -> None:
        announced.append((instance, discovery))

    r = ConnectorRunner(
        lab.registry(),
        spool,
        on_discovery=on_discovery,
        sleep=clock.sleep,
        clock=clock.time,
        wall_clock=clock.time,
        rng=random.Random(7),
        backoff_initial=1.0,
        backoff_cap=4.0,
    )
    r.announced = announced  # type: ignore[attr-defined]
    yield r
    await r.close()


async def test_not_ready_is_retried_with_capped_full_jitter_backoff(
    runner: ConnectorRunner, lab: Lab, clock: ManualClock, spool: AsyncSpool
) -> None:
    lab.plan("a", *(ConnectorNotReady("field bus offline") for _ in range(5)))
    await runner.apply_config(probes(1, a={}))
    stats = await until(runner, state_is("a", InstanceState.RUNNING))
    expected = list(itertools.islice(backoff_delays(cap=4.0, rng=random.Random(7)), 5))
    assert clock.sleeps == expected
    for n, delay in enumerate(clock.sleeps):
        assert 0 <= delay <= min(4.0, 2.0**n)
    assert (stats["a"].starts, stats["a"].errors) == (6, 5)
    assert stats["a"].last_error == "ConnectorNotReady: field bus offline"
    assert lab.count("stop", "a") == 5  # stop() follows every failed start
    stats = await until(runner, lambda s: s["a"].observations == 3)
    assert stats["a"].polls == 1
    batches = await spool.peek("a", max_items=10)
    assert [o.point_id for o in batches[0].observations] == ["a/p0", "a/p1", "a/p2"]
    assert runner.discovery("a") is not None
    assert [name for name, _ in runner.announced] == ["a"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error", [ConnectorConfigError("port: no such device"), ConnectorFatal("no serial ports")]
)
async def test_config_and_fatal_errors_are_not_retried_until_config_changes(
    runner: ConnectorRunner, lab: Lab, clock: ManualClock, error: Exception
) -> None:
    lab.plan("a", error)
    await runner.apply_config(probes(1, a={"period": 1.0}))
    stats = await until(runner, state_is("a", InstanceState.FAILED))
    assert stats["a"].last_error == f"{type(error).__name__}: {error}"
    assert clock.sleeps == []
    again = await runner.apply_config(probes(2, a={"period": 1.0}))
    assert again.unchanged == {"a"}
    assert runner.stats()["a"].state is InstanceState.FAILED
    assert lab.count("start", "a") == 1
    changed = await runner.apply_config(probes(3, a={"period": 2.0}))
    assert changed.restarted == {"a"}
    stats = await until(runner, state_is("a", InstanceState.RUNNING))
    assert lab.count("start", "a") == 2
    assert stats["a"].config_version == 3


async def test_unexpected_errors_are_retried_like_not_ready(
    runner: ConnectorRunner, lab: Lab, clock: ManualClock
) -> None:
    lab.plan("a", RuntimeError("bug"))
    await runner.apply_config(probes(1, a={}))
    stats = await until(runner, state_is("a", InstanceState.RUNNING))
    assert len(clock.sleeps) == 1
    assert stats["a"].errors == 1
    assert stats["a"].last_error == "RuntimeError: bug"


async def test_a_crashed_task_restarts_its_instance_only(
    runner: ConnectorRunner, lab: Lab, clock: ManualClock
) -> None:
    await runner.apply_config(probes(1, a={}, b={}))
    await until(runner, lambda s: s["a"].observations == 3 and s["b"].observations == 3)
    lab.crash_with["a"] = ConnectorNotReady("link lost")
    lab.crash["a"].set()
    stats = await until(runner, lambda s: s["a"].starts == 2 and s["a"].observations == 6)
    assert stats["a"].state is InstanceState.RUNNING
    assert stats["a"].last_error == "ConnectorNotReady: link lost"
    assert len(clock.sleeps) == 1
    assert (lab.count("start", "b"), lab.count("stop", "b")) == (1, 0)
    assert stats["b"].starts == 1


async def test_a_failing_stop_is_recorded_and_the_instance_still_restarts(
    runner: ConnectorRunner, lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    await runner.apply_config(probes(1, a={}))
    await until(runner, lambda s: s["a"].observations == 3)
    lab.stop_error["a"] = OSError("port already closed")
    lab.crash["a"].set()
    stats = await until(runner, lambda s: s["a"].starts == 2 and s["a"].observations == 6)
    assert stats["a"].errors == 2  # the failing stop, and the crash that caused it
    assert stats["a"].last_error == "RuntimeError: a crashed"
    assert "stop() failed: OSError: port already closed" in caplog.text
    assert stats["a"].state is InstanceState.RUNNING


async def test_apply_config_touches_only_what_changed(
    runner: ConnectorRunner, lab: Lab, spool: AsyncSpool
) -> None:
    first = await runner.apply_config(probes(1, a={}, b={}, c={}))
    assert first.started == {"a", "b", "c"}
    await until(runner, lambda s: all(x.observations == 3 for x in s.values()))
    # same settings spelled differently (an explicit default) is not a change
    second = await runner.apply_config(probes(2, a={"period": 1.0}, b={"burst": 5}, d={}))
    assert second.unchanged == {"a"}
    assert second.restarted == {"b"}
    assert second.stopped == {"c"}
    assert second.started == {"d"}
    await until(runner, lambda s: s.keys() == {"a", "b", "d"} and s["d"].state.value == "running")
    assert (lab.count("start", "a"), lab.count("stop", "a")) == (1, 0)
    assert (lab.count("start", "b"), lab.count("stop", "b")) == (2, 1)
    assert (lab.count("start", "c"), lab.count("stop", "c")) == (1, 1)
    assert lab.count("start", "d") == 1
    stats = await until(runner, lambda s: s["b"].observations == 3 + 5)
    assert stats["b"].starts == 2  # counters survive a restart
    assert runner.version == 2
    with pytest.raises(StaleConnectorsConfig):
        await runner.apply_config(probes(1, a={}))
    disabled = ConnectorsConfig(
        version=3,
        instances={
            "a": InstanceConfig(connector="probe", config={"label": "a"}, enabled=False),
            "b": InstanceConfig(connector="probe", config={"label": "b", "burst": 5}),
            "d": InstanceConfig(connector="probe", config={"label": "d"}),
        },
    )
    third = await runner.apply_config(disabled)
    assert third.stopped == {"a"}
    assert runner.stats()["a"].state is InstanceState.STOPPED
    assert lab.count("stop", "a") == 1
    assert (await spool.last_seqs())["b"] == 8


async def test_invalid_instances_are_reported_by_name_and_field(
    runner: ConnectorRunner, lab: Lab
) -> None:
    config = ConnectorsConfig(
        version=1,
        instances={
            "good": InstanceConfig(connector="probe", config={"label": "good"}),
            "typed": InstanceConfig(connector="probe", config={"period": "fast"}),
            "extra": InstanceConfig(connector="probe", config={"colour": "blue"}),
            "ghost": InstanceConfig(connector="modbus-tcp"),
            "bad name!": InstanceConfig(connector="probe"),
        },
    )
    result = await runner.apply_config(config)
    assert result.invalid.keys() == {"typed", "extra", "ghost", "bad name!"}
    assert "instance 'typed'" in result.invalid["typed"]
    assert "$.period" in result.invalid["typed"]
    assert "colour" in result.invalid["extra"]
    assert "modbus-tcp" in result.invalid["ghost"]
    assert "known: probe" in result.invalid["ghost"]
    assert "name must be letters, digits" in result.invalid["bad name!"]
    stats = await until(runner, state_is("good", InstanceState.RUNNING))
    for name in result.invalid:
        assert stats[name].state is InstanceState.FAILED
        assert stats[name].last_error == result.invalid[name]
    assert lab.count("start", "typed") == 0


async def test_close_stops_every_instance(runner: ConnectorRunner, lab: Lab) -> None:
    await runner.apply_config(probes(1, a={}, b={}))
    await until(runner, lambda s: all(x.state is InstanceState.RUNNING for x in s.values()))
    await runner.close()
    assert all(x.state is InstanceState.STOPPED for x in runner.stats().values())
    assert (lab.count("stop", "a"), lab.count("stop", "b")) == (1, 1)


def test_connectors_config_decodes_documents_and_names_bad_fields() -> None:
    raw = {
        "version": 4,
        "instances": {"sim": {"connector": "simulated-building", "config": {"seed": 3}}},
    }
    config = decode_connectors_config(raw)
    assert config.instances["sim"].config == {"seed": 3}
    assert config.instances["sim"].enabled is True
    with pytest.raises(ConnectorsConfigInvalid, match=r"\$\.instances\[\.\.\.\]\.connector"):
        decode_connectors_config({"version": 1, "instances": {"sim": {"connector": 5}}})
    with pytest.raises(ConnectorsConfigInvalid, match="version"):
        decode_connectors_config({"instances": {}})


async def test_a_full_spool_refuses_submits_and_they_are_not_counted_as_taken(
    clock: ManualClock,
) -> None:
    with mounted_tmpfs("1m") as where:
        spool = await AsyncSpool.open(
            where / "spool.db", max_bytes=1 << 30, max_age=1e9, reserve_bytes=0, disk_headroom=None
        )
        runner = ConnectorRunner(
            builtin_registry(), spool, sleep=clock.sleep, clock=clock.time, wall_clock=clock.time
        )
        try:
            sim = InstanceConfig(
                connector="simulated-building",
                config={"rate": 2_000, "poll_interval": 1.0, "air_handlers": 4},
            )
            await runner.apply_config(ConnectorsConfig(version=1, instances={"sim": sim}))
            stats = await until(runner, lambda s: s["sim"].errors >= 2)
        finally:
            await runner.close()
            await spool.close()
        taken = runner.stats()["sim"].observations
        assert "spool disk is full" in (stats["sim"].last_error or "")
        assert stats["sim"].state in (InstanceState.RETRYING, InstanceState.STARTING)
        assert taken > 0
        with Spool.open(where / "spool.db", max_bytes=1 << 30, max_age=1e9) as s:
            assert s.depth().observations == taken
