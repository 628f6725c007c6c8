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
        self._handlers: dict[type, MessageHandler] = {
            CommandUpdate: self._command_update,
            ConfigAck: self._config_ack,
        }

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
        states = [CommandState.QUEUED.value]
        if redeliver:
            # A response may have been lost: delivered-not-started goes again (the agent runs
            # an id at most once).
            states.append(CommandState.DELIVERED.value)
        c = commands_table.c
        async with self.store.engine.connect() as conn:  # one checkout for both questions
            sections = (
                await conn.execute(
                    sa.select(gateway_config).where(gateway_config.c.gateway_id == gateway_id)
                )
            ).all()
            command_ids = (
                (
                    await conn.execute(
                        sa.select(c.command_id)
                        .where(c.gateway_id == gateway_id, c.state.in_(states), c.expires_at > now)
                        .order_by(c.created_at)
                        .limit(OUTGOING_LIMIT)
                    )
                )
                .scalars()
                .all()
            )
        out: list[Message] = [
            ConfigUpdate(section=r.section, version=r.version, data=dict(r.data))
            for r in sections
            if link_opened or r.applied_version != r.version
        ]
        commands = list(command_ids)
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
