"""Command wake-ups across cloud nodes: PostgreSQL LISTEN/NOTIFY, or in-process with SQLite.

A command submitted on any node must reach the node that holds the gateway's link. Each node
listens on the ``tether_commands`` channel; the payload is the gateway id, and the listener looks
up that gateway's pending commands itself. A wake-up carries no command data, so a missed or
duplicated one costs latency, never correctness (nodes still sweep pending commands on relink).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tether.protocol.backoff import backoff_delays

__all__ = [
    "CHANNEL",
    "MISSED",
    "CommandCallback",
    "CommandListener",
    "CommandNotifier",
    "LocalCommandNotifier",
    "PostgresCommandNotifier",
]

log = logging.getLogger(__name__)

CHANNEL = "tether_commands"
#: Handed to the callbacks instead of a gateway id once a lost LISTEN connection is back:
#: wake-ups sent while it was away never came, so whatever they were for must be looked at again
#: (commands waiting for gateways linked here, revocations of them).
MISSED = "*"

CommandCallback = Callable[[str], Awaitable[None] | None]


class CommandNotifier(Protocol):
    async def notify(self, gateway_id: str) -> None: ...
    async def add(self, callback: CommandCallback) -> None: ...
    async def remove(self, callback: CommandCallback) -> None: ...
    async def close(self) -> None: ...


class _Dispatcher:
    """Calls every registered callback with a gateway id; coroutines run as tracked tasks."""

    def __init__(self) -> None:
        self.callbacks: list[CommandCallback] = []
        self._tasks: set[asyncio.Future[None]] = set()

    def dispatch(self, gateway_id: str) -> None:
        for callback in list(self.callbacks):
            try:
                outcome = callback(gateway_id)
            # A listener's bug must not stop the other listeners from hearing of the command.
            except Exception:
                log.exception("command listener %r failed for gateway %s", callback, gateway_id)
                continue
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._tasks.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("command listener failed", exc_info=error)

    async def drain(self) -> None:
        """Cancel callbacks still running (at close)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LocalCommandNotifier:
    """SQLite: one process holds every link, so a notification is a call within the process.

    Stores opened in the same process on the same database file hear each other's
    notifications (*key* names the database); other processes do not.
    """

    _peers: ClassVar[dict[str, set[LocalCommandNotifier]]] = {}

    def __init__(self, key: str | None = None) -> None:
        self._key = key if key is not None else f"private:{id(self)}"
        self._dispatcher = _Dispatcher()
        self._peers.setdefault(self._key, set()).add(self)

    async def notify(self, gateway_id: str) -> None:
        for peer in list(self._peers.get(self._key, ())):
            peer._dispatcher.dispatch(gateway_id)

    async def add(self, callback: CommandCallback) -> None:
        self._dispatcher.callbacks.append(callback)

    async def remove(self, callback: CommandCallback) -> None:
        self._dispatcher.callbacks.remove(callback)

    async def close(self) -> None:
        peers = self._peers.get(self._key)
        if peers is not None:
            peers.discard(self)
            if not peers:
                del self._peers[self._key]
        self._dispatcher.callbacks.clear()
        await self._dispatcher.drain()


class PostgresCommandNotifier:
    """PostgreSQL: NOTIFY through the engine, LISTEN on one dedicated asyncpg connection.

    The listening connection is opened with the first listener and closed with the last. If the
    server drops it, it is reopened in the background with jittered backoff.
    """

    def __init__(self, engine: AsyncEngine, dsn: str) -> None:
        self._engine = engine
        self._dsn = dsn
        self._dispatcher = _Dispatcher()
        self._lock = asyncio.Lock()
        self._connection: Any = None  # asyncpg.Connection (asyncpg ships no type information)
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    async def notify(self, gateway_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, gateway_id)))

    async def add(self, callback: CommandCallback) -> None:
        async with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            if self._connection is None:
                await self._connect()
            self._dispatcher.callbacks.append(callback)

    async def remove(self, callback: CommandCallback) -> None:
        async with self._lock:
            self._dispatcher.callbacks.remove(callback)
            if not self._dispatcher.callbacks:
                await self._disconnect()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._dispatcher.callbacks.clear()
            await self._disconnect()
        await self._dispatcher.drain()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            await connection.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            await connection.close()
            raise
        connection.add_termination_listener(self._on_termination)
        self._connection = connection

    async def _disconnect(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
            self._reconnect = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.remove_termination_listener(self._on_termination)
            await connection.close()

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._dispatcher.dispatch(payload)

    def _on_termination(self, connection: object) -> None:
        if connection is not self._connection or self._closed:
            return
        log.warning("lost the LISTEN connection for %s; reconnecting", CHANNEL)
        self._connection = None
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        for delay in backoff_delays(initial=0.5, cap=30.0):
            await asyncio.sleep(delay)
            async with self._lock:
                if self._closed or not self._dispatcher.callbacks or self._connection is not None:
                    return
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                    log.warning("LISTEN reconnect failed: %s", error)
                    continue
                log.info("LISTEN connection for %s restored", CHANNEL)
                self._reconnect = None
                self._dispatcher.dispatch(MISSED)
                return


class CommandListener:
    """Registration of one callback; use ``async with store.listen_commands(cb):``.

    The callback is registered (and on PostgreSQL, LISTEN is in effect) once the ``async with``
    block is entered. ``await``-ing the listener first is also accepted and changes nothing.
    """

    def __init__(self, notifier: CommandNotifier, callback: CommandCallback) -> None:
        self._notifier = notifier
        self._callback = callback

    def __await__(self) -> Generator[Any, None, Self]:
        return self._itself().__await__()

    async def _itself(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        await self._notifier.add(self._callback)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._notifier.remove(self._callback)
