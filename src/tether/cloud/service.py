"""What the cloud does with a gateway's messages, whatever tier carried them.

The WebSocket tier and the HTTPS tiers both call :meth:`GatewayService.handle` for each message a
gateway sent and send back what it returns; they call :meth:`GatewayService.outgoing` to collect
what waits for the gateway (queued commands, configuration). So a command or a telemetry batch
means the same on every tier: only the latency differs.

A command the operator API just committed is *offered* here (:meth:`GatewayService.offer`) before
the API wakes the gateway's link: the link's next :meth:`~GatewayService.outgoing` sends it from
memory, without reading the store, and marks it delivered afterwards in a grouped write. The
command was durable before it was offered, so nothing depends on that mark: a command whose mark
never lands stays queued and goes again later (the agent runs an id at most once).

What a gateway wrote is stored as both dialects hold it (see :mod:`tether.cloud.storable`): a NUL
in a command id or a configuration section is refused as invalid (no such id or section can be
stored), a NUL in a command's result or error, a configuration error or the agent version becomes
U+FFFD. So no such message fails its write, to be sent again forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from tether.cloud.batching import BatchLoader
from tether.cloud.storable import has_nul, storable, storable_text
from tether.cloud.store import Store
from tether.cloud.store.config import ConfigStore, gateway_config
from tether.cloud.store.errors import CommandNotFound
from tether.cloud.store.models import commands as commands_table
from tether.cloud.store.records import CommandRecord
from tether.protocol.commands import CommandEvent, CommandState, IllegalTransition
from tether.protocol.messages import (
    CommandRequest,
    CommandUpdate,
    CommandUpdateAck,
    ConfigAck,
    ConfigUpdate,
    ErrorReport,
    Hello,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)

__all__ = [
    "MAX_AGENT_VERSION",
    "MAX_TIER_REASON",
    "GatewayService",
    "MessageHandler",
    "hello_facts",
]

log = logging.getLogger(__name__)

#: Commands handed out in one answer at most (the rest follow in the next).
OUTGOING_LIMIT = 100
#: What a gateway says of itself in its Hello is stored as it opens its link, in one write
#: with the other gateways' openings: cut to what the store holds (``gateways.agent_version``
#: is 64 characters), so one gateway's over-long Hello cannot fail the write for all of them.
MAX_AGENT_VERSION = 64
MAX_TIER_REASON = 1000
#: The largest configuration version (``gateway_config.version`` is a 32-bit INTEGER).
MAX_CONFIG_VERSION = (1 << 31) - 1
#: Ids of commands sent from memory that a plain read of what waits skips (the latest ones).
SENT_MEMORY = 16_384

MessageHandler = Callable[[str, Message], Awaitable[list[Message]]]


class TelemetryGate(Protocol):
    """Whether telemetry is taken at once (the ingest queue has room), a wait for it, and the
    way a link hands a batch over without a coroutine per batch."""

    def has_room(self) -> bool: ...

    async def room(self) -> None: ...

    def submit(
        self, gateway_id: str, message: TelemetryBatch
    ) -> TelemetryReject | asyncio.Future[TelemetryAck | TelemetryReject]: ...


_UPDATE_EVENTS = {
    CommandState.RUNNING.value: CommandEvent.START,
    CommandState.SUCCEEDED.value: CommandEvent.SUCCEED,
    CommandState.FAILED.value: CommandEvent.FAIL,
}


def _now() -> datetime:
    return datetime.now(UTC)


def hello_facts(hello: Hello) -> tuple[str, str]:
    """The agent version and tier reason of a Hello, cut to what the store holds (a NUL in
    them as U+FFFD: stored in a group with other gateways' openings, they must not fail it)."""
    return (
        storable_text(hello.agent_version[:MAX_AGENT_VERSION]),
        storable_text(hello.tier_reason[:MAX_TIER_REASON]),
    )


class _Pending(NamedTuple):
    """A queued or delivered-not-started command, as the store's read of what waits saw it."""

    command_id: str
    state: str
    expires_at: datetime
    kind: str
    args: dict[str, Any]


def _request(
    command_id: str, kind: str, args: dict[str, Any], expires_at: datetime
) -> CommandRequest:
    return CommandRequest(
        command_id=command_id, kind=kind, args=dict(args), expires_at=expires_at.timestamp()
    )


def _as_json(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result as JSON can hold it: msgpack extension values cannot be stored as they are,
    and a NUL is stored as U+FFFD."""
    if result is None:
        return None
    try:
        converted: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
    except (TypeError, msgspec.EncodeError, msgspec.DecodeError):
        return {"unrepresentable": repr(result)[:2000]}  # repr escapes a NUL
    return storable(converted)


class GatewayService:
    """Transport-agnostic handling of gateway messages (one instance per cloud process)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = ConfigStore(store.engine)
        self._waiting: BatchLoader[str, tuple[list[Any], list[_Pending]]] = BatchLoader(
            self._load_waiting
        )
        # Commands committed by this process's API, not yet sent: gateway → id → request.
        self._offers: dict[str, dict[str, CommandRequest]] = {}
        # Delivery marks not yet committed: the group filling up, and each command's group.
        self._marks: list[str] = []
        self._marks_at: datetime | None = None
        self._marks_done: asyncio.Future[tuple[set[str], datetime]] | None = None
        self._marking: dict[str, asyncio.Future[tuple[set[str], datetime]]] = {}
        self._mark_writer: asyncio.Task[None] | None = None
        # Sent from memory (latest first out): a read that began before their mark committed
        # would see them queued. Only a new link or an HTTPS exchange sends them again.
        self._sent: dict[str, None] = {}
        #: Links stop reading while this says telemetry must wait (set with the ingest).
        self.telemetry_gate: TelemetryGate | None = None
        self._handlers: dict[type, MessageHandler] = {
            CommandUpdate: self._command_update,
            ConfigAck: self._config_ack,
        }

    async def _load_waiting(
        self, gateway_ids: list[str]
    ) -> dict[str, tuple[list[Any], list[_Pending]]]:
        """Configuration sections and undelivered or unstarted commands of many gateways,
        two queries for all of them (links opening together ask together)."""
        c = commands_table.c
        out: dict[str, tuple[list[Any], list[_Pending]]] = {g: ([], []) for g in gateway_ids}
        async with self.store.engine.connect() as conn:
            for row in await conn.execute(
                sa.select(gateway_config).where(gateway_config.c.gateway_id.in_(gateway_ids))
            ):
                out[row.gateway_id][0].append(row)
            for row in await conn.execute(
                sa.select(c.gateway_id, c.command_id, c.state, c.expires_at, c.kind, c.args)
                .where(
                    c.gateway_id.in_(gateway_ids),
                    c.state.in_([CommandState.QUEUED.value, CommandState.DELIVERED.value]),
                    c.expires_at > _now(),
                )
                .order_by(c.created_at)
            ):
                out[row.gateway_id][1].append(
                    _Pending(row.command_id, row.state, row.expires_at, row.kind, dict(row.args))
                )
        return out

    def register(self, message_type: type, handler: MessageHandler) -> None:
        """Add the handler of one message type; a second handler for the same type is a bug."""
        if message_type in self._handlers:
            raise ValueError(f"a handler for {message_type.__name__} is already registered")
        self._handlers[message_type] = handler

    async def handle(self, gateway_id: str, message: Message) -> list[Message]:
        handler = self._handlers.get(type(message))
        if handler is None:
            return [
                ErrorReport(
                    code="unexpected-message",
                    message=f"the cloud does not accept {type(message).__name__} from gateways",
                )
            ]
        return await handler(gateway_id, message)

    def offer(self, record: CommandRecord) -> None:
        """A command was just committed for a gateway that may hold a link to this process:
        the next :meth:`outgoing` for it sends the command from memory. Call :meth:`withdraw`
        once the wake-up is done, for the case no link here took it."""
        self._offers.setdefault(record.gateway_id, {})[record.command_id] = _request(
            record.command_id, record.kind, record.args, record.expires_at
        )

    def withdraw(self, gateway_id: str, command_id: str) -> bool:
        """Forget an offer no link took; True if it was still waiting."""
        offers = self._offers.get(gateway_id)
        if offers is None or offers.pop(command_id, None) is None:
            return False
        if not offers:
            del self._offers[gateway_id]
        return True

    async def delivery_marked(self, command_id: str) -> datetime | None:
        """Wait for the delivery mark of a command sent from memory, if one is being written:
        its ``delivered_at`` once committed; None if no mark is pending or the store did not
        take it (the command moved on meanwhile, or the write failed)."""
        done = self._marking.get(command_id)
        if done is None:
            return None
        moved, at = await asyncio.shield(done)
        return at if command_id in moved else None

    async def outgoing(
        self, gateway_id: str, *, link_opened: bool = False, redeliver: bool = False
    ) -> list[Message]:
        """What waits for the gateway: configuration it has not applied (every section when
        a link just opened), then queued unexpired commands, marked delivered, oldest first.

        Commands offered by the API (:meth:`offer`) are the whole answer when there are some
        and the link is not new: sent from memory, marked delivered after the send, in a
        grouped write. Every call that takes no offer reads the store, so a wake-up for any
        other reason (configuration, a command from another node) is still answered in full:
        if this call took an offer meant for another wake-up, that one reads the store."""
        if not (link_opened or redeliver):
            fresh = self._take_offers(gateway_id)
            if fresh:
                self._mark_later([r.command_id for r in fresh])
                return list(fresh)
        now = _now()
        waiting = await self._waiting.get(gateway_id)
        sections, pending = waiting if waiting is not None else ([], [])
        out: list[Message] = [
            ConfigUpdate(section=r.section, version=r.version, data=dict(r.data))
            for r in sections
            if link_opened or r.applied_version != r.version
        ]
        # A delivered-not-started command goes again only when the answer that carried it may
        # have been lost (a new link, an HTTPS exchange); the agent runs an id at most once.
        # One sent from memory was sent, whatever this read saw of its mark: not again here.
        commands = [
            p
            for p in pending
            if p.expires_at > now
            and (
                redeliver
                or (p.state == CommandState.QUEUED.value and p.command_id not in self._sent)
            )
        ][:OUTGOING_LIMIT]
        for p in commands:  # the read covers these offers: they go now, not again later
            self.withdraw(gateway_id, p.command_id)
        if not commands:
            return out
        # Cancelled, expired or started meanwhile (perhaps through another node): not sent.
        # Stamped after the read: it may have seen commands created after ``now``.
        moved = await self.store.deliver_commands([p.command_id for p in commands], now=_now())
        out.extend(
            _request(p.command_id, p.kind, p.args, p.expires_at)
            for p in commands
            if p.command_id in moved
        )
        return out

    def _take_offers(self, gateway_id: str) -> list[CommandRequest]:
        offers = self._offers.pop(gateway_id, None)
        if not offers:
            return []
        now = _now().timestamp()
        live = [r for r in offers.values() if r.expires_at > now]
        if len(live) > OUTGOING_LIMIT:
            self._offers[gateway_id] = {r.command_id: r for r in live[OUTGOING_LIMIT:]}
        return live[:OUTGOING_LIMIT]

    def _mark_later(self, command_ids: list[str]) -> None:
        """Mark commands delivered in the next grouped write (stamped with the latest send)."""
        if self._marks_done is None:
            self._marks_done = asyncio.get_running_loop().create_future()
        for command_id in command_ids:
            self._marking[command_id] = self._marks_done
            self._sent[command_id] = None
        while len(self._sent) > SENT_MEMORY:
            del self._sent[next(iter(self._sent))]
        self._marks.extend(command_ids)
        self._marks_at = _now()
        if self._mark_writer is None or self._mark_writer.done():
            self._mark_writer = asyncio.get_running_loop().create_task(self._write_marks())

    async def _write_marks(self) -> None:
        while self._marks and self._marks_done is not None and self._marks_at is not None:
            ids, at, done = self._marks, self._marks_at, self._marks_done
            self._marks, self._marks_at, self._marks_done = [], None, None
            moved: set[str] = set()
            try:
                moved = await self.store.deliver_commands(ids, now=at)
            except (SQLAlchemyError, OSError) as exc:
                # They stay queued: the next read of what waits for their gateways sends them.
                log.error("%d commands sent but not marked delivered: %s", len(ids), exc)
            finally:
                for command_id in ids:
                    if self._marking.get(command_id) is done:
                        del self._marking[command_id]
                done.set_result((moved, at))

    async def _config_ack(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, ConfigAck)
        problem = None
        if has_nul(message.section):
            problem = "the section name holds a NUL character"
        elif not 0 <= message.version <= MAX_CONFIG_VERSION:
            problem = f"version {message.version} is out of range"
        if problem is not None:
            # No such section or version can be stored: there is nothing it could be about.
            return [
                ErrorReport(
                    code="invalid",
                    message=f"config ack: {problem}",
                    ref=storable_text(message.section[:64]),
                )
            ]
        await self.config.applied(
            gateway_id,
            message.section,
            message.version,
            None if message.ok else storable_text(message.error or "refused"),
        )
        if not message.ok:
            log.warning(  # what the gateway sent is quoted (%r): it cannot forge a log line
                "gateway %s refused %r v%d: %r",
                gateway_id,
                message.section,
                message.version,
                message.error,
            )
        return []

    async def _command_update(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, CommandUpdate)
        if has_nul(message.command_id):
            return [
                ErrorReport(
                    code="invalid",
                    message="the command id holds a NUL character",
                    ref=storable_text(message.command_id[:64]),
                )
            ]
        event = _UPDATE_EVENTS.get(message.state)
        if event is None:
            return [
                ErrorReport(
                    code="bad-command-state",
                    message=f"a gateway cannot report state {message.state!r}",
                    ref=message.command_id,
                )
            ]
        # A delivery mark of this command still being written lands first (delivered, then
        # running: the record keeps the order the agent saw).
        await self.delivery_marked(message.command_id)
        try:
            await self.store.apply_command_event(
                message.command_id,
                event,
                now=_now(),
                gateway_id=gateway_id,
                result=_as_json(message.result),
                error=None if message.error is None else storable_text(message.error),
            )
        except CommandNotFound:
            return [
                ErrorReport(
                    code="unknown-command",
                    message="no such command for this gateway",
                    ref=message.command_id,
                )
            ]
        except IllegalTransition as exc:
            # A repeated update after a relink, or one that lost a race with expiry/cancel:
            # the cloud's record stands; acknowledge so the agent stops resending.
            log.info("command %r: update %r ignored (%s)", message.command_id, message.state, exc)
        return [CommandUpdateAck(command_id=message.command_id, state=message.state)]
