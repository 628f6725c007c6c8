"""What the cloud does with a gateway's messages, whatever tier carried them.

The WebSocket tier and the HTTPS tiers both call :meth:`GatewayService.handle` for each message a
gateway sent and send back what it returns; they call :meth:`GatewayService.outgoing` to collect
what waits for the gateway (queued commands, configuration). So a command or a telemetry batch
means the same on every tier: only the latency differs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from tether.cloud.batching import BatchLoader
from tether.cloud.store import Store
from tether.cloud.store.config import ConfigStore, gateway_config
from tether.cloud.store.errors import CommandNotFound
from tether.cloud.store.models import commands as commands_table
from tether.protocol.commands import CommandEvent, CommandState, IllegalTransition
from tether.protocol.messages import (
    CommandRequest,
    CommandUpdate,
    CommandUpdateAck,
    ConfigAck,
    ConfigUpdate,
    ErrorReport,
    Message,
)

__all__ = ["GatewayService", "MessageHandler"]

log = logging.getLogger(__name__)

#: Commands handed out in one answer at most (the rest follow in the next).
OUTGOING_LIMIT = 100

MessageHandler = Callable[[str, Message], Awaitable[list[Message]]]

_UPDATE_EVENTS = {
    CommandState.RUNNING.value: CommandEvent.START,
    CommandState.SUCCEEDED.value: CommandEvent.SUCCEED,
    CommandState.FAILED.value: CommandEvent.FAIL,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _storable(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result as JSON can hold it: msgpack extension values cannot be stored as they are."""
    if result is None:
        return None
    try:
        converted: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
    except (TypeError, msgspec.EncodeError, msgspec.DecodeError):
        return {"unrepresentable": repr(result)[:2000]}
    return converted


class GatewayService:
    """Transport-agnostic handling of gateway messages (one instance per cloud process)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = ConfigStore(store.engine)
        self._waiting: BatchLoader[str, tuple[list[Any], list[tuple[str, str, datetime]]]] = (
            BatchLoader(self._load_waiting)
        )
        self._handlers: dict[type, MessageHandler] = {
            CommandUpdate: self._command_update,
            ConfigAck: self._config_ack,
        }

    async def _load_waiting(
        self, gateway_ids: list[str]
    ) -> dict[str, tuple[list[Any], list[tuple[str, str, datetime]]]]:
        """Configuration sections and undelivered or unstarted commands of many gateways,
        two queries for all of them (links opening together ask together)."""
        c = commands_table.c
        out: dict[str, tuple[list[Any], list[tuple[str, str, datetime]]]] = {
            g: ([], []) for g in gateway_ids
        }
        async with self.store.engine.connect() as conn:
            for row in await conn.execute(
                sa.select(gateway_config).where(gateway_config.c.gateway_id.in_(gateway_ids))
            ):
                out[row.gateway_id][0].append(row)
            for row in await conn.execute(
                sa.select(c.gateway_id, c.command_id, c.state, c.expires_at)
                .where(
                    c.gateway_id.in_(gateway_ids),
                    c.state.in_([CommandState.QUEUED.value, CommandState.DELIVERED.value]),
                    c.expires_at > _now(),
                )
                .order_by(c.created_at)
            ):
                out[row.gateway_id][1].append((row.command_id, row.state, row.expires_at))
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

    async def outgoing(
        self, gateway_id: str, *, link_opened: bool = False, redeliver: bool = False
    ) -> list[Message]:
        """What waits for the gateway: configuration it has not applied (every section when
        a link just opened), then queued unexpired commands, marked delivered, oldest first."""
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
        commands = [
            command_id
            for command_id, state, expires_at in pending
            if expires_at > now and (redeliver or state == CommandState.QUEUED.value)
        ][:OUTGOING_LIMIT]
        for command in commands:
            try:
                record = await self.store.apply_command_event(
                    command, CommandEvent.DELIVER, now=now, gateway_id=gateway_id
                )
            except IllegalTransition:
                continue  # cancelled or expired meanwhile, or another node delivered it
            out.append(
                CommandRequest(
                    command_id=record.command_id,
                    kind=record.kind,
                    args=dict(record.args),
                    expires_at=record.expires_at.timestamp(),
                )
            )
        return out

    async def _config_ack(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, ConfigAck)
        await self.config.applied(
            gateway_id,
            message.section,
            message.version,
            None if message.ok else (message.error or "refused"),
        )
        if not message.ok:
            log.warning(
                "gateway %s refused %s v%d: %s",
                gateway_id,
                message.section,
                message.version,
                message.error,
            )
        return []

    async def _command_update(self, gateway_id: str, message: Message) -> list[Message]:
        assert isinstance(message, CommandUpdate)
        event = _UPDATE_EVENTS.get(message.state)
        if event is None:
            return [
                ErrorReport(
                    code="bad-command-state",
                    message=f"a gateway cannot report state {message.state!r}",
                    ref=message.command_id,
                )
            ]
        try:
            await self.store.apply_command_event(
                message.command_id,
                event,
                now=_now(),
                gateway_id=gateway_id,
                result=_storable(message.result),
                error=message.error,
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
            log.info("command %s: update %s ignored (%s)", message.command_id, message.state, exc)
        return [CommandUpdateAck(command_id=message.command_id, state=message.state)]
