"""Link scale: 100,000 mutual-TLS links held by one cloud over worker processes sharing its port.

DESIGN.md asks for 100,000 links on this machine over worker processes sharing the port, and a
process here may hold at most 20,000 descriptors. ``tether cloud serve --workers W`` runs W
processes that each listen on the same port (SO_REUSEPORT: the kernel spreads new connections
over them) on PostgreSQL, the store several processes share: a throwaway cluster on loopback,
started by the bench as the test suite starts it. The load processes are those of
:mod:`bench.link_capacity` (uvloop, the real link protocol over aiohttp's WebSocket client, one
client certificate per link, 5,000 links per process); they dial from several loopback source
addresses, as one source address has only about 28,000 ephemeral ports.

Phases, each figure summed over the cloud's processes:
* connect every link: the time, failures, and the cloud's CPU per handshake;
* the cloud's memory per link (all processes' RSS after, minus before, over the links), and how
  the links spread over the workers (each worker's open descriptors, after minus before);
* idle CPU holding every link over two heartbeat intervals, also per link and heartbeat;
* command push latency: the operator API's ``POST /api/v1/gateways/{id}/commands`` start → the
  ``CommandRequest`` at the gateway. The POST lands on whichever worker the kernel picks, mostly
  not the one holding the link, so most commands cross processes by PostgreSQL LISTEN/NOTIFY;
* every link counted open at the end, and the links lost while held, by reason.

The target is absolute: every link connected, and every one still held at the end. The other
figures are recorded to set beside :mod:`bench.link_capacity`'s single process, not judged.

Run: ``python -m bench link_scale`` (100,000 links over 6 workers, about 10 minutes), or
``python -m bench.link_scale --links 2000 --cloud-workers 2 --heartbeat 5``;
``--keep DIR`` keeps the cloud's logs and data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil

import bench
from bench.link_capacity import (
    HOST,
    MAX_LINKS_PER_PROCESS,
    STORM_DEADLINE,
    BenchError,
    Fleet,
    WorkerSpec,
    _lost,
    cpu_seconds_fine,
    free_port,
    issue_identities,
    percentile,
    raise_fd_limit,
    register_gateways,
    server_process,
    settle_cpu,
    wait_ready,
)
from tether.pki.ca import CertificateAuthority
from tether.pki.estclient import client_ssl_context

__all__ = ["ScaleConfig", "ScaleFigures", "main", "run"]

#: Ephemeral ports of one source address (Linux's default range is 32768-60999), with room.
PORTS_PER_SOURCE = 25_000
#: Each worker's pool (5 + 10 overflow), its listener and its two ingest writers, with room.
PG_CONNECTIONS_PER_WORKER = 24


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    links: int = 100_000
    #: The cloud's worker processes sharing the port.
    cloud_workers: int = 6
    heartbeat: float = 30.0
    #: Idle CPU window; default two heartbeat intervals.
    idle_window: float | None = None
    samples: int = 200
    #: Seconds between two latency samples.
    pause: float = 0.02
    links_per_process: int = 5_000
    concurrency: int = 200
    #: Loopback source addresses the load processes dial from (127.0.0.2, 127.0.0.3, …).
    source_addresses: int = 8
    #: Where ``link_scale.json`` is written; None writes nothing.
    results: Path | None = bench.RESULTS
    seed: int = 1
    quiet: bool = False
    #: Keep the cloud's logs and data in this new directory (else a temporary one is removed).
    keep: Path | None = None

    @property
    def window(self) -> float:
        return self.idle_window if self.idle_window is not None else 2 * self.heartbeat

    @property
    def load_processes(self) -> int:
        return max(1, math.ceil(self.links / self.links_per_process))

    @property
    def connect_timeout(self) -> float:
        return max(120.0, self.links * 0.05)

    def check(self) -> None:
        if self.links < 1 or self.samples < 1 or self.concurrency < 1:
            raise BenchError("links, samples and concurrency must be at least 1")
        if not 1 <= self.cloud_workers <= 64:
            raise BenchError("cloud workers must be within 1..64")
        # The kernel spreads connections by a hash, not evenly: keep a tenth in reserve.
        if self.links > self.cloud_workers * MAX_LINKS_PER_PROCESS * 0.9:
            raise BenchError(
                f"{self.links} links need more than {self.cloud_workers} cloud workers "
                f"(at most {MAX_LINKS_PER_PROCESS} descriptors' worth of links each)"
            )
        if not 1 <= self.links_per_process <= MAX_LINKS_PER_PROCESS:
            raise BenchError(f"links_per_process must be within 1..{MAX_LINKS_PER_PROCESS}")
        if not 1 <= self.source_addresses <= 200:
            raise BenchError("source addresses must be within 1..200")
        if self.links > self.source_addresses * PORTS_PER_SOURCE:
            raise BenchError(
                f"{self.links} links need more than {self.source_addresses} source addresses "
                f"({PORTS_PER_SOURCE} ports each)"
            )
        if self.heartbeat < 1:
            raise BenchError("the heartbeat interval must be at least 1 s (the cloud's minimum)")
        if self.window <= 0 or not 0 <= self.pause <= 10:
            raise BenchError("the idle window must be positive and the pause within [0, 10] s")


@dataclass(slots=True)
class ScaleFigures:
    links: int
    cloud_workers: int
    connected: int = 0
    failed: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_seconds: float = 0.0
    #: Links per worker, from each worker's open descriptors (after connect minus before).
    links_per_worker: list[int] = field(default_factory=list)
    rss_before_bytes: int = 0
    rss_after_bytes: int = 0
    rss_per_link_kib: float = 0.0
    handshake_cpu_ms: float = 0.0
    idle_window_s: float = 0.0
    #: Percent of one core, all the cloud's processes together.
    idle_cpu_percent: float = 0.0
    #: The idle CPU over the heartbeats every link exchanged in the window.
    idle_cpu_us_per_heartbeat: float = 0.0
    open_after_idle: int = 0
    latency_kind: str = "API POST start → CommandRequest at the gateway (any worker → any worker)"
    latency_samples: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    open_at_end: int = 0
    #: Links that ended while held, by reason.
    lost: dict[str, int] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return (
            self.connected == self.links
            and self.open_at_end == self.links
            and not self.lost
            and self.latency_samples > 0
        )


def progress(config: ScaleConfig, text: str) -> None:
    if not config.quiet:
        print(
            f"[link_scale {time.monotonic() - _STARTED:7.1f} s] {text}", file=sys.stderr, flush=True
        )


_STARTED = time.monotonic()


# -- the cloud's processes -----------------------------------------------------------------


class Cloud:
    """The ``tether cloud serve --workers W`` process tree: its parent and its workers."""

    def __init__(self, pid: int, port: int) -> None:
        self.parent = psutil.Process(pid)
        self.port = port
        self.workers: list[psutil.Process] = []

    def find_workers(self) -> int:
        """The processes that listen on the port: the children (not, say, multiprocessing's
        helpers), or with one worker the parent itself."""
        found = []
        for child in (self.parent, *self.parent.children()):
            with contextlib.suppress(psutil.Error):
                if any(
                    c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                    for c in child.net_connections(kind="tcp")
                ):
                    found.append(child)
        self.workers = found
        return len(found)

    def processes(self) -> list[psutil.Process]:
        """Every process of the tree (the parent, the workers, any helper)."""
        with contextlib.suppress(psutil.Error):
            return [self.parent, *self.parent.children(recursive=True)]
        return [self.parent]

    def cpu(self) -> float:
        return sum(cpu_seconds_fine(p.pid) for p in self.processes())

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_info().rss)
        return total

    def descriptors(self) -> list[int]:
        out = []
        for proc in self.workers:
            try:
                out.append(proc.num_fds())
            except psutil.Error:
                out.append(0)
        return out

    def alive(self) -> bool:
        return all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in self.workers)

    async def settle(self, *, quiet: float = 0.15, step: float = 0.25, limit: float = 60.0) -> None:
        """Wait (at most *limit* s) until the tree uses under *quiet* of a core over *step* s."""
        await settle_cpu(self.cpu, quiet=quiet, step=step, limit=limit)


async def wait_workers(cloud: Cloud, count: int, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cloud.find_workers() >= count:
            return
        if not cloud.parent.is_running():
            raise BenchError("the cloud exited while its workers started")
        await asyncio.sleep(0.25)
    raise BenchError(f"only {len(cloud.workers)} of {count} cloud workers listen after {limit} s")


# -- the run -------------------------------------------------------------------------------


def _specs(
    config: ScaleConfig, port: int, ca_path: Path, gateways: Sequence[tuple[str, str]]
) -> list[WorkerSpec]:
    n = config.load_processes
    share = max(1, config.concurrency // n)
    link_timeout = 60.0
    lifetime = config.connect_timeout + 4 * config.window + link_timeout + 600
    return [
        WorkerSpec(
            kind="tether",
            host=HOST,
            port=port,
            ca_path=str(ca_path),
            links=tuple(gateways[i::n]),
            heartbeat=config.heartbeat,
            concurrency=share,
            link_timeout=link_timeout,
            lifetime=lifetime,
            seed=config.seed + i,
            storm_deadline=STORM_DEADLINE,
            local_host=f"127.0.0.{2 + i % config.source_addresses}",
        )
        for i in range(n)
    ]


async def measure(
    config: ScaleConfig,
    cloud: Cloud,
    specs: Sequence[WorkerSpec],
    push: Callable[[Fleet], Any],
) -> ScaleFigures:
    figures = ScaleFigures(links=config.links, cloud_workers=config.cloud_workers)
    async with Fleet(specs) as fleet:
        await fleet.gather("ready", limit=120 + config.links * 0.01)
        progress(config, f"{len(specs)} load processes ready")
        await cloud.settle()
        figures.rss_before_bytes = cloud.rss()
        fds_before = cloud.descriptors()
        cpu_before = cloud.cpu()
        fleet.broadcast("go")
        connected = await fleet.gather("connected", limit=config.connect_timeout)
        figures.connected = sum(m[1] for m in connected)
        figures.failed = sum(m[2] for m in connected)
        figures.connect_errors = [e for m in connected for e in m[3]][:10]
        figures.connect_seconds = max(m[4] for m in connected)
        if figures.connected == 0:
            raise BenchError(f"no link connected: {figures.connect_errors}")
        progress(
            config,
            f"{figures.connected} links connected in {figures.connect_seconds:.1f} s"
            + (
                f", {figures.failed} failed: {figures.connect_errors[:3]}" if figures.failed else ""
            ),
        )
        await cloud.settle()
        figures.handshake_cpu_ms = (cloud.cpu() - cpu_before) / figures.connected * 1e3
        figures.rss_after_bytes = cloud.rss()
        figures.rss_per_link_kib = (
            (figures.rss_after_bytes - figures.rss_before_bytes) / figures.connected / 1024
        )
        figures.links_per_worker = [
            after - before for after, before in zip(cloud.descriptors(), fds_before, strict=True)
        ]
        progress(
            config,
            f"{figures.rss_per_link_kib:.1f} KiB and {figures.handshake_cpu_ms:.2f} ms CPU "
            f"per link; links per worker {figures.links_per_worker}",
        )
        idle_start, idle_cpu = time.monotonic(), cloud.cpu()
        await asyncio.sleep(config.window)
        idle_cpu = cloud.cpu() - idle_cpu
        figures.idle_window_s = time.monotonic() - idle_start
        figures.idle_cpu_percent = idle_cpu / figures.idle_window_s * 100
        heartbeats = figures.connected * figures.idle_window_s / config.heartbeat
        figures.idle_cpu_us_per_heartbeat = idle_cpu / heartbeats * 1e6
        progress(config, f"idle: {figures.idle_cpu_percent:.2f} % of a core")
        fleet.broadcast("status")
        figures.open_after_idle = sum(m[1] for m in await fleet.gather("status", limit=120))
        try:
            latencies: list[float] = await push(fleet)
        except BenchError as exc:
            fleet.broadcast("status")
            status = await fleet.gather("status", limit=120)
            raise BenchError(
                f"{exc}; {sum(m[1] for m in status)} links open, lost: {_lost(status)}"
            ) from None
        figures.latency_samples = len(latencies)
        figures.latency_p50_ms = percentile(latencies, 50) * 1e3
        figures.latency_p99_ms = percentile(latencies, 99) * 1e3
        figures.latency_max_ms = max(latencies) * 1e3
        progress(
            config,
            f"{len(latencies)} pushes: p50 {figures.latency_p50_ms:.2f} ms, "
            f"p99 {figures.latency_p99_ms:.2f} ms",
        )
        fleet.broadcast("status")
        status = await fleet.gather("status", limit=120)
        figures.open_at_end = sum(m[1] for m in status)
        figures.lost = _lost(status)
        if not cloud.alive():
            raise BenchError("a cloud worker died during the run")
        fleet.broadcast("stop")
        await fleet.gather("stopped", limit=300)
    progress(config, "load processes stopped")
    return figures


async def _run(config: ScaleConfig) -> dict[str, Any]:
    # The test suite's throwaway PostgreSQL (here, not at the top: only the run needs it).
    from tests.support.postgres import PostgresServer, _Cluster, find_postgres_bin

    raise_fd_limit()
    if config.keep is not None:
        config.keep.mkdir(parents=True, exist_ok=False)
    with (
        contextlib.nullcontext(str(config.keep))
        if config.keep is not None
        else tempfile.TemporaryDirectory(prefix="bench-scale-")
    ) as tmp:
        work = Path(tmp)
        data_dir = work / "cloud"
        ca = CertificateAuthority.load_or_create(data_dir / "pki")
        ids, certs = issue_identities(ca, work / "creds", config.links)
        progress(config, f"{config.links} client certificates issued")
        cluster = _Cluster(
            find_postgres_bin(),
            {"max_connections": str(PG_CONNECTIONS_PER_WORKER * config.cloud_workers + 20)},
        )
        try:
            server = PostgresServer(host=HOST, port=cluster.start(), user="postgres")
            url = await server.create_database()
            await register_gateways(url, certs)
            progress(config, f"{len(certs)} gateways registered in PostgreSQL")
            figures = await _serve_and_measure(config, work, url, ids.ca_path, ids.gateways)
        finally:
            cluster.stop()
    return {
        "parameters": {
            "links": config.links,
            "cloud_workers": config.cloud_workers,
            "heartbeat_s": config.heartbeat,
            "idle_window_s": config.window,
            "latency_samples": config.samples,
            "latency_pause_s": config.pause,
            "load_processes": config.load_processes,
            "source_addresses": config.source_addresses,
            "connect_concurrency": config.concurrency,
            "store": "postgresql (throwaway cluster on loopback, fsync off)",
        },
        "figures": asdict(figures),
        "target": "every link connected and held to the end (DESIGN.md: 100,000 links over "
        "worker processes sharing the port)",
        "met": figures.met,
    }


async def _serve_and_measure(
    config: ScaleConfig,
    work: Path,
    url: str,
    ca_path: Path,
    gateways: Sequence[tuple[str, str]],
) -> ScaleFigures:
    data_dir = work / "cloud"
    port = free_port()
    toml = work / "cloud.toml"
    toml.write_text(f"[link]\nheartbeat_interval = {config.heartbeat}\n")
    tether = Path(sys.executable).with_name("tether")
    argv = [
        str(tether if tether.exists() else "tether"),
        "cloud",
        "serve",
        "--config",
        str(toml),
        "--data-dir",
        str(data_dir),
        "--database-url",
        url,
        "--port",
        str(port),
        "--hostname",
        HOST,
        "--workers",
        str(config.cloud_workers),
    ]
    base = f"https://{HOST}:{port}"
    log_path = work / "cloud.log"
    with server_process(argv, log_path) as proc:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca_path))
        ) as http:

            async def probe() -> bool:
                async with http.get(f"{base}/.well-known/tether/hello") as response:
                    return response.status == 200

            await wait_ready(proc, probe, log_path)
            cloud = Cloud(proc.pid, port)
            await wait_workers(cloud, config.cloud_workers)
            progress(config, f"cloud ready: {len(cloud.workers)} workers on port {port}")
            token = (data_dir / "admin.token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}

            async def push(fleet: Fleet) -> list[float]:
                rng = random.Random(config.seed)
                out: list[float] = []
                for _ in range(config.samples):
                    gateway_id = rng.choice(gateways)[0]
                    started = time.monotonic()
                    async with http.post(
                        f"{base}/api/v1/gateways/{gateway_id}/commands",
                        json={"kind": "ping", "args": {}},
                        headers=headers,
                    ) as response:
                        body = await response.json()
                        if response.status // 100 != 2:
                            raise BenchError(f"command refused ({response.status}): {body}")
                    arrived = await fleet.arrival(body["id"], 30)
                    out.append(arrived - started)
                    await asyncio.sleep(config.pause)
                return out

            return await measure(config, cloud, _specs(config, port, ca_path, gateways), push)


def format_table(config: ScaleConfig, f: ScaleFigures) -> str:
    rows = [
        ("links connected", f"{f.connected:,} of {f.links:,} ({f.failed} failed)"),
        ("cloud worker processes", f"{f.cloud_workers}"),
        ("links per worker", ", ".join(f"{n:,}" for n in f.links_per_worker)),
        ("time to connect every link", f"{f.connect_seconds:.1f} s"),
        ("memory per link (all processes)", f"{f.rss_per_link_kib:.1f} KiB"),
        ("CPU per handshake", f"{f.handshake_cpu_ms:.2f} ms"),
        (
            f"idle CPU, heartbeat {config.heartbeat:g} s",
            f"{f.idle_cpu_percent:.2f} % of a core ({f.idle_cpu_us_per_heartbeat:.0f} µs per "
            "heartbeat)",
        ),
        (
            "command push, API → gateway",
            f"p50 {f.latency_p50_ms:.2f} ms, p99 {f.latency_p99_ms:.2f} ms "
            f"({f.latency_samples} samples)",
        ),
        ("links open at the end", f"{f.open_at_end:,}" + (f" (lost: {f.lost})" if f.lost else "")),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    verdict = "met" if f.met else "NOT met"
    lines.append(f"{'target: every link held':<{width}}  {verdict}")
    return "\n".join(lines)


def run(config: ScaleConfig) -> dict[str, Any]:
    """Run the benchmark; print the table, write the results file, return what was recorded."""
    config.check()
    result = bench.run_async(_run(config), "link_scale")
    figures = ScaleFigures(**{k: v for k, v in result["figures"].items()})
    if not config.quiet:
        print(format_table(config, figures))
    if config.results is not None:
        path = bench.record("link_scale", result, results=config.results)
        if not config.quiet:
            print(f"recorded in {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.link_scale", description=__doc__)
    defaults = ScaleConfig()
    parser.add_argument("--links", type=int, default=defaults.links)
    parser.add_argument("--cloud-workers", type=int, default=defaults.cloud_workers)
    parser.add_argument("--heartbeat", type=float, default=defaults.heartbeat)
    parser.add_argument("--idle-window", type=float, default=None, help="default 2 heartbeats")
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--pause", type=float, default=defaults.pause)
    parser.add_argument("--links-per-process", type=int, default=defaults.links_per_process)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--source-addresses", type=int, default=defaults.source_addresses)
    parser.add_argument("--results", type=Path, default=bench.RESULTS, help="a directory")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this new directory")
    parsed = parser.parse_args(args)
    config = replace(
        defaults,
        links=parsed.links,
        cloud_workers=parsed.cloud_workers,
        heartbeat=parsed.heartbeat,
        idle_window=parsed.idle_window,
        samples=parsed.samples,
        pause=parsed.pause,
        links_per_process=parsed.links_per_process,
        concurrency=parsed.concurrency,
        source_addresses=parsed.source_addresses,
        results=parsed.results,
        keep=parsed.keep,
    )
    try:
        run(config)
    except BenchError as exc:
        print(f"link_scale: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Through the package name, so the load processes (spawned) find the same functions.
    from bench.link_scale import main as _main

    raise SystemExit(_main())
