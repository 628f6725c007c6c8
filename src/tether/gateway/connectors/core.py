"""The connector runner: starts configured connector instances, supervises and restarts them.

The runner owns everything a connector should not decide for itself:

* **configuration**: a versioned :class:`ConnectorsConfig` (instance name → connector name and
  its raw config; the document is shared with the cloud, :mod:`tether.protocol.connectors`, and
  re-exported here). :meth:`ConnectorRunner.apply_config` validates every instance against its
  connector's schema (``msgspec.convert``) and starts, stops or restarts *only* the instances
  whose validated configuration changed, while the agent keeps running;
* **retries**: ``ConnectorNotReady`` (or any unexpected error) from ``start`` or a spawned task
  stops the instance and starts it again after a full-jitter, capped exponential delay;
  ``ConnectorConfigError`` and ``ConnectorFatal`` park it as *failed* until its configuration
  changes;
* **the spool**: each instance's observations go to the stream named after the instance, and
  ``ctx.submit`` returns only once the sink (the spool) has stored them;
* **statistics** per instance (:class:`InstanceStats`) for health reports.

Clocks and sleeps are injected, so tests drive retries without waiting.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec

from tether.aio import cancel_and_wait
from tether.gateway.connectors.base import (
    Connector,
    ConnectorConfigError,
    ConnectorError,
    ConnectorFatal,
    InstanceStopped,
)
from tether.gateway.connectors.registry import ConnectorRegistry, Registration, UnknownConnector
from tether.gateway.spool import SpoolError
from tether.protocol.backoff import backoff_delays
from tether.protocol.config import ConfigInvalid, check_instance_name
from tether.protocol.connectors import (
    ConnectorsConfig,
    ConnectorsConfigInvalid,
    InstanceConfig,
    decode_connectors_config,
)
from tether.protocol.telemetry import Discovery, Observation

__all__ = [
    "ApplyResult",
    "ConnectorRunner",
    "ConnectorsConfig",
    "ConnectorsConfigInvalid",
    "InstanceConfig",
    "InstanceState",
    "InstanceStats",
    "ObservationSink",
    "StaleConnectorsConfig",
    "decode_connectors_config",
]

_log = logging.getLogger(__name__)


class StaleConnectorsConfig(ValueError):
    """A configuration older than the one applied arrived; it is ignored."""


# --- state and statistics ------------------------------------------------------------------------


class InstanceState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"  # waits for a configuration change
    STOPPED = "stopped"  # disabled, or the runner closed


@dataclass(slots=True)
class InstanceStats:
    """Counters of one instance; :meth:`ConnectorRunner.stats` hands out copies."""

    instance: str
    connector: str
    state: InstanceState = InstanceState.STOPPED
    starts: int = 0  # start attempts
    observations: int = 0  # durably submitted
    submits: int = 0
    polls: int = 0
    poll_errors: int = 0
    errors: int = 0  # failed starts, crashed tasks, refused submits
    last_error: str | None = None
    last_error_at: float | None = None
    retry_delay: float | None = None  # the delay before the next start, while retrying
    config_version: int = 0


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :meth:`ConnectorRunner.apply_config` did."""

    version: int
    started: frozenset[str] = frozenset()
    stopped: frozenset[str] = frozenset()
    restarted: frozenset[str] = frozenset()
    unchanged: frozenset[str] = frozenset()
    invalid: Mapping[str, str] = field(default_factory=dict)


class ObservationSink(Protocol):
    """Where observations go: :class:`tether.gateway.spool.AsyncSpool` is one."""

    async def append(self, stream: str, observations: Sequence[Observation]) -> tuple[int, int]: ...


DiscoveryHandler = Callable[[str, Discovery], Awaitable[None]]


# --- one instance --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    """An instance's identity for change detection: equal specs need no restart."""

    connector: str
    enabled: bool
    config: msgspec.Struct | None  # validated; None when invalid
    raw: Mapping[str, Any]
    error: str | None

    def same_as(self, other: _Spec) -> bool:
        """Equal validated settings mean no restart, however the raw document spelled them."""
        if self.config is not None and other.config is not None:
            return (self.connector, self.enabled, self.config) == (
                other.connector,
                other.enabled,
                other.config,
            )
        return self == other


class _Context:
    """The :class:`~tether.gateway.connectors.base.ConnectorContext` of one start attempt."""

    def __init__(self, runner: ConnectorRunner, instance: _Instance) -> None:
        self._runner = runner
        self._instance = instance
        self.failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.logger = _log.getChild(instance.name)

    @property
    def instance(self) -> str:
        return self._instance.name

    async def submit(self, observations: Sequence[Observation]) -> None:
        if self.closed:
            raise InstanceStopped(f"instance {self.instance!r} is stopped")
        if not observations:
            return
        stats = self._instance.stats
        for o in observations:
            # The cloud refuses a batch holding a non-finite number or time whole; refusing the
            # one bad submit here keeps the connector's bug from costing its neighbours' data.
            if not math.isfinite(o.ts) or (
                isinstance(o.value, float) and not math.isfinite(o.value)
            ):
                error = f"point {o.point_id!r}: time and value must be finite numbers"
                self._runner._record_error(self._instance, f"submit refused: {error}")
                raise ValueError(error)
        try:
            await self._runner._sink.append(self.instance, observations)
        except Exception as exc:  # the sink's own errors (SpoolFull...): counted, then re-raised
            self._runner._record_error(self._instance, f"submit refused: {exc}")
            raise
        stats.observations += len(observations)
        stats.submits += 1
        self._runner._touch()

    async def announce(self, discovery: Discovery) -> None:
        if self.closed:
            raise InstanceStopped(f"instance {self.instance!r} is stopped")
        await self._runner._announce(self._instance, discovery)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        if self.closed:
            coro.close()
            raise InstanceStopped(f"instance {self.instance!r} is stopped")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.instance}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or self.closed:
            return
        error = task.exception()
        if error is not None and not self.failure.done():
            self.failure.set_result(error)

    def report_poll(self, *, ok: bool = True, error: str | None = None) -> None:
        stats = self._instance.stats
        stats.polls += 1
        if not ok:
            stats.poll_errors += 1
            if error is not None:
                stats.last_error = error
                stats.last_error_at = self._runner._wall_clock()
        self._runner._touch()

    def time(self) -> float:
        return self._runner._wall_clock()

    async def sleep(self, seconds: float) -> None:
        await self._runner._sleep(seconds)

    async def close(self) -> None:
        """Cancel the spawned tasks and wait for them to finish."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True, eq=False)
class _Instance:
    name: str
    spec: _Spec
    registration: Registration[Any] | None
    stats: InstanceStats
    supervisor: asyncio.Task[None] | None = None
    discovery: Discovery | None = None


# --- the runner ----------------------------------------------------------------------------------


class ConnectorRunner:
    """Runs the connector instances a :class:`ConnectorsConfig` describes."""

    def __init__(
        self,
        registry: ConnectorRegistry,
        sink: ObservationSink,
        *,
        on_discovery: DiscoveryHandler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff_initial: float = 1.0,
        backoff_cap: float = 300.0,
        stable_after: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._registry = registry
        self._sink = sink
        self._on_discovery = on_discovery
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._instances: dict[str, _Instance] = {}
        self._version: int | None = None
        self._changed = asyncio.Event()
        self._apply_lock = asyncio.Lock()

    @property
    def version(self) -> int | None:
        """The version of the configuration applied last (None before the first)."""
        return self._version

    # --- configuration ---------------------------------------------------------------------------

    def _spec(self, name: str, wanted: InstanceConfig) -> tuple[_Spec, Registration[Any] | None]:
        error: str | None = None
        registration: Registration[Any] | None = None
        config: msgspec.Struct | None = None
        try:
            check_instance_name(name)
        except ConfigInvalid as exc:
            error = str(exc)
        else:
            try:
                registration = self._registry.get(wanted.connector)
            except UnknownConnector as exc:
                error = f"instance {name!r}: {exc}"
        if registration is not None:
            try:
                config = msgspec.convert(wanted.config, registration.manifest.config_schema)
            except msgspec.ValidationError as exc:
                error = f"instance {name!r} ({wanted.connector}): invalid config: {exc}"
        spec = _Spec(wanted.connector, wanted.enabled, config, dict(wanted.config), error)
        return spec, registration

    async def apply_config(self, config: ConnectorsConfig) -> ApplyResult:
        """Bring the running instances in line with ``config``; touch only what changed.

        An instance whose settings do not validate is stopped and marked failed with an error
        naming the instance and the field; the others are applied regardless.
        """
        async with self._apply_lock:
            if self._version is not None and config.version < self._version:
                raise StaleConnectorsConfig(
                    f"connectors configuration version {config.version} is older than the"
                    f" applied version {self._version}"
                )
            wanted = {name: self._spec(name, ic) for name, ic in config.instances.items()}
            removed = [name for name in self._instances if name not in wanted]
            changed = [
                name
                for name, (spec, _) in wanted.items()
                if name in self._instances and not self._instances[name].spec.same_as(spec)
            ]
            added = [name for name in wanted if name not in self._instances]
            await asyncio.gather(*(self._stop(self._instances[n]) for n in removed + changed))
            for name in removed:
                del self._instances[name]
            for name in changed + added:
                spec, registration = wanted[name]
                previous = self._instances.get(name)
                stats = InstanceStats(name, spec.connector)
                if previous is not None and previous.spec.connector == spec.connector:
                    # Counters survive a restart: the health history of an instance is its own.
                    stats = replace(previous.stats, retry_delay=None)
                stats.config_version = config.version
                instance = _Instance(name, spec, registration, stats)
                self._instances[name] = instance
                self._launch(instance)
            for name in wanted:
                self._instances[name].stats.config_version = config.version
            self._version = config.version
            self._touch()
            return ApplyResult(
                version=config.version,
                started=frozenset(n for n in added if self._instances[n].supervisor),
                stopped=frozenset(removed)
                | frozenset(n for n in changed if not self._instances[n].spec.enabled),
                restarted=frozenset(n for n in changed if self._instances[n].spec.enabled),
                unchanged=frozenset(wanted) - frozenset(changed) - frozenset(added),
                invalid={n: s.error for n, (s, _) in wanted.items() if s.error is not None},
            )

    def _launch(self, instance: _Instance) -> None:
        spec = instance.spec
        if spec.error is not None:
            instance.stats.state = InstanceState.FAILED
            self._record_error(instance, spec.error)
            return
        if not spec.enabled:
            instance.stats.state = InstanceState.STOPPED
            return
        instance.stats.state = InstanceState.STARTING
        instance.supervisor = asyncio.get_running_loop().create_task(
            self._supervise(instance), name=f"connector:{instance.name}"
        )

    async def _stop(self, instance: _Instance) -> None:
        task, instance.supervisor = instance.supervisor, None
        if task is not None:
            await cancel_and_wait(task)
        instance.stats.state = InstanceState.STOPPED
        instance.stats.retry_delay = None
        self._touch()

    async def close(self) -> None:
        """Stop every instance."""
        async with self._apply_lock:
            await asyncio.gather(*(self._stop(i) for i in self._instances.values()))

    # --- supervision -----------------------------------------------------------------------------

    async def _supervise(self, instance: _Instance) -> None:
        registration = instance.registration
        config = instance.spec.config
        if registration is None or config is None:  # _launch checked; keeps the types honest
            return
        stats = instance.stats
        delays = self._delays()
        while True:  # ends by a final failure or by cancellation (stop)
            stats.state = InstanceState.STARTING
            stats.retry_delay = None
            stats.starts += 1
            self._touch()
            ctx = _Context(self, instance)
            started_at: float | None = None
            connector: Connector | None = None
            try:
                connector = registration.factory(config)
                await connector.start(ctx)
                started_at = self._clock()
                stats.state = InstanceState.RUNNING
                self._touch()
                await ctx.announce(await connector.discover())
                error = await ctx.failure
            except asyncio.CancelledError:
                await self._shutdown(instance, connector, ctx)
                raise
            except Exception as exc:  # the supervision boundary: every failure is classified
                error = exc
            await self._shutdown(instance, connector, ctx)
            final = isinstance(error, ConnectorConfigError | ConnectorFatal)
            # Expected signals are logged as one line; anything else with its traceback.
            unexpected = None if isinstance(error, ConnectorError | SpoolError) else error
            self._record_error(instance, _describe(error), exc=unexpected)
            if final:
                stats.state = InstanceState.FAILED
                self._touch()
                return
            if started_at is not None and self._clock() - started_at >= self._stable_after:
                delays = self._delays()  # it ran fine for a while: start the backoff over
            delay = next(delays)
            stats.state = InstanceState.RETRYING
            stats.retry_delay = delay
            self._touch()
            await self._sleep(delay)

    def _delays(self) -> Iterator[float]:
        return backoff_delays(initial=self._backoff_initial, cap=self._backoff_cap, rng=self._rng)

    async def _shutdown(
        self, instance: _Instance, connector: Connector | None, ctx: _Context
    ) -> None:
        ctx.closed = True
        try:
            if connector is not None:
                async with asyncio.timeout(self._stop_timeout):
                    await connector.stop()
        except TimeoutError:
            self._record_error(instance, f"stop() took longer than {self._stop_timeout}s")
        except Exception as exc:  # a failing stop() must not keep the instance from restarting
            self._record_error(instance, f"stop() failed: {_describe(exc)}", exc=exc)
        finally:
            await ctx.close()  # even when cancelled mid-stop: no task outlives its instance

    def _record_error(
        self, instance: _Instance, message: str, *, exc: BaseException | None = None
    ) -> None:
        stats = instance.stats
        stats.errors += 1
        stats.last_error = message
        stats.last_error_at = self._wall_clock()
        if exc is not None:
            trace = "".join(traceback.format_exception(exc))
            _log.error("connector instance %s: %s\n%s", instance.name, message, trace)
        else:
            _log.warning("connector instance %s: %s", instance.name, message)
        self._touch()

    async def _announce(self, instance: _Instance, discovery: Discovery) -> None:
        instance.discovery = discovery
        self._touch()
        if self._on_discovery is not None:
            await self._on_discovery(instance.name, discovery)

    # --- observation -----------------------------------------------------------------------------

    def stats(self) -> dict[str, InstanceStats]:
        """A copy of every instance's counters."""
        return {name: replace(i.stats) for name, i in self._instances.items()}

    def discovery(self, instance: str) -> Discovery | None:
        """What the instance announced last (None if it never did)."""
        entry = self._instances.get(instance)
        return entry.discovery if entry is not None else None

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(
        self, predicate: Callable[[dict[str, InstanceStats]], bool]
    ) -> dict[str, InstanceStats]:
        """Wait until ``predicate(stats())`` holds (bound it with ``asyncio.timeout``)."""
        while True:
            snapshot = self.stats()
            if predicate(snapshot):
                return snapshot
            await self._changed.wait()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
