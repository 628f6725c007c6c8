"""A gateway agent in its own process that reports, on stdout, what its spool durably took.

Run as ``python telemetry_agent.py DATA_DIR [--tier ws]`` for an already enrolled gateway. It is
the real :class:`~tether.gateway.agent.Agent` (the connectors the cloud configures, the spool,
the uploader, the link), with each of these printed as one JSON line once it has happened:

* ``{"append": stream, "first": f, "last": l, "n": n, "t0": ts, "t1": ts, "dropped": d}``
  after the spool returned from an append (durable), with the stream's drop total then;
* ``{"ack": stream, "last": l}`` after a TelemetryAck was handled (the spool deleted up to l);
* ``{"config": version, "ok": bool, "last_seqs": {...}}`` after a connectors configuration
  was applied (the spool's highest sequence numbers at that moment);
* ``{"linked": tier}`` when a link opens.

The test side, :class:`AgentProcess`, starts it, reads those lines, and kills it by its PID;
the functions below it read what the cloud and the spool hold, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.gateway.agent import Agent
from tether.protocol.messages import ConfigAck, Message, TelemetryAck, Welcome
from tether.protocol.telemetry import Observation

SCRIPT = Path(__file__).resolve()


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class RecordingAgent(Agent):
    """The agent, telling stdout what became durable and what the cloud acknowledged."""

    async def append(self, stream: str, observations: Sequence[Observation]) -> tuple[int, int]:
        # The append goes on when the connector is stopped while waiting for it (the spool's
        # thread finishes it): print it all the same, so the record is complete.
        pending = asyncio.ensure_future(super().append(stream, observations))
        try:
            first, last = await asyncio.shield(pending)
        except asyncio.CancelledError:
            first, last = await pending
            await self._record(stream, first, last, observations)
            raise
        await self._record(stream, first, last, observations)
        return first, last

    async def _record(
        self, stream: str, first: int, last: int, observations: Sequence[Observation]
    ) -> None:
        assert self.spool is not None
        drops = await self.spool.drop_report(include_reported=True)
        _emit(
            {
                "append": stream,
                "first": first,
                "last": last,
                "n": len(observations),
                "t0": observations[0].ts,
                "t1": observations[-1].ts,
                "dropped": drops[stream].total if stream in drops else 0,
            }
        )

    async def on_message(self, message: Message) -> None:
        await super().on_message(message)
        if isinstance(message, TelemetryAck):
            _emit({"ack": message.stream, "last": message.last_seq})

    async def _apply_config(self, section: str, version: int, data: dict[str, Any]) -> ConfigAck:
        ack = await super()._apply_config(section, version, data)
        if section == "connectors" and self.spool is not None:
            last_seqs = await self.spool.last_seqs()
            _emit({"config": version, "ok": ack.ok, "error": ack.error, "last_seqs": last_seqs})
        return ack

    def on_link_open(
        self, send: Callable[[Message], None], tier: str, *, welcome: Welcome, round_trip: float
    ) -> None:
        super().on_link_open(send, tier, welcome=welcome, round_trip=round_trip)
        _emit({"linked": tier})


async def _main(data_dir: Path, tier: str | None) -> None:
    from tether.gateway.identity import load_identity
    from tether.gateway.settings import load_agent_settings

    settings = load_agent_settings(data_dir, trust_env=False, reconnect_cap=1.0, tier=tier)
    agent = RecordingAgent(settings, load_identity(settings.identity_dir))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await agent.run(stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--tier", default=None)
    args = parser.parse_args()
    from tether.cli.runtime import run_async, setup_logging

    setup_logging("warning")
    run_async(_main(args.data_dir, args.tier))


# --- the test side ----------------------------------------------------------------------------


@dataclass
class Append:
    stream: str
    first: int
    last: int
    n: int
    t0: float
    t1: float
    dropped: int


@dataclass
class AgentProcess:
    """One run of :data:`SCRIPT` as a child process, and what it printed."""

    data_dir: Path
    tier: str | None = None
    appends: list[Append] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> AgentProcess:
        argv = [sys.executable, str(SCRIPT), str(self.data_dir)]
        if self.tier is not None:
            argv += ["--tier", self.tier]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        log = (self.data_dir / "agent.log").open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=log, env=env
            )
        finally:
            log.close()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if "append" in record:
                record["stream"] = record.pop("append")
                self.appends.append(Append(**record))
            elif "ack" in record:
                self.acks[record["ack"]] = max(self.acks.get(record["ack"], 0), record["last"])
            elif "config" in record:
                self.configs.append(record)
            elif "linked" in record:
                self.tiers.append(record["linked"])
            self._changed.set()
        self._changed.set()

    async def config_applied(self, version: int, what: str) -> dict[str, Any]:
        """The record of the connectors configuration *version* being applied. The cloud
        delivers a configuration at least once (a link opening and a change can both send it);
        the agent applies a version once and acknowledges repeats, so the first record is the
        one that applied it. :meth:`config_repeats_agree` checks the repeats afterwards."""
        records = await self.wait(lambda: [c for c in self.configs if c["config"] == version], what)
        first: dict[str, Any] = records[0]
        return first

    def config_repeats_agree(self, version: int) -> None:
        """Every record of *version* says the same: applied, with the same last sequences."""
        records = [c for c in self.configs if c["config"] == version]
        assert records, f"configuration {version} never applied"
        assert all(r["ok"] and r["last_seqs"] == records[0]["last_seqs"] for r in records), records

    async def wait(self, condition: Callable[[], Any], what: str, within: float = 20.0) -> Any:
        """Wait until ``condition()`` is truthy, re-checked at each line printed."""
        deadline = time.monotonic() + within
        while True:
            value = condition()
            if value:
                return value
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"the agent exited ({self.process.returncode}): {self.log()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}; agent log: {self.log()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    @property
    def links(self) -> int:
        """Links opened so far."""
        return len(self.tiers)

    def log(self) -> str:
        try:
            return (self.data_dir / "agent.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    async def end(self, sig: int) -> int:
        """Send *sig* to the process we started, wait for it to exit and for its output."""
        assert self.process is not None
        assert self._reader is not None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 20.0)
        await asyncio.wait_for(self._reader, 20.0)
        return code

    async def kill(self) -> int:
        return await self.end(signal.SIGKILL)

    async def stop(self) -> int:
        return await self.end(signal.SIGTERM)


# --- what the cloud and the spool hold --------------------------------------------------------

#: The simulated building every telemetry test configures: 96 points, 6 samples of each per poll
#: (576 observations every 0.1 s, ~5,800/s), deterministic in (seed, time).
SIMULATED = {"seed": 7, "rate": 5000.0, "poll_interval": 0.1}
STREAM = "sim"


def connectors_config(*, enabled: bool = True, **overrides: Any) -> dict[str, Any]:
    """The ``connectors`` section: one simulated building as instance (and stream) "sim"."""
    return {
        "instances": {
            STREAM: {
                "connector": "simulated-building",
                "config": {**SIMULATED, **overrides},
                "enabled": enabled,
            }
        }
    }


def stored_value(value: Any) -> Any:
    """A value as the store gives it back: numbers (and booleans) as floats, text as text."""
    if isinstance(value, bool | int | float):
        return float(value)
    return value


Row = tuple[str, float, Any]  # point_id, ts, value


def cloud_rows(database: str, gateway_id: str) -> list[Row]:
    """Every observation the cloud's SQLite store holds for the gateway, by time."""
    import sqlite3

    path = database.split(":///", 1)[1]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = db.execute(
            "SELECT point_id, ts, coalesce(value_text, value_num) FROM observations"
            " WHERE gateway_id = ? ORDER BY ts, point_id",
            (gateway_id,),
        ).fetchall()
    finally:
        db.close()
    return [(p, t, v) for p, t, v in result]


def present_per_append(rows: list[Row], appends: list[Append], config: dict[str, Any]) -> list[int]:
    """How many observations of each printed append the cloud holds.

    Checks on the way that what it holds of an append is exactly the newest part of what the
    connector produced for that poll (values included), each observation once: a drop takes
    the oldest sequence numbers first, and nothing else may differ.
    """
    import bisect
    from collections import Counter

    from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig

    model = BuildingModel(SimulatedBuildingConfig(**config))
    times = [r[1] for r in rows]
    present: list[int] = []
    for a in appends:
        produced = [(o.point_id, o.ts, stored_value(o.value)) for o in model.poll(a.t1)]
        assert len(produced) == a.n == a.last - a.first + 1, a
        assert produced[0][1] == a.t0, a
        window = rows[bisect.bisect_left(times, a.t0) : bisect.bisect_right(times, a.t1)]
        held = len(window)
        assert Counter(window) == Counter(produced[a.n - held :]), (
            f"sequence numbers {a.first}..{a.last}: the cloud holds {held} observations of "
            "this poll, but not the newest ones exactly once"
        )
        present.append(held)
    return present


@dataclass
class SpoolState:
    last_seqs: dict[str, int]
    held: int
    dropped: int
    dropped_reported: int
    last_dropped_seq: int


def read_spool(data_dir: Path, stream: str = STREAM) -> SpoolState:
    """What the spool file holds, read after the agent process has exited."""
    from tether.gateway.spool import Spool

    spool = Spool.open(data_dir / "spool.db", max_bytes=1 << 40, max_age=1e12, reserve_bytes=0)
    try:
        drops = spool.drop_report(include_reported=True).get(stream)
        return SpoolState(
            last_seqs=spool.last_seqs(),
            held=spool.depth().observations,
            dropped=drops.total if drops else 0,
            dropped_reported=drops.reported if drops else 0,
            last_dropped_seq=drops.last_seq if drops else 0,
        )
    finally:
        spool.close()


if __name__ == "__main__":
    main()
