"""The connector contract: what a field connector declares, implements, and may raise.

A connector is glue between one field protocol (Modbus, BACnet, a simulator...) and the agent,
shaped like a Home Assistant integration:

* it declares a :class:`ConnectorManifest`: name, version, description, the msgspec ``Struct``
  type its configuration must convert to, and how it talks to devices (:class:`IotClass`);
* it implements :class:`Connector`: ``start(ctx)``, ``stop()``, ``discover()``;
* it hands observations to the agent with ``await ctx.submit(...)``, which returns only once the
  spool has stored them durably (back-pressure: a connector producing faster than the disk can
  take simply waits), and reports what it sees with ``await ctx.announce(...)``;
* it runs its loops as ``ctx.spawn(...)`` tasks, so that the runner owns them;
* it signals intent with exceptions, and the runner (never the connector) decides what follows::

    ConnectorError
     ├── ConnectorNotReady     the field is not reachable yet: retried with capped, jittered backoff
     ├── ConnectorConfigError  the configuration cannot work: not retried until it changes
     ├── ConnectorFatal        the connector cannot run here at all: not retried
     └── InstanceStopped       submit()/announce() after the instance was stopped

  Any other exception escaping ``start`` or a spawned task is treated as ``ConnectorNotReady``
  (and logged with its traceback, unless it is a spool error such as a full disk): an
  unattended gateway keeps trying.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from tether.protocol.telemetry import Discovery, Observation

__all__ = [
    "Connector",
    "ConnectorConfigError",
    "ConnectorContext",
    "ConnectorError",
    "ConnectorFactory",
    "ConnectorFatal",
    "ConnectorManifest",
    "ConnectorNotReady",
    "InstanceStopped",
    "IotClass",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ConnectorError(Exception):
    """Base of what a connector may raise to tell the runner what to do."""


class ConnectorNotReady(ConnectorError):
    """Temporarily unable to run (device offline, port busy): retry later."""


class ConnectorConfigError(ConnectorError):
    """The configuration cannot work; the message says which field and why."""


class ConnectorFatal(ConnectorError):
    """The connector cannot run on this gateway (missing hardware, unsupported platform)."""


class InstanceStopped(ConnectorError):
    """The instance was stopped; its context no longer accepts observations."""


class IotClass(enum.StrEnum):
    """How a connector reaches its data (Home Assistant's classes, for the same reasons)."""

    LOCAL_POLLING = "local_polling"
    LOCAL_PUSH = "local_push"
    CLOUD_POLLING = "cloud_polling"
    CLOUD_PUSH = "cloud_push"
    CALCULATED = "calculated"


C = TypeVar("C", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class ConnectorManifest(Generic[C]):
    """What a connector is and which configuration it takes."""

    name: str
    version: str
    description: str
    config_schema: type[C]
    iot_class: IotClass
    requirements: tuple[str, ...] = ()  # Python distributions the connector needs

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"connector name {self.name!r} must be lowercase letters, digits and dashes"
            )
        if not (
            isinstance(self.config_schema, type) and issubclass(self.config_schema, msgspec.Struct)
        ):
            raise TypeError(f"connector {self.name!r}: config_schema must be a msgspec.Struct type")


class ConnectorContext(Protocol):
    """What the runner gives a started connector: its only way to reach the agent."""

    @property
    def instance(self) -> str:
        """The configured instance name (also the spool stream its observations go to)."""
        ...

    @property
    def logger(self) -> logging.Logger: ...

    async def submit(self, observations: Sequence[Observation]) -> None:
        """Hand observations over; returns once they are durably spooled.

        Raises ``tether.gateway.spool.SpoolError`` (e.g. ``SpoolFull``) when they were *not*
        stored: the connector still owns them. Raises :class:`InstanceStopped` after stop.
        A submit cancelled while waiting may still have been stored (at least once, never lost).
        """
        ...

    async def announce(self, discovery: Discovery) -> None:
        """Report the devices and points the connector currently sees."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run a loop of the connector; if it fails, the runner restarts the connector."""
        ...

    def report_poll(self, *, ok: bool = True, error: str | None = None) -> None:
        """Count one poll of the field (for health reports)."""
        ...

    def time(self) -> float:
        """Wall-clock time, unix seconds: timestamps for observations."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep on the runner's clock (tests drive it)."""
        ...


class Connector(Protocol):
    """One running instance of a connector, built by its factory from a validated config."""

    async def start(self, ctx: ConnectorContext) -> None:
        """Connect and spawn the loops; return once running. Raise a ConnectorError if not."""
        ...

    async def stop(self) -> None:
        """Release what ``start`` took. Called even after a failed or half-finished start;
        the runner cancels the spawned tasks itself."""
        ...

    async def discover(self) -> Discovery:
        """The devices and points this instance reads."""
        ...


ConnectorFactory = Callable[[C], Connector]
