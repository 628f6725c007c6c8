"""The WebSocket tier on the cloud side: one link per gateway carrying every channel.

Thin glue around :class:`~tether.protocol.session.LinkSession`: feed received frames, act on the
events through :class:`~tether.cloud.service.GatewayService`, write what the session has to send.
:class:`LinkHub` knows which gateways hold a link to this process, so a new command can be pushed
at once and a revoked gateway's link closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime

from aiohttp import WSMsgType, web
from sqlalchemy.exc import SQLAlchemyError

from tether.cloud.identity import GatewayIdentity
from tether.cloud.service import GatewayService
from tether.cloud.store import Store
from tether.cloud.store.links import LinkStore
from tether.protocol.codec import HEADER
from tether.protocol.messages import CloseCode, ErrorReport, Message, TelemetryBatch
from tether.protocol.session import (
    FrameRejected,
    HelloReceived,
    LinkClosed,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)

__all__ = ["LinkHub", "WebSocketLink"]

log = logging.getLogger(__name__)


class LinkHub:
    """The links held by this process, by gateway id."""

    def __init__(self) -> None:
        self._links: dict[str, WebSocketLink] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def get(self, gateway_id: str) -> WebSocketLink | None:
        return self._links.get(gateway_id)

    def register(self, link: WebSocketLink) -> WebSocketLink | None:
        """Make *link* the gateway's link; return the one it replaces, if any."""
        previous = self._links.get(link.gateway_id)
        self._links[link.gateway_id] = link
        return previous

    def unregister(self, link: WebSocketLink) -> bool:
        if self._links.get(link.gateway_id) is link:
            del self._links[link.gateway_id]
            return True
        return False

    def waiter(self, gateway_id: str) -> asyncio.Event:
        """An event set when something arrives for the gateway (an HTTPS long-poll waits)."""
        event = asyncio.Event()
        self._waiters.setdefault(gateway_id, set()).add(event)
        return event

    def forget_waiter(self, gateway_id: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(gateway_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[gateway_id]

    async def wake(self, gateway_id: str) -> None:
        """Something waits for the gateway: push it now if it is linked here."""
        for event in self._waiters.get(gateway_id, ()):
            event.set()
        link = self._links.get(gateway_id)
        if link is not None:
            await link.deliver()

    async def close(self, gateway_id: str, code: str, reason: str) -> bool:
        link = self._links.get(gateway_id)
        if link is None:
            return False
        await link.close(code, reason)
        return True

    async def close_all(self, code: str, reason: str) -> None:
        await asyncio.gather(
            *(link.close(code, reason) for link in list(self._links.values())),
            return_exceptions=True,
        )


class WebSocketLink:
    """One gateway's WebSocket link."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        identity: GatewayIdentity,
        *,
        service: GatewayService,
        hub: LinkHub,
        store: Store,
        links: LinkStore,
        peer: str | None,
        heartbeat_interval: float,
        max_frame: int,
    ) -> None:
        self.ws = ws
        self.gateway_id = identity.gateway_id
        self.identity = identity
        self.service = service
        self.hub = hub
        self.store = store
        self.links = links
        self.peer = peer
        self.session = LinkSession(
            Role.SERVER,
            now=time.monotonic(),
            heartbeat_interval=heartbeat_interval,
            max_frame=max_frame,
        )
        self._send_lock = asyncio.Lock()
        self._deliver_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            if self.session.state is not SessionState.CLOSED:
                self.session.close(CloseCode.GOING_AWAY, "link ended")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.flush()
            if not self.ws.closed:
                await self.ws.close()
            if self.hub.unregister(self):
                now = datetime.now(UTC)
                await self.store.set_link_state(self.gateway_id, linked=False, now=now)
                await self.store.requeue_delivered(self.gateway_id, now=now)

    async def _loop(self) -> None:
        session = self.session
        while session.state is not SessionState.CLOSED:
            # aiohttp reads a timeout of 0 as "none": never pass it, or a deadline that is
            # due now would wait for a frame that may never come.
            timeout = max(0.001, session.next_deadline() - time.monotonic())
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                session.tick(time.monotonic())
                await self.flush()
                continue
            now = time.monotonic()
            if msg.type is WSMsgType.BINARY:
                session.receive_frame(msg.data, now=now)
            elif msg.type is WSMsgType.TEXT:
                session.receive_frame(msg.data.encode(), now=now)
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the transport is gone
                session.close(CloseCode.GOING_AWAY, f"websocket {msg.type.name.lower()}")
                break
            # Handling one event may raise another (accept() raises LinkOpened): drain them all.
            while events := session.events():
                for event in events:
                    await self._on_event(event)
            await self.flush()

    async def _on_event(self, event: object) -> None:
        session = self.session
        if isinstance(event, HelloReceived):
            session.accept(
                session_id=uuid.uuid4().hex,
                gateway_id=self.gateway_id,
                server_time=time.time(),
                now=time.monotonic(),
            )
            previous = self.hub.register(self)
            if previous is not None:
                await previous.close(CloseCode.REPLACED, "a newer link of this gateway took over")
            await self.links.opened(
                self.gateway_id,
                tier="ws",
                reason=event.hello.tier_reason,
                agent_version=event.hello.agent_version,
                peer=self.peer,
            )
            log.info("gateway %s linked (agent %s)", self.gateway_id, event.hello.agent_version)
        elif isinstance(event, LinkOpened):
            task = asyncio.get_running_loop().create_task(self.deliver(link_opened=True))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif isinstance(event, LinkClosed):
            log.info("gateway %s link closed: %s %s", self.gateway_id, event.code, event.reason)
        elif isinstance(event, FrameRejected):
            log.warning("gateway %s sent a refused frame: %s", self.gateway_id, event.reason)
        elif isinstance(event, TelemetryBatch):
            # Acknowledged after the group commit: do not stop reading while it happens, so a
            # window of batches (and any command update between them) keeps flowing.
            task = asyncio.get_running_loop().create_task(self._handle_later(event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._send_all(await self._handle(event))  # type: ignore[arg-type]

    async def _handle(self, message: Message) -> list[Message]:
        """The service's answer; a store failure refuses this one message, not the link."""
        try:
            return await self.service.handle(self.gateway_id, message)
        except (SQLAlchemyError, OSError) as exc:
            log.error(
                "gateway %s: %s not handled: %s", self.gateway_id, type(message).__name__, exc
            )
            return [
                ErrorReport(
                    code="unavailable",
                    message="the cloud could not store this message now; send it again later",
                )
            ]

    async def _handle_later(self, message: Message) -> None:
        self._send_all(await self._handle(message))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.flush()

    def _send_all(self, messages: list[Message]) -> None:
        for message in messages:
            if self.session.state is SessionState.OPEN:
                self.session.send(message)

    async def flush(self) -> None:
        async with self._send_lock:
            for frame in self.session.data_to_send():
                if self.ws.closed:
                    return
                await self.ws.send_bytes(frame)

    async def deliver(self, *, link_opened: bool = False) -> None:
        """Send whatever waits for this gateway (configuration, queued commands)."""
        if self.session.state is not SessionState.OPEN:
            return
        async with self._deliver_lock:
            # A new link also takes what an older one (perhaps on a process that died) was given
            # but never started: the agent runs an id at most once, so sending again is harmless.
            outgoing = await self.service.outgoing(
                self.gateway_id, link_opened=link_opened, redeliver=link_opened
            )
            self._send_all(outgoing)
            with contextlib.suppress(ConnectionError):
                await self.flush()

    async def close(self, code: str, reason: str) -> None:
        self.session.close(code, reason)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.flush()
        await self.ws.close()


def max_ws_message(max_frame: int) -> int:
    """The WebSocket message limit: a whole frame plus room to refuse an oversized one politely."""
    return 2 * max_frame + HEADER.size
