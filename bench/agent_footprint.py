"""Agent footprint benchmark: the gateway agent's RSS and CPU, idle and forwarding 1,000 values/s.

One cloud (``tether cloud serve`` in its own process, SQLite, loopback TLS 1.3) and one agent,
enrolled and run as the operator would: ``tether gateway enroll`` then ``tether gateway run`` in
a process of its own, which psutil watches (RSS; user + system CPU of all its threads, as a
percentage of one core). The agent's USS (memory no other process shares) is recorded beside
its RSS, to tell its own memory from shared library pages; the target is on RSS.

Idle: no connector configured; after a settle period, RSS and CPU over ``--idle-window``
seconds (the agent's health report every 60 s falls inside the default window).

Forwarding: the simulated building connector is configured through the operator API, as
``tether demo`` does, polling every 100 ms (the polling of the DESIGN.md figure) and producing
``--rate`` values/s. Its building is sized so that one sample of every point per poll makes the
rate exactly (at the default 1,000/s: 100 points; the default building's 96 points would need
two samples each, 1,920/s). Once values reach the cloud and a settle period has passed: the
agent's CPU and RSS over ``--forward-window`` seconds, and the rate the cloud committed (the
growth of the streams' ``accepted`` counts over the window). Then the connector is removed, the
spool drains, and the cloud's ``dropped_on_gateway`` must be 0. The simulated connector computes
its values in the agent's process, so its CPU is counted in the agent's.

Targets (DESIGN.md): RSS ≤ 50 MiB and idle CPU ≤ 1 % of a core, judged here. Forwarding 1,000
values/s should take at most half the CPU of thingsboard-gateway doing the same; that reference
is NOT measured in this run (thingsboard-gateway needs a ThingsBoard server and a Modbus
device), so the figure is printed next to DESIGN.md's own measurement of thingsboard-gateway
(27 % of a core, 70 MiB) with its ratio, and not judged met or missed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import log_tail, output_arguments, record, run_async, work_directory
from bench.tiers import TIMEOUT, cloud_process, stop_process
from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig
from tether.gateway.identity import load_identity

#: The connector's polling, as in DESIGN.md's thingsboard-gateway figure.
POLL_INTERVAL = 0.1
RSS_TARGET_MIB = 50.0
IDLE_CPU_TARGET = 1.0  # % of one core
#: thingsboard-gateway forwarding 1,000 values/s, as DESIGN.md measured it (not in this run).
TB_CPU_PERCENT = 27.0
TB_RSS_MIB = 70.0
REFERENCE_NOTE = (
    "thingsboard-gateway forwarding 1,000 values/s at 100 ms polling: 27 % of a core, 70 MiB, "
    "1-2 % of values lost (DESIGN.md figure, not measured in this run: it needs a ThingsBoard "
    "server and a Modbus device); the forwarding CPU target (<= 1/2 of it) is not judged here"
)
#: RSS is sampled this often during a window (the figure is the highest sample).
SAMPLE_EVERY = 1.0
#: The spool has drained once the cloud's accepted count holds still this long.
QUIET = 2.0
MIB = 1 << 20
#: Lines of a log shown when a process failed.
LOG_LINES = 20

_AHU_POINTS, _VAV_POINTS, _METER_POINTS, _ZONE_POINTS = 7, 4, 2, 5


def building_config(rate: float, poll_interval: float = POLL_INTERVAL) -> dict[str, Any]:
    """The connector's config: a building of ``rate * poll_interval`` points, one sample each per
    poll. Two air handlers with six VAV boxes each when there are enough points, then zone
    sensors and meters for the rest."""
    per_poll = round(rate * poll_interval)
    base = 2 * _AHU_POINTS + 12 * _VAV_POINTS
    ahus = 2 if per_poll >= base + 4 else 0
    rest = per_poll - ahus * (_AHU_POINTS + 6 * _VAV_POINTS)
    zones, left = divmod(rest, _ZONE_POINTS)
    if left % _METER_POINTS:
        zones -= 1
        left += _ZONE_POINTS
    if per_poll < 2 or zones < 0:
        raise ValueError(f"{rate:g} values/s at {poll_interval:g} s polling: too few per poll")
    config: dict[str, Any] = {
        "seed": 1,
        "poll_interval": poll_interval,
        "rate": rate,
        "air_handlers": ahus,
        "vavs_per_ahu": 6,
        "meters": left // _METER_POINTS,
        "zone_sensors": zones,
    }
    return config


def generated_rate(config: dict[str, Any]) -> float:
    """Values per second the connector produces with this config."""
    model = BuildingModel(SimulatedBuildingConfig(**config))
    return model.point_count * model.samples_per_point() / model.config.poll_interval


def agent_env() -> dict[str, str]:
    """This environment without proxies or tether settings: the agent reaches loopback direct."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("TETHER_") and not k.upper().endswith("_PROXY")
    }


@dataclass
class AgentProcess:
    gateway_id: str
    process: subprocess.Popen[bytes]
    log: Path
    _ps: psutil.Process = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ps = psutil.Process(self.process.pid)

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = log_tail(self.log, LOG_LINES)
            raise RuntimeError(f"tether gateway run exited with {self.process.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the agent, every thread (ended ones too)."""
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def rss_mib(self) -> float:
        return float(self._ps.memory_info().rss) / MIB

    def rss_uss_mib(self) -> tuple[float, float]:
        """RSS, and the memory only this process holds (USS: no shared library pages)."""
        full = self._ps.memory_full_info()
        return float(full.rss) / MIB, float(full.uss) / MIB


def _tether(args: list[str], log: Path, *, wait: bool = False) -> subprocess.Popen[bytes]:
    """``tether ARGS`` in a process of its own, its output appended to ``log``; with ``wait``,
    waited for (bounded: killed after :data:`TIMEOUT`)."""
    argv = [str(Path(sys.executable).parent / "tether"), *args]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=agent_env()
        )
    if wait:
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)
    return process


@asynccontextmanager
async def agent_process(api: httpx.AsyncClient, directory: Path) -> AsyncIterator[AgentProcess]:
    """Enroll and run ``tether gateway run`` in its own process until it links; stopped by PID
    (SIGTERM, then SIGKILL) when the block ends."""
    response = await api.post("/api/v1/enrollment-tokens", json={"name": "bench-footprint"})
    response.raise_for_status()
    data_dir = directory / "gateway"
    log = directory / "agent.log"
    code = response.json()["enrollment_code"]
    enrolled = await asyncio.to_thread(
        _tether, ["gateway", "enroll", code, "--data-dir", str(data_dir)], log, wait=True
    )
    if enrolled.returncode != 0:
        raise RuntimeError(
            f"tether gateway enroll exited with {enrolled.returncode}:\n{log_tail(log, LOG_LINES)}"
        )
    gateway_id = load_identity(data_dir / "identity").gateway_id
    process = _tether(
        ["gateway", "run", "--data-dir", str(data_dir), "--log-level", "warning"], log
    )
    try:
        agent = AgentProcess(gateway_id, process, log)
        deadline = time.monotonic() + TIMEOUT
        while True:
            agent.check()
            listing = (await api.get("/api/v1/gateways")).json()
            if any(g["id"] == gateway_id and g["linked"] for g in listing):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent did not link:\n{log_tail(log, LOG_LINES)}")
            await asyncio.sleep(0.1)
        yield agent
    finally:
        await stop_process(process)


async def stream_totals(api: httpx.AsyncClient, gateway_id: str) -> dict[str, int]:
    """The cloud's per-stream counts for the gateway, summed over its streams."""
    response = await api.get(f"/api/v1/gateways/{gateway_id}/streams")
    response.raise_for_status()
    keys = ("accepted", "duplicates", "gaps", "dropped_on_gateway", "last_seq")
    streams: list[dict[str, Any]] = response.json()
    return {k: sum(int(s[k]) for s in streams) for k in keys}


async def set_connectors(
    api: httpx.AsyncClient, agent: AgentProcess, instances: dict[str, Any]
) -> None:
    """Configure the agent's connectors and wait (bounded) until it has applied them."""
    path = f"/api/v1/gateways/{agent.gateway_id}/config"
    put = await api.put(f"{path}/connectors", json={"instances": instances})
    put.raise_for_status()
    version = put.json()["version"]
    deadline = time.monotonic() + TIMEOUT
    while True:
        agent.check()
        response = await api.get(path)
        response.raise_for_status()
        sections: list[dict[str, Any]] = response.json()
        config = next(c for c in sections if c["section"] == "connectors")
        if config["applied_error"]:
            raise RuntimeError(f"the agent refused its connectors: {config['applied_error']}")
        if config["applied_version"] == version:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent did not apply connectors version {version}")
        await asyncio.sleep(0.1)


@dataclass
class Window:
    seconds: float
    cpu_percent: float
    rss_mib: float  # the highest sample
    uss_mib: float  # at the end of the window
    accepted: int = 0  # committed by the cloud during the window


async def window(
    agent: AgentProcess, seconds: float, api: httpx.AsyncClient | None = None
) -> Window:
    """The agent's CPU (% of a core) and highest RSS over ``seconds``; with ``api``, also how
    many values the cloud committed meanwhile."""
    before = (await stream_totals(api, agent.gateway_id))["accepted"] if api is not None else 0
    cpu0, t0 = agent.cpu_seconds(), time.monotonic()
    rss = agent.rss_mib()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(SAMPLE_EVERY, end - now))
        agent.check()
        rss = max(rss, agent.rss_mib())
    cpu1, t1 = agent.cpu_seconds(), time.monotonic()
    last_rss, uss = agent.rss_uss_mib()
    rss = max(rss, last_rss)
    after = (await stream_totals(api, agent.gateway_id))["accepted"] if api is not None else 0
    return Window(t1 - t0, 100.0 * (cpu1 - cpu0) / (t1 - t0), rss, uss, after - before)


async def wait_flowing(api: httpx.AsyncClient, agent: AgentProcess) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (await stream_totals(api, agent.gateway_id))["accepted"] == 0:
        agent.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no value reached the cloud:\n{log_tail(agent.log, LOG_LINES)}")
        await asyncio.sleep(0.2)


async def wait_drained(api: httpx.AsyncClient, agent: AgentProcess) -> dict[str, int]:
    """Wait (bounded) until the cloud's accepted count holds still for :data:`QUIET` seconds."""
    deadline = time.monotonic() + TIMEOUT
    totals = await stream_totals(api, agent.gateway_id)
    still_since = time.monotonic()
    while time.monotonic() - still_since < QUIET:
        if time.monotonic() > deadline:
            raise TimeoutError("the agent's spool did not drain")
        await asyncio.sleep(0.25)
        now = await stream_totals(api, agent.gateway_id)
        if now["accepted"] != totals["accepted"]:
            still_since = time.monotonic()
        totals = now
    return totals


@dataclass(frozen=True)
class BenchConfig:
    idle_window: float = 60.0
    forward_window: float = 60.0
    rate: float = 1000.0
    settle: float = 10.0


async def measure(config: BenchConfig, directory: Path) -> dict[str, Any]:
    connector = building_config(config.rate)
    async with cloud_process(directory) as cloud, cloud.api() as api:
        return await _measure(config, connector, api, directory)


async def _measure(
    config: BenchConfig,
    connector: dict[str, Any],
    api: httpx.AsyncClient,
    directory: Path,
) -> dict[str, Any]:
    async with agent_process(api, directory) as agent:
        await asyncio.sleep(config.settle)
        idle = await window(agent, config.idle_window)
        instances = {"building": {"connector": "simulated-building", "config": connector}}
        await set_connectors(api, agent, instances)
        await wait_flowing(api, agent)
        await asyncio.sleep(config.settle)
        forwarding = await window(agent, config.forward_window, api)
        await set_connectors(api, agent, {})
        totals = await wait_drained(api, agent)
        gateway = next(
            g for g in (await api.get("/api/v1/gateways")).json() if g["id"] == agent.gateway_id
        )
    return {
        "agent_version": gateway["agent_version"],
        "connector_config": connector,
        "generated_per_s": generated_rate(connector),
        "idle": {
            "window_s": idle.seconds,
            "rss_mib": idle.rss_mib,
            "uss_mib": idle.uss_mib,
            "cpu_percent_of_core": idle.cpu_percent,
        },
        "forwarding": {
            "window_s": forwarding.seconds,
            "rss_mib": forwarding.rss_mib,
            "uss_mib": forwarding.uss_mib,
            "cpu_percent_of_core": forwarding.cpu_percent,
            "accepted_in_window": forwarding.accepted,
            "forwarded_per_s": forwarding.accepted / forwarding.seconds,
        },
        "totals": totals,
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def judge(figures: dict[str, Any]) -> dict[str, bool]:
    """The absolute targets of DESIGN.md, and that no value was dropped."""
    return {
        "rss_idle": figures["idle"]["rss_mib"] <= RSS_TARGET_MIB,
        "rss_forwarding": figures["forwarding"]["rss_mib"] <= RSS_TARGET_MIB,
        "cpu_idle": figures["idle"]["cpu_percent_of_core"] <= IDLE_CPU_TARGET,
        "none_dropped": figures["totals"]["dropped_on_gateway"] == 0,
    }


def table(figures: dict[str, Any], rate: float) -> str:
    idle, fwd, totals = figures["idle"], figures["forwarding"], figures["totals"]
    met = judge(figures)
    cpu_ratio = fwd["cpu_percent_of_core"] / TB_CPU_PERCENT
    rss_ratio = fwd["rss_mib"] / TB_RSS_MIB
    rows = [
        (
            "RSS idle",
            f"{idle['rss_mib']:.1f} MiB",
            f"<= {RSS_TARGET_MIB:g} MiB",
            _verdict(met["rss_idle"]),
        ),
        (
            "CPU idle",
            f"{idle['cpu_percent_of_core']:.2f} % of a core",
            f"<= {IDLE_CPU_TARGET:g} %",
            _verdict(met["cpu_idle"]),
        ),
        (
            f"CPU forwarding {rate:,.0f} values/s",
            f"{fwd['cpu_percent_of_core']:.1f} % of a core",
            "<= 1/2 thingsboard-gateway's",
            f"not judged: ratio {cpu_ratio:.2f} to {TB_CPU_PERCENT:g} % (DESIGN.md figure,"
            " not measured in this run)",
        ),
        (
            "RSS forwarding",
            f"{fwd['rss_mib']:.1f} MiB",
            f"<= {RSS_TARGET_MIB:g} MiB",
            f"{_verdict(met['rss_forwarding'])}; ratio {rss_ratio:.2f} to"
            f" thingsboard-gateway's {TB_RSS_MIB:g} MiB"
            " (DESIGN.md figure, not measured in this run)",
        ),
        (
            "forwarded (cloud committed)",
            f"{fwd['forwarded_per_s']:,.0f} values/s",
            f"{rate:,.0f} asked",
            f"ratio {fwd['forwarded_per_s'] / rate:.2f}",
        ),
        (
            "dropped on the gateway",
            f"{totals['dropped_on_gateway']:,}",
            "0",
            _verdict(met["none_dropped"]),
        ),
    ]
    lines = [f"{'figure':<34}{'measured':>22}   {'target':<30} verdict"]
    lines += [f"{a:<34}{b:>22}   {c:<30} {d}" for a, b, c, d in rows]
    lines.append(
        f"(USS, memory the agent alone holds: idle {idle['uss_mib']:.1f} MiB, forwarding"
        f" {fwd['uss_mib']:.1f} MiB; not a target, RSS is)"
    )
    lines.append(
        f"(total accepted {totals['accepted']:,}, duplicates {totals['duplicates']:,},"
        f" gaps {totals['gaps']:,})"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_footprint", description=__doc__)
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds measured idle")
    parser.add_argument(
        "--forward-window", type=float, default=60.0, help="seconds measured forwarding"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="values/s to forward")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds waited before each window"
    )
    output_arguments(parser, "agent_footprint")
    args = parser.parse_args(argv)
    if args.idle_window <= 0 or args.forward_window <= 0 or args.settle < 0:
        parser.error("the windows must be positive and --settle not negative")
    try:
        connector = building_config(args.rate)
    except ValueError as exc:
        parser.error(str(exc))
    if not math.isclose(generated_rate(connector), args.rate, rel_tol=0.01):
        parser.error(f"--rate {args.rate:g}: not a whole number of values per 100 ms poll")
    config = BenchConfig(args.idle_window, args.forward_window, args.rate, args.settle)

    print(
        f"agent footprint: idle {config.idle_window:g} s, then forwarding {config.rate:,.0f}"
        f" values/s at {POLL_INTERVAL * 1000:.0f} ms polling for {config.forward_window:g} s"
        f" (settle {config.settle:g} s before each); agent in its own process, cloud on SQLite"
    )
    with work_directory("tether-bench-agent-", args.dir) as directory:
        try:
            figures = _run(measure(config, directory))
        except BaseException:
            for name in ("agent.log", "cloud.log"):
                if text := log_tail(directory / name, LOG_LINES):
                    print(f"--- {name} (last lines)\n{text}", file=sys.stderr)
            raise
    print(table(figures, config.rate))
    print(f"reference: {REFERENCE_NOTE}")
    met = judge(figures)
    if not args.no_record:
        path = record(
            "agent_footprint",
            {
                "parameters": {
                    "idle_window_s": config.idle_window,
                    "forward_window_s": config.forward_window,
                    "rate_per_s": config.rate,
                    "poll_interval_s": POLL_INTERVAL,
                    "settle_s": config.settle,
                },
                "agent_version": figures.pop("agent_version"),
                "targets": {
                    "rss_mib": RSS_TARGET_MIB,
                    "idle_cpu_percent_of_core": IDLE_CPU_TARGET,
                    "forwarding_cpu": "<= 1/2 of thingsboard-gateway's (not judged here)",
                },
                "target_met": met,
                "reference": {
                    "thingsboard_gateway_cpu_percent_of_core": TB_CPU_PERCENT,
                    "thingsboard_gateway_rss_mib": TB_RSS_MIB,
                    "note": REFERENCE_NOTE,
                    "forwarding_cpu_ratio": figures["forwarding"]["cpu_percent_of_core"]
                    / TB_CPU_PERCENT,
                },
                "figures": figures,
            },
            results=args.results,
        )
        print(f"recorded in {path}")
    return 0 if met["none_dropped"] else 1


def _run(coro: Any) -> dict[str, Any]:
    """On uvloop, as ``tether`` itself runs; SIGTERM stops it as Ctrl-C does."""
    result: dict[str, Any] = run_async(coro, "agent_footprint")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
