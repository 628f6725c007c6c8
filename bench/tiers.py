"""Link tier benchmark: command latency on each tier, side by side, as ratios to the WebSocket.

One cloud (``tether cloud serve`` in its own process, SQLite, loopback TLS 1.3) and three agents
in this process, each pinned to one tier: ``ws`` (one WebSocket), ``long-poll`` (an HTTPS
request always held open) and ``poll`` (an HTTPS request every ``--poll-interval`` seconds; the
default tier-3 interval is 15 minutes, here it is cut to the 1 s minimum so the figure is
measurable). Rounds alternate the tiers (ws, long-poll, poll, ws...), one ``ping`` at a time.

A command's latency is the cloud's own ``finished_at - created_at``: from the operator API
accepting it to the cloud recording the agent's outcome, both on the cloud's clock, so how
often this process looks at the command does not enter the figure. Before each command on the
poll tier the bench waits a random fraction of the poll interval, so the figure samples the
poll's phase uniformly instead of always landing just after a poll (the agent also fetches what
waits for it whenever it posts, e.g. a command's outcome or a health report); on the other
tiers it waits up to 50 ms.

Reference: the WebSocket tier measured in the same run; long-poll should be of the same order,
poll about half its interval at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import output_arguments, record, run_async, work_directory
from tether.gateway.agent import Agent
from tether.gateway.identity import enroll
from tether.gateway.settings import load_agent_settings

TIERS = ("ws", "long-poll", "poll")
#: The bound of every wait for the cloud or a command (a busy machine, not a target).
TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CloudProcess:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    def api(self) -> httpx.AsyncClient:
        token = (self.data_dir / "admin.token").read_text().strip()
        return httpx.AsyncClient(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=TIMEOUT,
        )


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TETHER_DATABASE_URL"}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this bench started, by its PID: SIGTERM, then SIGKILL after a while."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, TIMEOUT)


@asynccontextmanager
async def cloud_process(directory: Path) -> AsyncIterator[CloudProcess]:
    """``tether cloud serve`` on a free loopback port until the block ends (stopped by PID)."""
    script = Path(sys.executable).parent / "tether"
    data_dir = directory / "cloud"
    port = _free_port()
    argv = [
        str(script),
        "cloud",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--hostname",
        "127.0.0.1",
        "--database-url",
        f"sqlite+aiosqlite:///{(data_dir / 'tether.db').resolve()}",
        "--log-level",
        "warning",
    ]
    process = _spawn(argv, directory / "cloud.log")
    cloud = CloudProcess(f"https://127.0.0.1:{port}", data_dir, process)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tether cloud serve exited with {process.returncode}")
            if cloud.ca_path.exists() and (data_dir / "admin.token").exists():
                with contextlib.suppress(httpx.TransportError):
                    async with cloud.api() as api:
                        if (await api.get("/.well-known/tether/hello")).status_code == 200:
                            break
            if time.monotonic() > deadline:
                raise TimeoutError("tether cloud serve did not answer")
            await asyncio.sleep(0.1)
        yield cloud
    finally:
        await stop_process(process)


@dataclass
class PinnedAgent:
    tier: str
    agent: Agent
    task: asyncio.Task[None]
    stop: asyncio.Event


async def start_agent(
    cloud: CloudProcess, api: httpx.AsyncClient, directory: Path, tier: str, poll_interval: float
) -> PinnedAgent:
    response = await api.post("/api/v1/enrollment-tokens", json={"name": f"bench-{tier}"})
    response.raise_for_status()
    data_dir = directory / tier
    settings = load_agent_settings(
        data_dir, tier=tier, trust_env=False, poll_interval=poll_interval, reconnect_cap=1.0
    )
    identity = await enroll(
        response.json()["enrollment_code"], settings.identity_dir, trust_env=False
    )
    agent = Agent(settings, identity)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    linked = asyncio.get_running_loop().create_task(agent.linked.wait())
    done, _ = await asyncio.wait({linked, task}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    linked.cancel()
    if linked not in done:
        raise RuntimeError(f"the {tier} agent did not link: {agent.status.last_error}")
    if agent.status.tier != tier:
        raise RuntimeError(f"the agent pinned to {tier} linked on {agent.status.tier}")
    return PinnedAgent(tier, agent, task, stop)


async def one_command(api: httpx.AsyncClient, gateway_id: str) -> float:
    """Send a ping, wait for its outcome; the cloud's ``finished_at - created_at`` in seconds."""
    response = await api.post(f"/api/v1/gateways/{gateway_id}/commands", json={"kind": "ping"})
    response.raise_for_status()
    command_id = response.json()["id"]
    deadline = time.monotonic() + TIMEOUT
    while True:
        command: dict[str, Any] = (await api.get(f"/api/v1/commands/{command_id}")).json()
        if command["state"] == "succeeded":
            break
        if command["state"] in {"failed", "expired", "cancelled"}:
            raise RuntimeError(f"ping {command_id} ended {command['state']}: {command['error']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"ping {command_id} still {command['state']}")
        await asyncio.sleep(0.01)
    created = datetime.fromisoformat(command["created_at"])
    finished = datetime.fromisoformat(command["finished_at"])
    return (finished - created).total_seconds()


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of at least one sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


async def measure(commands: int, poll_interval: float, directory: Path) -> dict[str, list[float]]:
    rng = random.Random()
    samples: dict[str, list[float]] = {tier: [] for tier in TIERS}
    async with cloud_process(directory) as cloud, cloud.api() as api:
        agents: list[PinnedAgent] = []
        try:
            for tier in TIERS:
                agents.append(await start_agent(cloud, api, directory, tier, poll_interval))
            for _ in range(commands):
                for pinned in agents:
                    gap = poll_interval if pinned.tier == "poll" else 0.05
                    await asyncio.sleep(rng.uniform(0.0, gap))
                    latency = await one_command(api, pinned.agent.identity.gateway_id)
                    samples[pinned.tier].append(latency)
        finally:
            for pinned in agents:
                pinned.stop.set()
            for pinned in agents:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pinned.task, TIMEOUT)
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    for tier in TIERS:
        xs = samples[tier]
        figures[tier] = {
            "commands": len(xs),
            "p50_ms": 1000 * statistics.median(xs),
            "p99_ms": 1000 * percentile(xs, 99),
            "mean_ms": 1000 * statistics.fmean(xs),
            "max_ms": 1000 * max(xs),
            "samples_ms": [round(1000 * x, 3) for x in xs],
        }
    ws = figures["ws"]
    for tier in TIERS:
        figures[tier]["ratio_p50"] = figures[tier]["p50_ms"] / ws["p50_ms"]
        figures[tier]["ratio_p99"] = figures[tier]["p99_ms"] / ws["p99_ms"]
    return figures


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'tier':<12}{'p50 ms':>10}{'p99 ms':>10}{'p50 / ws':>11}{'p99 / ws':>11}",
    ]
    for tier in TIERS:
        f = figures[tier]
        lines.append(
            f"{tier:<12}{f['p50_ms']:>10.1f}{f['p99_ms']:>10.1f}"
            f"{f['ratio_p50']:>11.2f}{f['ratio_p99']:>11.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers", description=__doc__)
    parser.add_argument("--commands", type=int, default=100, help="pings per tier")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="tier 3 interval (s, at least 1)"
    )
    output_arguments(parser, "tiers")
    args = parser.parse_args(argv)
    if args.commands < 1 or args.poll_interval < 1.0:
        parser.error("--commands must be at least 1 and --poll-interval at least 1 s")

    print(
        f"command latency: {args.commands} pings per tier, one at a time, rounds alternating the"
        f" tiers; poll interval {args.poll_interval:g} s; cloud's finished_at - created_at"
    )
    with work_directory("tether-bench-tiers-", args.dir) as directory:
        samples = _run(measure(args.commands, args.poll_interval, directory))
    figures = summarise(samples)
    print(table(figures))
    if not args.no_record:
        path = record(
            "tiers",
            {
                "commands_per_tier": args.commands,
                "poll_interval_s": args.poll_interval,
                "latency": "cloud finished_at - created_at of a ping, one command at a time",
                "reference": "ws",
                "figures": figures,
            },
            results=args.results,
        )
        print(f"recorded in {path}")
    return 0


def _run(coro: Any) -> dict[str, list[float]]:
    """On uvloop, as ``tether`` itself runs; SIGTERM stops it as Ctrl-C does."""
    result: dict[str, list[float]] = run_async(coro, "tiers")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
