"""The gateway agent: holds the link, runs commands at most once, renews its certificate.

The agent's core is tier-agnostic: a tier calls :meth:`Agent.on_link_open` with a ``send``
function and the cloud's Welcome (whose ``server_time`` checks the host clock), feeds every
message from the cloud to :meth:`Agent.on_message`, and calls :meth:`Agent.on_link_closed`.
Anything that must not be lost (command outcomes) is durable and re-sent on each new link
until the cloud acknowledges it.

Linked or not, the agent keeps ``status.json`` in its data directory current (at each health
interval and whenever the link changes) for ``tether gateway status`` on site: see
:mod:`tether.gateway.status`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tether import __version__
from tether.aio import cancel_and_wait
from tether.gateway.connectors import (
    ConnectorRunner,
    ConnectorsConfigInvalid,
    StaleConnectorsConfig,
    builtin_registry,
    decode_connectors_config,
)
from tether.gateway.handlers import HANDLERS, CommandContext, CommandFailed
from tether.gateway.health import NetCounter, collect_health, network_identity
from tether.gateway.httptier import HttpTier
from tether.gateway.identity import GatewayIdentity, renew, seconds_until
from tether.gateway.ledger import CommandLedger
from tether.gateway.link import (
    NTP_FIX,
    ClockWrong,
    LinkEnded,
    LinkError,
    LinkRefused,
    TlsUntrusted,
    WebSocketTier,
    clean_error,
    probe_websocket,
)
from tether.gateway.logship import LogShipper
from tether.gateway.preflight import Preflight
from tether.gateway.settings import AgentSettings
from tether.gateway.spool import AsyncSpool, SpoolError, SpoolFull
from tether.gateway.status import STATUS_FILE, STATUS_FORMAT, write_status
from tether.gateway.uploader import Uploader
from tether.pki.errors import EstError
from tether.protocol.backoff import backoff_delays
from tether.protocol.config import agent_section
from tether.protocol.messages import (
    CloseCode,
    CommandRequest,
    CommandUpdate,
    CommandUpdateAck,
    ConfigAck,
    ConfigUpdate,
    Discovery,
    DiscoveryAck,
    ErrorReport,
    HealthReport,
    LogBatchAck,
    Message,
    NetcheckReport,
    Welcome,
)
from tether.protocol.telemetry import Discovery as FoundDiscovery
from tether.protocol.telemetry import Observation

__all__ = ["Agent", "AgentStopped", "LinkStatus", "open_spool"]

log = logging.getLogger(__name__)

#: Seconds between log batches while records wait (each batch waits for its ack).
LOG_FLUSH_INTERVAL = 5.0
#: Failed link attempts in a row after which the agent runs its preflight.
PREFLIGHT_AFTER = 3
#: The tiers, best first: one WebSocket; HTTPS long-poll; periodic HTTPS poll.
TIERS = ("ws", "long-poll", "poll")
#: Tier-specific failures in a row before the agent moves down a tier.
DOWN_AFTER = 2
#: The close code a tier ends with when the agent switches up; the reason is the new index.
UPGRADE = "upgrade"
#: The longest idle exchange a probe asks the cloud to hold (the cloud caps a hold at 55 s).
LONGEST_HOLD = 50.0
#: Links taken over by another link of this gateway (close code ``replaced``) within
#: REPLACED_WINDOW seconds beyond which another host is taken to hold this gateway's identity.
REPLACED_LIMIT = 3
REPLACED_WINDOW = 600.0
#: The first wait and the cap of the backoff between link attempts while that goes on.
REPLACED_BACKOFF = (30.0, 1800.0)
#: A link error repeated this long (seconds) is logged again, with its count.
ERROR_REPEAT_EVERY = 600.0
#: Lost observations are logged at most once per this many seconds (per kind).
LOSS_LOG_EVERY = 60.0
#: The spool's drop counts are read at most once per this many seconds while submits come.
DROP_CHECK_EVERY = 5.0
#: A host clock off the cloud's by more than this (seconds, beyond the round trip) is warned of.
CLOCK_SKEW_LIMIT = 60.0
#: The clock-skew warning comes at most once per this many seconds.
CLOCK_WARN_EVERY = 3600.0
#: The status file is written at most once per this many seconds (link changes come in bursts).
STATUS_MIN_GAP = 1.0
#: Ledger keys: the last connectors configuration received, refused or not; lost submits.
_CONNECTORS_KEY = "config:connectors"
_REFUSED_KEY = "lost:refused_submits"


class AgentStopped(Exception):
    """The agent cannot go on without an operator (its gateway was revoked)."""


@dataclass(slots=True)
class LinkStatus:
    state: str = "starting"  # starting, connecting, linked, waiting
    tier: str | None = None
    last_error: str | None = None
    links_opened: int = 0
    last_close: str | None = None
    history: list[tuple[float, str]] = field(default_factory=list)
    probes: int = 0  # rounds of upward probes tried from a lower tier
    errors: int = 0  # link errors noted since the agent started
    retry_in: float | None = None  # the wait before the next link attempt, while waiting
    since: float = field(default_factory=time.time)  # the link opened, or was lost (or start)
    last_error_at: float | None = None


class LossLog:
    """Local WARNINGs for observations that are lost, at most one per kind every *every*
    seconds: the first at once, the others summed until the next one is due."""

    def __init__(self, every: float = LOSS_LOG_EVERY) -> None:
        self.every = every
        self._pending: dict[str, collections.Counter[str]] = {}
        self._detail: dict[str, str] = {}
        self._logged_at: dict[str, float] = {}

    def note(self, kind: str, stream: str, count: int, detail: str) -> None:
        """*count* observations of *stream* lost; *kind* is "dropped" or "refused"."""
        self._pending.setdefault(kind, collections.Counter())[stream] += count
        self._detail[kind] = detail
        self.flush(due_only=True)

    def flush(self, *, due_only: bool = False) -> None:
        now = time.monotonic()
        for kind, counts in self._pending.items():
            if not counts or (due_only and now - self._logged_at.get(kind, -1e18) < self.every):
                continue
            streams = ", ".join(f"{n} of {stream}" for stream, n in sorted(counts.items()))
            if kind == "refused":
                log.warning(
                    "observations lost: the spool refused %s (%s); counted and reported to "
                    "the cloud",
                    streams,
                    self._detail[kind],
                )
            else:
                log.warning(
                    "observations lost: the spool dropped the oldest %s (%s); counted and "
                    "reported to the cloud",
                    streams,
                    self._detail[kind],
                )
            counts.clear()
            self._logged_at[kind] = now


async def open_spool(settings: AgentSettings) -> AsyncSpool:
    """The spool the agent's *settings* name, bounded as they say."""
    return await AsyncSpool.open(
        settings.spool_path, max_bytes=settings.spool_max_bytes, max_age=settings.spool_max_age
    )


class Agent:
    """The gateway agent.

    *ledger* and *spool*, when given, are the agent's own already opened (its start-up checks
    open them, once): the agent takes them over and closes them when :meth:`run` ends. Else it
    opens them itself.
    """

    def __init__(
        self,
        settings: AgentSettings,
        identity: GatewayIdentity,
        *,
        clock: Callable[[], float] = time.time,
        ledger: CommandLedger | None = None,
        spool: AsyncSpool | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        #: The host's wall clock, as the agent reads it (compared with the cloud's on each link).
        self.clock = clock
        #: Seconds to add to the host clock to read the cloud's, and its uncertainty (half the
        #: round trip it was measured over), from the last link's Welcome; None before one.
        self.clock_offset: float | None = None
        self.clock_offset_uncertainty: float | None = None
        self._skew_warned_at: float | None = None
        self.boot_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.ledger = ledger if ledger is not None else CommandLedger(settings.state_db)
        self._opened_spool = spool
        self.status = LinkStatus(since=self.started_at)
        self.runtime_config: dict[str, Any] = self.ledger.get_value("runtime_config") or {}
        self.linked = asyncio.Event()
        self._send: Callable[[Message], None] | None = None
        self._tier: WebSocketTier | HttpTier | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._restart_reason: str | None = None
        self.spool: AsyncSpool | None = None
        self.uploader: Uploader | None = None
        self.connectors: ConnectorRunner | None = None
        self._discoveries: dict[str, FoundDiscovery] = {}
        self._cut_young: set[int] = set()  # tiers left because their links were cut young
        self.logs = LogShipper()
        self._net = NetCounter()
        self._identity_sent: dict[str, Any] | None = None
        self._health_due = asyncio.Event()
        #: The last health report built (linked or not) and when: the status file shows it.
        self._health_last: dict[str, Any] | None = None
        self._health_last_at: float | None = None
        self._status_due = asyncio.Event()
        self._status_path = settings.data_dir / STATUS_FILE
        self._status_error: str | None = None  # the status file's last write error, logged
        self._preflight_error: tuple[float, str] | None = None  # the last preflight that failed
        self._applied: dict[str, int] = {}  # section -> version applied by this process
        self.losses = LossLog()
        #: per stream: observations the spool refused (disk full), ever (kept in the ledger)
        self.refused: dict[str, int] = dict(self.ledger.get_value(_REFUSED_KEY) or {})
        self._refused_saved = dict(self.refused)
        self._drops_seen: dict[str, int] | None = None  # per stream, spool drops already logged
        self._drops_checked_at = -1e18
        self._replaced_at: collections.deque[float] = collections.deque()
        self._replaced_delays: Iterator[float] | None = None
        self._error_logged: str | None = None  # the link error last logged (None after a link)
        self._error_logged_at = 0.0
        self._error_repeats = 0  # times it came again since it was logged
        self.preflight = Preflight(
            cloud_url=settings.cloud_url or identity.cloud_url,
            ca_path=str(identity.ca_path),
            interval=settings.preflight_interval,
            proxy=settings.proxy,
            trust_env=settings.trust_env,
            long_poll_wait=settings.longpoll_wait,
        )
        self._preflight_unsent: dict[str, Any] | None = None
        self._preflight_task: asyncio.Task[None] | None = None
        for command_id in self.ledger.recover_interrupted():
            log.warning("command %s was interrupted by a restart; reporting it failed", command_id)

    @property
    def cloud_url(self) -> str:
        """The cloud this agent links to (and renews at): the setting, else the enrollment's."""
        return self.settings.cloud_url or self.identity.cloud_url

    # -- the core, as tiers see it -----------------------------------------------------------

    def on_link_open(
        self, send: Callable[[Message], None], tier: str, *, welcome: Welcome, round_trip: float
    ) -> None:
        self._check_clock(welcome.server_time, round_trip)
        self._send = send
        now = time.time()
        self.status.state = "linked"
        self.status.tier = tier
        self.status.links_opened += 1
        self.status.since = now
        self.status.history.append((now, f"linked on {tier}"))
        self.linked.set()
        self._status_changed()
        self._flush_error_repeats()
        self._error_logged = None
        log.info("linked to %s on tier %s", self.cloud_url, tier)
        if self.uploader is not None:
            self.uploader.on_link_open(send)
        self.logs.on_link_open(send)
        self._identity_sent = None  # a new link (maybe a new cloud node) hears it again
        if self._preflight_unsent is not None:
            send(NetcheckReport(ts=time.time(), report=self._preflight_unsent))
            self._preflight_unsent = None
        self._health_due.set()
        for instance, found in self._discoveries.items():
            send(_discovery_message(instance, found))
        for entry in self.ledger.unacknowledged():
            if entry.state != "running":
                send(
                    CommandUpdate(
                        command_id=entry.command_id,
                        state=entry.state,
                        result=entry.result,
                        error=entry.error,
                    )
                )

    def _check_clock(self, server_time: float, round_trip: float) -> None:
        """Compare the host clock with the cloud's ``server_time``, stamped between the Hello
        leaving and the Welcome arriving *round_trip* seconds later: the offset is known to
        half the round trip. A clock off by more than CLOCK_SKEW_LIMIT beyond that is warned
        of (at most every CLOCK_WARN_EVERY seconds): timestamps, certificate checks and the
        spool's ages all read it."""
        round_trip = max(0.0, round_trip)
        offset = server_time - (self.clock() - round_trip / 2)
        self.clock_offset, self.clock_offset_uncertainty = offset, round_trip / 2
        if abs(offset) - round_trip / 2 <= CLOCK_SKEW_LIMIT:
            return
        now = time.monotonic()
        if self._skew_warned_at is not None and now - self._skew_warned_at < CLOCK_WARN_EVERY:
            return
        self._skew_warned_at = now
        from tether.gateway.timesync import describe_offset  # loaded only for a wrong clock

        log.warning(
            "the host clock is %s %s the cloud's (offset %+.1f s, ±%.1f s): observation "
            "timestamps and certificate checks read this clock; %s",
            describe_offset(offset),
            "behind" if offset > 0 else "ahead of",
            offset,
            round_trip / 2,
            NTP_FIX,
        )

    def on_link_closed(self) -> None:
        if self.linked.is_set():
            self.status.since = time.time()
        self._send = None
        self.linked.clear()
        self._status_changed()
        if self.uploader is not None:
            self.uploader.on_link_closed()
        self.logs.on_link_closed()

    async def on_message(self, message: Message) -> None:
        if self.uploader is not None and await self.uploader.on_message(message):
            return
        if isinstance(message, CommandRequest):
            self._spawn(self._run_command(message))
        elif isinstance(message, CommandUpdateAck):
            self.ledger.acknowledge(message.command_id, message.state)
        elif isinstance(message, ConfigUpdate):
            self._emit(await self._apply_config(message.section, message.version, message.data))
        elif isinstance(message, LogBatchAck):
            self.logs.on_ack(message)
            self.logs.flush()
        elif isinstance(message, DiscoveryAck):
            log.debug("cloud stored %d points of %s", message.points, message.connector)
        elif isinstance(message, ErrorReport):
            log.warning(
                "cloud refused a message: %s %s (%s)", message.code, message.message, message.ref
            )
        else:
            log.debug("ignoring %s", type(message).__name__)

    def _emit(self, message: Message) -> None:
        if self._send is not None:
            self._send(message)

    # -- telemetry and configuration ---------------------------------------------------------

    async def _submit(self, stream: str, observations: Sequence[Observation]) -> tuple[int, int]:
        """The connectors' sink: durable in the spool, then the uploader is woken."""
        assert self.spool is not None
        try:
            seqs = await self.spool.append(stream, observations)
        except SpoolFull as exc:
            # The connector is told, but the observations are gone: counted as lost and
            # reported to the cloud with the spool's drops (DropReport), logged here.
            self._note_refused(stream, len(observations), str(exc))
            raise
        if time.monotonic() - self._drops_checked_at >= DROP_CHECK_EVERY:
            self._drops_checked_at = time.monotonic()
            await self._check_drops()
        if self.uploader is not None:
            self.uploader.wake()
        return seqs

    def _note_refused(self, stream: str, count: int, reason: str) -> None:
        self.refused[stream] = self.refused.get(stream, 0) + count
        self.losses.note("refused", stream, count, reason)
        if self.uploader is not None:
            self.uploader.note_refused(self.refused)
        self._save_refused()

    def _save_refused(self) -> None:
        """Keep the refused counts across restarts (a full disk may refuse this too: then
        they are kept in memory and saved with the next chance)."""
        if self.refused == self._refused_saved:
            return
        try:
            self.ledger.set_value(_REFUSED_KEY, self.refused)
        except sqlite3.Error as exc:
            log.debug("refused counts not saved yet: %s", exc)
            return
        self._refused_saved = dict(self.refused)

    async def _check_drops(self) -> None:
        """Log the observations the spool's bounds dropped since the last look."""
        if self.spool is None:
            return
        totals = {
            s: c.total for s, c in (await self.spool.drop_report(include_reported=True)).items()
        }
        if self._drops_seen is None:
            self._drops_seen = totals  # drops from before this start were logged then
            return
        for stream, total in totals.items():
            new = total - self._drops_seen.get(stream, 0)
            if new > 0:
                self.losses.note(
                    "dropped", stream, new, f"spool bound of {self.settings.spool_max_bytes} bytes"
                )
        self._drops_seen = totals

    async def _on_discovery(self, instance: str, found: FoundDiscovery) -> None:
        self._discoveries[instance] = found
        self._emit(_discovery_message(instance, found))

    async def _apply_config(self, section: str, version: int, data: dict[str, Any]) -> ConfigAck:
        if section in {"agent", "logs"}:
            return await self._apply_simple_config(section, version, data)
        if section != "connectors":
            return ConfigAck(
                section=section,
                version=version,
                ok=False,
                error=f"unknown configuration section {section!r}",
            )
        if self.connectors is None:
            return ConfigAck(
                section=section, version=version, ok=False, error="connectors are not running yet"
            )
        current = self.ledger.get_value(_CONNECTORS_KEY)
        if current is not None and current["version"] == version:
            # A redelivery (each link, each wake-up) gets the answer the version got.
            error = current.get("error")
            return ConfigAck(section=section, version=version, ok=error is None, error=error)
        try:
            config = decode_connectors_config({**data, "version": version})
            result = await self.connectors.apply_config(config)
        except (ConnectorsConfigInvalid, StaleConnectorsConfig) as exc:
            return ConfigAck(section=section, version=version, ok=False, error=str(exc))
        for name in result.stopped:
            self._discoveries.pop(name, None)
        errors = "; ".join(f"{k}: {v}" for k, v in sorted(result.invalid.items())) or None
        # Applied (the invalid instances stopped and marked failed), so it is what runs after a
        # restart too; the refusal is kept with it.
        self.ledger.set_value(_CONNECTORS_KEY, {"version": version, "data": data, "error": errors})
        if errors is not None:
            log.warning("connectors configuration v%d refused: %s", version, errors)
            return ConfigAck(section=section, version=version, ok=False, error=errors)
        log.info(
            "connectors configuration v%d applied (%d started, %d restarted, %d stopped)",
            version,
            len(result.started),
            len(result.restarted),
            len(result.stopped),
        )
        return ConfigAck(section=section, version=version, ok=True)

    async def _apply_simple_config(
        self, section: str, version: int, data: dict[str, Any]
    ) -> ConfigAck:
        """``agent``: {"health_interval": s}; ``logs``: {"level": …, "sources": […]}."""
        if self._applied.get(section) == version:
            # The cloud sends a section again on each link, and may wake the link twice for
            # one change: applying it again would restart the journal reader and the reports.
            return ConfigAck(section=section, version=version, ok=True)
        try:
            if section == "logs":
                await self.logs.configure(data)
            else:
                interval = agent_section(data, default_interval=self.health_interval)
                self.apply_runtime_config({"health_interval": interval})
        except (ValueError, TypeError) as exc:
            return ConfigAck(section=section, version=version, ok=False, error=str(exc))
        self.ledger.set_value(f"config:{section}", {"version": version, "data": data})
        self._applied[section] = version
        self._health_due.set()
        return ConfigAck(section=section, version=version, ok=True)

    @property
    def health_interval(self) -> float:
        return float(self.runtime_config.get("health_interval", self.settings.health_interval))

    async def _health_loop(self) -> None:
        """A health report every interval (and at once at start, after a link opens or when
        settings change), sent while linked, and kept for the status file in any case; the
        network identity is sent whenever it differs from what was sent."""
        self._health_due.set()  # the status file has the figures from the start
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_due.wait(), self.health_interval)
            self._health_due.clear()
            self.losses.flush(due_only=True)
            self._save_refused()
            # A report built on one link is sent on that link only: one begun before a link
            # opened is not sent when it is done (the opening asked for a fresh one already).
            built_on = self.status.links_opened if self._send is not None else None
            try:
                report = await self._health_report()
            except (OSError, RuntimeError, ValueError, TypeError) as exc:
                # A report that cannot be built must not end the reporting for good.
                log.exception("health report failed: %s", exc)
                self._status_changed()  # the link's state and the spool's are shown still
                continue
            self._health_last, self._health_last_at = report, time.time()
            self._status_changed()
            if self._send is None or built_on != self.status.links_opened:
                continue
            data = dict(report)
            identity = data.pop("network_identity")
            if identity != self._identity_sent:
                data["network_identity"] = identity
                self._identity_sent = identity
            self._emit(HealthReport(ts=time.time(), data=data))
            self.logs.flush()

    async def _log_loop(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_INTERVAL)
            self.logs.flush()

    async def _figures(self) -> dict[str, Any]:
        """The agent's own figures (link, spool, connectors, uploader, time, logs), as both
        the health report and the status file show them."""
        depth = await self.spool.depth() if self.spool is not None else None
        drops = await self.spool.drop_report() if self.spool is not None else {}
        return {
            "link": {
                "tier": self.status.tier,
                "links_opened": self.status.links_opened,
                "last_error": self.status.last_error,
            },
            "spool": {
                "observations": depth.observations if depth else 0,
                "bytes": depth.bytes if depth else 0,
                "oldest_ts": depth.oldest_ts if depth else None,
                "dropped": sum(d.total for d in drops.values()),
                # submits the spool refused (disk full): lost, like the drops
                "refused": sum(self.refused.values()),
            },
            "connectors": {
                name: {
                    "state": st.state.value,
                    "observations": st.observations,
                    "polls": st.polls,
                    "poll_errors": st.poll_errors,
                    "errors": st.errors,
                    "last_error": st.last_error,
                }
                for name, st in (self.connectors.stats() if self.connectors else {}).items()
            },
            "uploader": dataclasses.asdict(self.uploader.stats) if self.uploader else {},
            "time": {
                "clock": self.clock(),
                "ntp_synchronized": Path("/run/systemd/timesync/synchronized").exists(),
                # seconds to add to the host clock to read the cloud's (last link's Welcome)
                "cloud_offset_s": _rounded(self.clock_offset),
                "cloud_offset_uncertainty_s": _rounded(self.clock_offset_uncertainty),
            },
            "logs": {"pending": self.logs.pending, "dropped": self.logs.dropped_total},
        }

    async def _health_report(self) -> dict[str, Any]:
        """One health report, with the network identity (sent only when it changed)."""
        figures = await self._figures()
        identity = await asyncio.to_thread(network_identity)
        report = await asyncio.to_thread(
            collect_health,
            data_dir=str(self.settings.data_dir),
            net=self._net,
            link=figures["link"],
            spool=figures["spool"],
            connectors=figures["connectors"],
            uploader=figures["uploader"],
            time_sync=figures["time"],
        )
        report["logs"] = figures["logs"]
        report["network_identity"] = identity
        return report

    # -- the status file ---------------------------------------------------------------------

    def _status_changed(self) -> None:
        """Have the status file rewritten soon (the link changed, a report was built)."""
        self._status_due.set()

    async def _status_loop(self) -> None:
        """Keep the status file current: rewritten on each change, at most every
        STATUS_MIN_GAP seconds, linked or not."""
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            await self._write_status()
            await asyncio.sleep(STATUS_MIN_GAP)

    async def _status_document(self, stopped: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``tether gateway status`` shows: identity, link, the agent's figures now, the
        last health report's system figures; never configuration (connector settings may
        hold passwords) nor key material."""
        figures = await self._figures()
        now = time.time()
        drops = await self.spool.drop_report(include_reported=True) if self.spool else {}
        oldest = figures["spool"]["oldest_ts"]
        health = self._health_last or {}
        preflight: dict[str, Any] | None = None
        if self.preflight.last_run_at is not None and self.preflight.last_report is not None:
            preflight = {
                "ran_at": self.preflight.last_run_at,
                "status": self.preflight.last_report.get("status"),
                "summary": self.preflight.last_summary,
            }
        if self._preflight_error is not None:
            failed_at, error = self._preflight_error
            if preflight is None or failed_at > preflight["ran_at"]:
                preflight = {"ran_at": failed_at, "status": None, "error": error}
        return {
            "format": STATUS_FORMAT,
            "agent_version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": now,
            "stopped": stopped,
            "health_interval": self.health_interval,
            "gateway_id": self.identity.gateway_id,
            "cloud_url": self.cloud_url,
            "certificate_not_after": self.identity.not_after.timestamp(),
            "link": {
                **figures["link"],
                "linked": self.linked.is_set() and stopped is None,
                "state": "stopped" if stopped else self.status.state,
                "since": self.status.since,
                "last_error_at": self.status.last_error_at,
                "errors": self.status.errors,
                "last_close": self.status.last_close,
                "retry_in": self.status.retry_in,
            },
            "spool": {
                **figures["spool"],
                "oldest_age_s": None if oldest is None else max(0.0, now - oldest),
                "dropped_total": sum(d.total for d in drops.values()),
            },
            "uploader": figures["uploader"],
            "connectors": figures["connectors"],
            "time": figures["time"],
            "logs": figures["logs"],
            "preflight": preflight,
            "health_at": self._health_last_at,
            "system": health.get("system"),
            "network": health.get("network"),
            "network_identity": health.get("network_identity"),
        }

    async def _write_status(self, stopped: dict[str, Any] | None = None) -> None:
        """Write the status file; a failure is logged (once while it repeats), not raised."""
        try:
            document = await self._status_document(stopped)
            await asyncio.to_thread(write_status, self._status_path, document)
        except (OSError, ValueError, TypeError, SpoolError) as exc:
            message = str(exc)
            if message != self._status_error:
                log.warning("status file %s not written: %s", self._status_path, message)
                self._status_error = message
            return
        if self._status_error is not None:
            log.info("status file %s written again", self._status_path)
            self._status_error = None

    async def _start_telemetry(self) -> None:
        self.spool = self._opened_spool or await open_spool(self.settings)
        self._opened_spool = None
        self.uploader = Uploader(
            self.spool,
            max_batch=self.settings.upload_batch,
            window=self.settings.upload_window,
            max_frame=self.settings.max_frame,
        )
        self.uploader.note_refused(self.refused)
        await self._check_drops()
        self.connectors = ConnectorRunner(builtin_registry(), self, on_discovery=self._on_discovery)
        saved = self.ledger.get_value(_CONNECTORS_KEY)
        if saved is not None:
            # The last configuration the cloud gave runs at once, even before the link is up.
            try:
                await self.connectors.apply_config(
                    decode_connectors_config({**saved["data"], "version": saved["version"]})
                )
            except (ConnectorsConfigInvalid, StaleConnectorsConfig) as exc:
                log.error("saved connectors configuration unusable: %s", exc)

    async def append(self, stream: str, observations: Sequence[Observation]) -> tuple[int, int]:
        return await self._submit(stream, observations)

    async def _stop_telemetry(self) -> None:
        if self.connectors is not None:
            await self.connectors.close()
        if self.uploader is not None:
            await self.uploader.stop()
        if self.spool is not None:
            await self.spool.close()

    # -- commands ----------------------------------------------------------------------------

    async def _run_command(self, request: CommandRequest) -> None:
        known = self.ledger.get(request.command_id)
        if known is not None:
            # Seen before (a redelivery after a relink): report, never run again.
            if known.state != "running":
                self._emit(
                    CommandUpdate(
                        command_id=known.command_id,
                        state=known.state,
                        result=known.result,
                        error=known.error,
                    )
                )
            return
        if not self.ledger.begin(request.command_id, request.kind):
            return
        if request.expires_at < time.time():
            outcome: tuple[str, dict[str, Any] | None, str | None] = (
                "failed",
                None,
                "expired before it reached the gateway",
            )
        else:
            self._emit(CommandUpdate(command_id=request.command_id, state="running"))
            outcome = await self._execute(request)
        state, result, error = outcome
        self.ledger.finish(request.command_id, state, result=result, error=error)
        self._emit(
            CommandUpdate(command_id=request.command_id, state=state, result=result, error=error)
        )

    async def _execute(
        self, request: CommandRequest
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        handler = HANDLERS.get(request.kind)
        if handler is None:
            return (
                "failed",
                None,
                f"unknown command kind {request.kind!r}; known: {sorted(HANDLERS)}",
            )
        ctx = CommandContext(command_id=request.command_id, args=dict(request.args), agent=self)
        try:
            return "succeeded", await handler(ctx), None
        except CommandFailed as exc:
            return "failed", None, str(exc)
        except Exception as exc:  # a handler bug must become a failed command, not a dead agent
            log.exception("command %s (%s) crashed", request.command_id, request.kind)
            return "failed", None, f"handler error: {type(exc).__name__}: {exc}"

    def apply_runtime_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.runtime_config.update(changes)
        self.ledger.set_value("runtime_config", self.runtime_config)
        if "log_level" in changes:
            logging.getLogger("tether").setLevel(str(changes["log_level"]).upper())
        return dict(self.runtime_config)

    def request_restart(self, reason: str) -> None:
        """Close the link after the current replies are out, and link again at once."""
        self._restart_reason = reason
        tier = self._tier

        async def later() -> None:
            await asyncio.sleep(0.2)  # the succeeded update goes out first
            if tier is not None:
                await tier.close(CloseCode.GOING_AWAY, reason)

        self._spawn(later())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.logs.claim()  # before any task of this agent starts: they inherit it
        await self._start_telemetry()
        self.logs.install()
        for section in ("agent", "logs"):
            saved = self.ledger.get_value(f"config:{section}")
            if saved is not None:
                await self._apply_simple_config(section, saved["version"], saved["data"])
        self._status_changed()
        for loop_coro in (self._health_loop(), self._log_loop(), self._status_loop()):
            self._tasks.add(asyncio.get_running_loop().create_task(loop_coro))
        link = asyncio.get_running_loop().create_task(self._link_loop())
        renewal = asyncio.get_running_loop().create_task(self._renewal_loop())
        stopper = asyncio.get_running_loop().create_task(stop.wait())
        stop_reason = "stopped unexpectedly (see the agent's log)"
        try:
            done, _ = await asyncio.wait({link, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if link in done:
                link.result()  # AgentStopped surfaces here
            stop_reason = "asked to stop (a signal, or its service manager)"
        except AgentStopped as exc:
            stop_reason = str(exc)
            raise
        finally:
            if self._tier is not None:
                await self._tier.close(CloseCode.GOING_AWAY, "agent stopping")
            for task in (link, renewal, stopper, *self._tasks):
                task.cancel()
            for task in (link, renewal, stopper):
                with contextlib.suppress(asyncio.CancelledError, AgentStopped):
                    await task
            self._flush_error_repeats()
            self.losses.flush()
            # The last word in the status file: this agent stopped, when and why.
            await self._write_status(stopped={"at": time.time(), "reason": stop_reason})
            await self._stop_telemetry()
            self.logs.uninstall()
            await self.logs.stop_journal()
            self.ledger.close()

    def _make_tier(self, index: int, reason: str) -> WebSocketTier | HttpTier:
        url = self.cloud_url
        if index == 0:
            return WebSocketTier(
                url=url,
                ssl_context=self.identity.ssl_context(),
                core=self,
                boot_id=self.boot_id,
                max_frame=self.settings.max_frame,
                proxy=self.settings.proxy,
                trust_env=self.settings.trust_env,
                tier_reason=reason,
            )
        return HttpTier(
            mode=TIERS[index],
            url=url,
            ssl_context=self.identity.ssl_context(),
            core=self,
            boot_id=self.boot_id,
            max_frame=self.settings.max_frame,
            proxy=self.settings.proxy,
            trust_env=self.settings.trust_env,
            tier_reason=reason,
            wait=self.settings.longpoll_wait,
            interval=self.settings.poll_interval,
        )

    async def _link_loop(self) -> None:
        """Hold a link on the best tier that works; move down on tier-specific failures,
        probe upward in the background, and come back up by itself."""
        delays = backoff_delays(initial=0.5, cap=self.settings.reconnect_cap)
        pinned = self.settings.tier != "auto"
        index = TIERS.index(self.settings.tier) if pinned else 0
        reason, strikes = ("pinned by the agent's settings" if pinned else ""), 0
        failures = 0  # link attempts in a row that failed, whatever the tier
        while True:
            tier = self._make_tier(index, reason)
            self._tier = tier
            self.status.state = "connecting"
            self.status.tier = tier.name
            prober = (
                asyncio.get_running_loop().create_task(self._probe_upward(index, tier))
                if index > 0 and not pinned
                else None
            )
            pause: float | None = None  # a wait decided below, instead of the next delay
            try:
                ended: LinkEnded = await tier.run_once()
            except LinkRefused as exc:
                self._note_error(str(exc))
                if exc.revoked:
                    # Revoked while the agent was not linked (or before a restart): the same
                    # stop as the link closed with code "revoked".
                    raise AgentStopped(f"this gateway was revoked ({exc})") from None
                delays = backoff_delays(initial=30.0, cap=max(900.0, self.settings.reconnect_cap))
            except (TlsUntrusted, ClockWrong) as exc:
                self._note_error(str(exc))  # every tier shares the TLS path: no tier change
            except LinkError as exc:
                self._note_error(str(exc))
                failures += 1
                if failures >= PREFLIGHT_AFTER:
                    self._start_preflight()
                if exc.tier_specific:
                    strikes += 1
                    if strikes >= DOWN_AFTER and index < len(TIERS) - 1 and not pinned:
                        self._cut_young.discard(index)
                        index, reason, strikes = index + 1, str(exc), 0
                        self._tier_changed(index, reason)
                        delays = backoff_delays(initial=0.5, cap=self.settings.reconnect_cap)
                        continue
            else:
                failures = 0 if ended.opened else failures
                self.status.last_close = f"{ended.code}: {ended.reason}"
                self.status.history.append((time.time(), f"closed {ended.code}"))
                log.info(
                    "link closed by the %s: %s (%s)",
                    "cloud" if ended.by_peer else "agent",
                    ended.reason or "no reason given",
                    ended.code,
                )
                if ended.code == CloseCode.REVOKED:
                    raise AgentStopped("this gateway was revoked by an operator")
                if ended.code == CloseCode.REPLACED:
                    pause = self._replaced()
                if ended.code == UPGRADE:
                    index, reason, strikes = int(ended.reason), "", 0
                    self._tier_changed(index, "a better tier answered the probe")
                    delays = backoff_delays(initial=0.5, cap=self.settings.reconnect_cap)
                    continue
                if self._restart_reason is not None:
                    self._restart_reason = None
                    delays = backoff_delays(initial=0.5, cap=self.settings.reconnect_cap)
                    continue
                if ended.opened and ended.duration >= self.settings.unstable_after:
                    strikes = 0
                    delays = backoff_delays(initial=0.5, cap=self.settings.reconnect_cap)
                elif ended.opened and not ended.by_peer:
                    # The link opened but died young without the cloud closing it: a proxy cuts
                    # it (tunnel lifetime, read timeout, DPI). Twice and the tier is given up.
                    strikes += 1
                    if strikes >= DOWN_AFTER and index < len(TIERS) - 1 and not pinned:
                        self._cut_young.add(index)
                        index, strikes = index + 1, 0
                        reason = f"{TIERS[index - 1]} links die after {ended.duration:.0f} s"
                        self._tier_changed(index, reason)
                        continue
            finally:
                self._tier = None
                if prober is not None:
                    await cancel_and_wait(prober)
            self.status.state = "waiting"
            self.status.retry_in = next(delays) if pause is None else pause
            await asyncio.sleep(self.status.retry_in)
            self.status.retry_in = None

    def _replaced(self) -> float | None:
        """Another link of this gateway took over this one: past REPLACED_LIMIT times in
        REPLACED_WINDOW, another host runs with this identity; the wait before linking again
        (growing, capped), or None to link again as usual."""
        now = time.monotonic()
        self._replaced_at.append(now)
        while now - self._replaced_at[0] > REPLACED_WINDOW:
            self._replaced_at.popleft()
        if len(self._replaced_at) <= REPLACED_LIMIT:
            self._replaced_delays = None
            return None
        if self._replaced_delays is None:
            initial, cap = REPLACED_BACKOFF
            self._replaced_delays = backoff_delays(initial=initial, cap=cap)
        # Full jitter may pick a short wait: never shorter than the first step.
        delay = max(REPLACED_BACKOFF[0], next(self._replaced_delays))
        log.warning(
            "another link of gateway %s took over this one %d times in %.0f min: another host "
            "is probably running with this gateway's identity (a copied data directory or "
            "disk image), and the cloud keeps only one link; give each host its own "
            "enrollment. Linking again in %.0f s",
            self.identity.gateway_id,
            len(self._replaced_at),
            REPLACED_WINDOW / 60,
            delay,
        )
        return delay

    def _tier_changed(self, index: int, reason: str) -> None:
        self.status.history.append((time.time(), f"tier {TIERS[index]}: {reason}"))
        self._status_changed()
        log.warning("link moves to tier %d (%s): %s", index + 1, TIERS[index], reason)
        if index > 0:
            self._start_preflight()

    def _start_preflight(self) -> None:
        """Run the preflight in the background (at most once per interval)."""
        if not self.preflight.due() or (
            self._preflight_task is not None and not self._preflight_task.done()
        ):
            return

        async def run() -> None:
            try:
                document = await self.preflight.run()
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("preflight could not run: %s", exc)
                self._preflight_error = (time.time(), f"could not run: {exc}")
                self._status_changed()
                return
            self._preflight_error = None
            self._status_changed()
            if self._send is not None:
                self._send(NetcheckReport(ts=time.time(), report=document))
            else:
                self._preflight_unsent = document

        self._preflight_task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(self._preflight_task)
        self._preflight_task.add_done_callback(self._tasks.discard)

    async def _probe_upward(self, index: int, tier: WebSocketTier | HttpTier) -> None:
        """While on a lower tier, try the better ones now and then; switch when one works.

        An upgrade that completes says nothing about how long the connection then lives: a
        WebSocket tier left because a proxy cut its links young (an idle or lifetime limit)
        must also hold an idle exchange for ``unstable_after`` through the same path, else the
        agent would climb back onto it at every probe and be cut again."""
        rng = random.Random()
        while True:
            interval = self.settings.probe_interval
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))
            self.status.probes += 1
            ssl_context = self.identity.ssl_context()
            url = self.cloud_url
            if await probe_websocket(
                url, ssl_context, proxy=self.settings.proxy, trust_env=self.settings.trust_env
            ) and (
                0 not in self._cut_young
                or await self._holds(tier.name, self.settings.unstable_after)
            ):
                await tier.close(UPGRADE, "0")
                return
            if index == 2 and await self._holds(tier.name, min(self.settings.longpoll_wait, 10.0)):
                await tier.close(UPGRADE, "1")
                return

    async def _holds(self, mode: str, seconds: float) -> bool:
        """An idle exchange held *seconds* by the cloud came back whole through the link's path.

        It is sent as the current HTTPS tier (*mode*), so the cloud's view of the link is not
        changed by the probe, and whatever the cloud answers with is handled as on the link."""
        seconds = min(seconds, LONGEST_HOLD)
        probe = self._make_tier(TIERS.index(mode), "probe")
        assert isinstance(probe, HttpTier)
        began = time.monotonic()
        async with aiohttp.ClientSession(trust_env=self.settings.trust_env) as http:
            try:
                replies = await probe._exchange(http, [], seconds)
            except LinkError:
                return False
        for message in replies:
            await self.on_message(message)
        return time.monotonic() - began >= 0.9 * seconds

    def _note_error(self, message: str) -> None:
        """Log a link error; the same error again is counted and logged with its count
        when another comes, a link opens, or every ERROR_REPEAT_EVERY seconds."""
        message = clean_error(message)
        self.status.errors += 1
        self.status.last_error = message
        self.status.last_error_at = time.time()
        self._status_changed()
        now = time.monotonic()
        if message == self._error_logged:
            self._error_repeats += 1
            if now - self._error_logged_at >= ERROR_REPEAT_EVERY:
                self._flush_error_repeats()
                self._error_logged_at = now
            return
        self._flush_error_repeats()
        log.warning("link: %s", message)
        self._error_logged, self._error_logged_at = message, now

    def _flush_error_repeats(self) -> None:
        if self._error_repeats and self._error_logged is not None:
            log.warning("link: %s (repeated %d times)", self._error_logged, self._error_repeats)
        self._error_repeats = 0

    async def _renewal_loop(self) -> None:
        delays = backoff_delays(initial=5.0, cap=3600.0)
        while True:
            await asyncio.sleep(seconds_until(self.identity.renewal_due()))
            try:
                self.identity = await self._renew()
            except (EstError, OSError, ValueError) as exc:
                log.warning("certificate renewal failed, will retry: %s", exc)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays(initial=5.0, cap=3600.0)
            log.info("certificate renewed; valid until %s", self.identity.not_after.isoformat())

    async def _renew(self) -> GatewayIdentity:
        """Re-enroll at the cloud the link uses; the URL recorded at enrollment stays the one
        recorded (``cloud_url`` in agent.toml may be a temporary override)."""
        return await renew(
            self.identity,
            url=self.cloud_url,
            proxy=self.settings.proxy,
            trust_env=self.settings.trust_env,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _discovery_message(instance: str, found: FoundDiscovery) -> Discovery:
    return Discovery(connector=instance, devices=list(found.devices), points=list(found.points))
