"""Telemetry ingest benchmark: observations/s into the cloud's committed store, next to a raw
bulk insert of the same rows into the same kind of store, measured in the same run.

The cloud is ``tether cloud serve`` in its own process (SQLite by default, PostgreSQL with
``--postgres``); K gateways each have N observations of a simulated building to deliver, and
their discovery (96 points each) is stored first, so every commit also moves the points' latest
values as in production. Two ways of delivering (``--mode``):

* ``replay``: one load process holds K real mutual-TLS links and replays the gateways' batches
  from memory with the agent's window of batches in flight: the cloud's ingest, isolated (the
  DESIGN.md target is about this one);
* ``agents``: K ``tether gateway run`` processes, each replaying its durable spool pre-filled
  with the N observations: end to end, the gateways' spool reads and acknowledged deletes
  included, on the same cores as the cloud.

The rate is committed rows over the steady part of a run (from 10 % to 90 % of all rows), read
from the store itself (the per-stream ``accepted`` counters, written in the same transaction as
the rows). After each run the store must hold every observation exactly once, or the run fails.

Reference: ``TelemetryStore.raw_insert`` (the store's bulk path and nothing else: no link, no
validation, no dedup, no latest values) of the same rows into a fresh database of the same kind,
in transactions of what one gateway keeps in flight and of the ingest's largest group; measured
before each round of runs and once after them, median per size, the faster size counts.

Rounds (``--rounds``, 3 by default): each measures the reference, then each way of delivering
once, so that the two interleave on a machine whose speed drifts. A way of delivering is judged
by its median run; every run's rate is recorded.

Targets: ≥ 50 % of the reference (the telemetry issue), ≥ 70 % (DESIGN.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench import ratio_line, record, run_async
from tether.cloud.ingest import IngestPipeline
from tether.cloud.store import Store
from tether.cloud.store.telemetry import TelemetryStore
from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig
from tether.gateway.identity import GatewayIdentity, enroll
from tether.gateway.settings import UPLOAD_WINDOW
from tether.gateway.spool import Spool
from tether.protocol.codec import encode_frame
from tether.protocol.messages import (
    CloseCode,
    Discovery,
    DiscoveryAck,
    ErrorReport,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.session import (
    FrameRejected,
    HelloReceived,
    LinkClosed,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)
from tether.protocol.telemetry import Observation

TARGET_ISSUE = 0.5
TARGET_DESIGN = 0.7
T0 = 1_718_000_000.0
STREAM = "sim"
#: The most rows the cloud's ingest commits in one transaction (IngestPipeline's default).
DEFAULT_GROUP_ROWS: int = (IngestPipeline.__init__.__kwdefaults__ or {})["max_rows"]


MODES = ("replay", "agents")


@dataclass
class Options:
    modes: tuple[str, ...] = MODES
    agents: int = 4
    observations: int = 200_000  # per agent
    upload_batch: int = 2000
    upload_window: int = UPLOAD_WINDOW  # the agent's
    #: Each round measures the reference, then each way of delivering once; the reference is
    #: measured once more at the end. Figures are medians over the rounds: one run on a shared
    #: 2-core machine varies by a fifth from the next.
    rounds: int = 3
    timeout: float = 600.0
    postgres: bool = False
    directory: Path | None = None
    quiet: bool = False


@dataclass
class Sample:
    t: float
    committed: int
    cloud_cpu: float
    senders_cpu: float


@dataclass
class Run:
    """One delivery run: committed rows/s over the steady window and where the CPU went."""

    mode: str
    rate: float
    window_seconds: float
    total_seconds: float
    cloud_cpu: float  # cores, over the window
    senders_cpu: float  # cores: the agent processes, or the load process


@dataclass
class Outcome:
    database: str
    rows: int
    runs: list[Run]
    reference_rates: dict[str, list[float]] = field(default_factory=dict)

    @property
    def reference_rate(self) -> float:
        return max(statistics.median(v) for v in self.reference_rates.values() if v)

    def median_run(self, mode: str) -> tuple[Run, list[Run]]:
        """The run of *mode* with the median rate (the lower one of an even count), and all."""
        runs = sorted((r for r in self.runs if r.mode == mode), key=lambda r: r.rate)
        return runs[(len(runs) - 1) // 2], runs


# --- data -------------------------------------------------------------------------------------


def building_observations(count: int, seed: int) -> list[Observation]:
    """``count`` observations: consecutive polls of a default simulated building."""
    model = BuildingModel(SimulatedBuildingConfig(seed=seed))
    out: list[Observation] = []
    t = T0
    while len(out) < count:
        out += model.observations_at(t)
        t += 1.0
    return out[:count]


def prefill(spool_path: Path, observations: list[Observation], chunk: int = 1000) -> None:
    spool = Spool.open(spool_path, max_bytes=1 << 40, max_age=1e12, synchronous="normal")
    try:
        for i in range(0, len(observations), chunk):
            spool.append(STREAM, observations[i : i + chunk], now=time.time())
    finally:
        spool.close()


def store_rows(gateway_id: str, observations: list[Observation]) -> list[tuple[Any, ...]]:
    """The rows ingest writes for these observations (see TelemetryStore)."""
    rows: list[tuple[Any, ...]] = []
    for o in observations:
        value = o.value
        if isinstance(value, bool | int | float):
            num, text = float(value), None
        else:
            num, text = None, str(value)
        rows.append((gateway_id, o.point_id, o.ts, num, text, o.quality))
    return rows


# --- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tether() -> str:
    return str(Path(sys.executable).parent / "tether")


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k != "TETHER_DATABASE_URL"
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CloudServer:
    """``tether cloud serve`` on a free loopback port."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [_tether(), "cloud", "serve", "--data-dir", str(self.data_dir)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--hostname", "127.0.0.1"]
        argv += ["--database-url", self.database_url, "--log-level", "warning"]
        self.process = _spawn(argv, self.data_dir.parent / "cloud.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tether cloud serve exited ({self.process.returncode})")
            if (self.data_dir / "pki" / "ca.pem").exists():
                try:
                    async with self.api() as api:
                        if (await api.get("/.well-known/tether/hello")).status_code == 200:
                            return
                except httpx.TransportError:
                    pass
            await asyncio.sleep(0.1)
        raise TimeoutError("tether cloud serve did not answer within 60 s")

    def api(self) -> httpx.AsyncClient:
        token_file = self.data_dir / "admin.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        return httpx.AsyncClient(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.data_dir / "pki" / "ca.pem")),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        )

    def stop(self) -> None:
        _terminate(self.process)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, env=_clean_env())


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(20)


async def _enroll(cloud: CloudServer, data_dir: Path, name: str) -> GatewayIdentity:
    async with cloud.api() as api:
        response = await api.post("/api/v1/enrollment-tokens", json={"name": name})
        response.raise_for_status()
        code = response.json()["enrollment_code"]
    return await enroll(code, data_dir / "identity", trust_env=False)


def _start_agent(data_dir: Path, options: Options) -> subprocess.Popen[bytes]:
    (data_dir / "agent.toml").write_text(
        'tier = "ws"\ntrust_env = false\n'
        f"spool_max_bytes = {1 << 40}\n"
        f"upload_batch = {options.upload_batch}\nupload_window = {options.upload_window}\n"
    )
    argv = [_tether(), "gateway", "run", "--data-dir", str(data_dir), "--log-level", "warning"]
    return _spawn(argv, data_dir / "agent.log")


# --- the load process's links (replay mode) -----------------------------------------------------


class Link:
    """A gateway's link spoken by hand: the session state machine, frames written directly."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: LinkSession) -> None:
        self.ws = ws
        self.session = session

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, identity: GatewayIdentity) -> Link:
        session = LinkSession(Role.CLIENT, now=time.monotonic(), agent_version="bench")
        ws = await http.ws_connect(
            f"{url}/link", ssl=identity.ssl_context(), autoping=True, heartbeat=None, compress=0
        )
        link = cls(ws, session)
        await link.flush()
        while session.state is SessionState.HANDSHAKE:
            await link.receive()
        if session.state is not SessionState.OPEN:
            raise ConnectionError(f"link refused: {session.close_code} {session.close_reason}")
        return link

    async def flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send_bytes(frame)

    async def receive(self) -> list[Message]:
        msg = await self.ws.receive(timeout=60)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"link ended: {msg.type.name}")
        self.session.receive_frame(msg.data, now=time.monotonic())
        await self.flush()
        out: list[Message] = []
        for event in self.session.events():
            if isinstance(event, LinkClosed):
                raise ConnectionError(f"link closed: {event.code} {event.reason}")
            if isinstance(event, TelemetryReject | ErrorReport):
                raise RuntimeError(f"the cloud refused: {event}")
            if not isinstance(event, LinkOpened | FrameRejected | HelloReceived):
                out.append(event)
        return out

    async def close(self) -> None:
        self.session.close(CloseCode.NORMAL, "done")
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self.flush()
        await self.ws.close()


def _discovery(seed: int) -> Discovery:
    found = BuildingModel(SimulatedBuildingConfig(seed=seed)).discovery()
    return Discovery(connector=STREAM, devices=list(found.devices), points=list(found.points))


async def register_points(
    http: aiohttp.ClientSession, url: str, identity: GatewayIdentity, seed: int
) -> None:
    """What the gateway's connector would have announced: its devices and points."""
    link = await Link.open(http, url, identity)
    try:
        link.session.send(_discovery(seed))
        await link.flush()
        while not any(isinstance(m, DiscoveryAck) for m in await link.receive()):
            pass
    finally:
        await link.close()


def batch_frames(observations: list[Observation], size: int) -> list[tuple[int, bytes]]:
    """(last sequence number, encoded frame) of each batch, as an agent would cut them."""
    return [
        (
            i + len(part),
            encode_frame(TelemetryBatch(STREAM, i + 1, i + len(part), part)),
        )
        for i in range(0, len(observations), size)
        for part in (observations[i : i + size],)
    ]


async def replay(
    http: aiohttp.ClientSession,
    url: str,
    identity: GatewayIdentity,
    frames: list[tuple[int, bytes]],
    window: int,
) -> None:
    """Send the frames keeping ``window`` unacknowledged, until the last one is acknowledged."""
    link = await Link.open(http, url, identity)
    try:
        in_flight: collections.deque[int] = collections.deque()
        queue = collections.deque(frames)
        last = frames[-1][0]
        acked = 0
        while acked < last:
            while queue and len(in_flight) < window:
                seq, frame = queue.popleft()
                await link.ws.send_bytes(frame)
                in_flight.append(seq)
            for message in await link.receive():
                if isinstance(message, TelemetryAck):
                    acked = max(acked, message.last_seq)
                    while in_flight and in_flight[0] <= acked:
                        in_flight.popleft()
    finally:
        await link.close()


# --- measuring --------------------------------------------------------------------------------


async def committed(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        value = (
            await conn.execute(sa.text("SELECT coalesce(sum(accepted), 0) FROM telemetry_streams"))
        ).scalar_one()
    return int(value)


def _at(samples: list[Sample], rows: int) -> Sample:
    """The first sample at or past ``rows`` committed."""
    return next(s for s in samples if s.committed >= rows)


async def measure(
    mode: str, root: Path, database_url: str, data: list[list[Observation]], options: Options
) -> Run:
    """One run: a fresh cloud and store, K gateways enrolled, their data delivered by ``mode``."""
    cloud = CloudServer(root / f"cloud-{mode}", database_url)
    agents: list[subprocess.Popen[bytes]] = []
    engine = create_async_engine(database_url)
    sender: asyncio.Future[list[None]] | None = None
    try:
        await cloud.start()
        assert cloud.process is not None
        expected: dict[str, int] = {}
        gateways: list[tuple[GatewayIdentity, Path]] = []
        async with aiohttp.ClientSession(trust_env=False) as http:
            for k, observations in enumerate(data):
                data_dir = root / f"{mode}-gw-{k}"
                identity = await _enroll(cloud, data_dir, f"{mode}-{k}")
                await register_points(http, cloud.url, identity, seed=k)
                gateways.append((identity, data_dir))
                expected[identity.gateway_id] = len(observations)
            if mode == "agents":
                for (_, data_dir), observations in zip(gateways, data, strict=True):
                    prefill(data_dir / "spool.db", observations)
            else:
                frames = [batch_frames(obs, options.upload_batch) for obs in data]
            total = sum(expected.values())
            settle()
            started = time.monotonic()
            if mode == "agents":
                agents = [_start_agent(data_dir, options) for _, data_dir in gateways]
            else:
                sender = asyncio.gather(
                    *(
                        replay(http, cloud.url, identity, f, options.upload_window)
                        for (identity, _), f in zip(gateways, frames, strict=True)
                    )
                )
            samples = await _sample(engine, cloud.process, agents, sender, total, options.timeout)
            if sender is not None:
                await sender
        await _check_exactly_once(engine, expected)
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender
        for agent in agents:
            _terminate(agent)
        cloud.stop()
        await engine.dispose()
    low, high = _at(samples, total // 10), _at(samples, total - total // 10)
    if high.t <= low.t:  # too small a run to have a steady part: use the whole of it
        low, high = samples[0], samples[-1]
    window = high.t - low.t
    # CPU time comes in 10 ms clock ticks: over a window shorter than a second it can read 0,
    # so a short run takes its CPU figures over the whole run instead.
    cpu_low, cpu_high = (low, high) if window >= 1.0 else (samples[0], samples[-1])
    cpu_window = max(cpu_high.t - cpu_low.t, 1e-9)
    return Run(
        mode=mode,
        rate=(high.committed - low.committed) / window,
        window_seconds=window,
        total_seconds=samples[-1].t - started,
        cloud_cpu=(cpu_high.cloud_cpu - cpu_low.cloud_cpu) / cpu_window,
        senders_cpu=(cpu_high.senders_cpu - cpu_low.senders_cpu) / cpu_window,
    )


async def _sample(
    engine: AsyncEngine,
    cloud: subprocess.Popen[bytes],
    agents: list[subprocess.Popen[bytes]],
    sender: asyncio.Future[list[None]] | None,
    total: int,
    within: float,
) -> list[Sample]:
    """Read the committed count (and CPU times) until every row is committed."""
    senders = [a.pid for a in agents] if agents else [os.getpid()]
    samples: list[Sample] = []
    deadline = time.monotonic() + within
    while True:
        count = await committed(engine)
        samples.append(
            Sample(
                time.monotonic(),
                count,
                cpu_seconds(cloud.pid),
                sum(cpu_seconds(pid) for pid in senders),
            )
        )
        if count >= total:
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count} of {total} observations committed")
        if sender is not None and sender.done():
            sender.result()  # a failed link surfaces here
            raise RuntimeError(f"the load process finished with {count} of {total} committed")
        if cloud.poll() is not None or any(a.poll() is not None for a in agents):
            raise RuntimeError("a process exited during the run; see the logs")
        await asyncio.sleep(0.05)


async def _check_exactly_once(engine: AsyncEngine, expected: dict[str, int]) -> None:
    async with engine.connect() as conn:
        for gateway_id, count in expected.items():
            stored = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM observations WHERE gateway_id = :g"),
                    {"g": gateway_id},
                )
            ).scalar_one()
            mark = (
                await conn.execute(
                    sa.text("SELECT hwm FROM telemetry_streams WHERE gateway_id = :g"),
                    {"g": gateway_id},
                )
            ).scalar_one()
            if stored != count or mark != count:
                raise AssertionError(
                    f"gateway {gateway_id}: {stored} rows, mark {mark}, expected {count}"
                )


def settle() -> None:
    """Write back what earlier phases left dirty in the page cache, so that the kernel does not
    do it in the middle of the next measurement (on either side of the ratio)."""
    os.sync()


async def measure_reference(fresh_database: Any, rows: list[tuple[Any, ...]], chunk: int) -> float:
    """Rows/s of raw_insert into a fresh database, in transactions of ``chunk`` rows."""
    url = await fresh_database()
    store = await Store.open(url)
    try:
        telemetry = TelemetryStore(store.engine)
        settle()
        started = time.perf_counter()
        for i in range(0, len(rows), chunk):
            await telemetry.raw_insert(rows[i : i + chunk])
        return len(rows) / (time.perf_counter() - started)
    finally:
        await store.close()


# --- databases --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def databases(root: Path, postgres: bool) -> AsyncIterator[Any]:
    """Yields an async function returning the URL of a new, empty database of the kind."""
    if not postgres:
        counter = iter(range(1_000_000))

        async def sqlite() -> str:
            return f"sqlite+aiosqlite:///{root / f'store-{next(counter)}.db'}"

        yield sqlite
        return
    # The PostgreSQL of the test suite: Debian's server, a throwaway cluster on loopback
    # (fsync off: the reference runs on the same server, so the ratio stays fair).
    from tests.support.postgres import PostgresServer, _Cluster, find_postgres_bin

    cluster = _Cluster(find_postgres_bin())
    try:
        server = PostgresServer(host="127.0.0.1", port=cluster.start(), user="postgres")
        yield server.create_database
    finally:
        cluster.stop()


async def run(options: Options) -> Outcome:
    """Reference, each mode's run, reference again: all on one kind of database."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-ingest-", dir=options.directory) as tmp:
        root = Path(tmp)
        data = [building_observations(options.observations, seed=k) for k in range(options.agents)]
        # The reference's rows: the same observations under gateway ids of the same length.
        rows = [r for k, obs in enumerate(data) for r in store_rows(f"gw-{k:016x}", obs)]
        chunks = {
            "in flight": options.upload_batch * options.upload_window,
            "largest group": DEFAULT_GROUP_ROWS,
        }
        outcome = Outcome(
            database="postgresql" if options.postgres else "sqlite",
            rows=len(rows),
            runs=[],
            reference_rates={name: [] for name in chunks},
        )
        async with databases(root, options.postgres) as fresh_database:

            async def reference_round() -> None:
                for name, chunk in chunks.items():
                    rate = await measure_reference(fresh_database, rows, chunk)
                    outcome.reference_rates[name].append(rate)

            for n in range(options.rounds):
                await reference_round()
                # Each round's clouds and gateways are new (a spool filled again would go on
                # from the sequence numbers the previous round left).
                where = root / f"round-{n}"
                where.mkdir()
                for mode in options.modes:
                    url = await fresh_database()
                    outcome.runs.append(await measure(mode, where, url, data, options))
                shutil.rmtree(where)
            await reference_round()
    return outcome


def report(outcome: Outcome, options: Options) -> dict[str, Any]:
    cores = os.cpu_count()
    print(
        f"{options.agents} gateways x {options.observations:,} observations ({outcome.rows:,} rows)"
        f" into {outcome.database}; batches of {options.upload_batch}, {options.upload_window}"
        f" in flight per gateway; {cores} cores"
    )
    for name, rates in outcome.reference_rates.items():
        label = f"  raw_insert, {name} txns ({chunk_rows(name, options):,} rows)"
        print(f"{label:<44} {statistics.median(rates):>12,.0f} obs/s   median of {len(rates)}")
    runs: dict[str, Any] = {}
    for mode in dict.fromkeys(r.mode for r in outcome.runs):
        run_, every = outcome.median_run(mode)
        ratio = run_.rate / outcome.reference_rate
        ratios = [r.rate / outcome.reference_rate for r in every]
        what = "load process" if run_.mode == "replay" else "agents"
        print(ratio_line(f"ingest, {run_.mode}", run_.rate, outcome.reference_rate, "obs/s", "raw"))
        print(
            f"{'  median of':<44} {len(every):>12} runs: ratios {ratios[0]:.2f} to {ratios[-1]:.2f}"
        )
        print(
            f"{'  steady window / whole run':<44} {run_.window_seconds:>11.1f}s"
            f" / {run_.total_seconds:.1f}s; CPU cores: cloud {run_.cloud_cpu:.2f},"
            f" {what} {run_.senders_cpu:.2f}"
        )
        met = {}
        for label, target in (("issue", TARGET_ISSUE), ("design", TARGET_DESIGN)):
            met[label] = ratio >= target
            print(
                f"{'  vs target (' + label + ')':<44} {ratio:>12.2f}   target: {target:.2f}"
                f"   {'MET' if met[label] else 'MISSED'}"
            )
        runs[run_.mode] = {
            "observations_per_s": run_.rate,
            "ratio": ratio,
            "runs_observations_per_s": [r.rate for r in every],
            "runs_ratios": ratios,
            "steady_window_s": run_.window_seconds,
            "total_s": run_.total_seconds,
            "cloud_cpu_cores": run_.cloud_cpu,
            "senders_cpu_cores": run_.senders_cpu,
            "target_met": met,
        }
    return {
        "database": outcome.database,
        "gateways": options.agents,
        "observations_per_gateway": options.observations,
        "upload_batch": options.upload_batch,
        "upload_window": options.upload_window,
        "reference_observations_per_s": outcome.reference_rate,
        "reference_rounds": outcome.reference_rates,
        "runs": runs,
        "targets": {"issue": TARGET_ISSUE, "design": TARGET_DESIGN},
    }


def chunk_rows(name: str, options: Options) -> int:
    return (
        options.upload_batch * options.upload_window if name == "in flight" else DEFAULT_GROUP_ROWS
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--agents", type=int, default=Options.agents, help="gateways")
    parser.add_argument("--observations", type=int, default=Options.observations, help="each")
    parser.add_argument("--upload-batch", type=int, default=Options.upload_batch)
    parser.add_argument("--upload-window", type=int, default=Options.upload_window)
    parser.add_argument("--rounds", type=int, default=Options.rounds, help="runs of each mode")
    parser.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    options = Options(
        modes=MODES if args.mode == "both" else (args.mode,),
        agents=args.agents,
        observations=args.observations,
        upload_batch=args.upload_batch,
        upload_window=args.upload_window,
        rounds=args.rounds,
        directory=args.dir,
    )

    # The machine is shared: its load says how far the figures can be trusted.
    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "databases": {}}
    ok = True
    for postgres in (False, True) if args.postgres else (False,):
        options.postgres = postgres
        outcome = run_async(run(options), "ingest")
        summary = report(outcome, options)
        results["databases"][outcome.database] = summary
        # The issue's bar for every way of delivering; DESIGN.md's is reported alongside.
        ok = ok and all(r["target_met"]["issue"] for r in summary["runs"].values())
    results["load_average_after"] = os.getloadavg()
    print(
        f"load average before / after: {results['load_average_before'][0]:.1f} / "
        f"{results['load_average_after'][0]:.1f} on {os.cpu_count()} cores"
    )
    if not args.no_record:
        path = record("ingest", results)
        print(f"recorded in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
