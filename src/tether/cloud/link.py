"""The WebSocket tier on the cloud side: one link per gateway carrying every channel.

Thin glue around :class:`~tether.protocol.session.LinkSession`: feed received frames, act on the
events through :class:`~tether.cloud.service.GatewayService`, write what the session has to send.
:class:`LinkHub` knows which gateways hold a link to this process, so a new command can be pushed
at once and a revoked gateway's link closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Protocol

from aiohttp import WSMsgType, web
from sqlalchemy.exc import SQLAlchemyError

from tether.cloud.identity import GatewayIdentity
from tether.cloud.service import GatewayService, TelemetryGate, hello_facts
from tether.cloud.store import Store
from tether.cloud.store.links import LinkStore
from tether.protocol.codec import HEADER, PING_FRAME_MAX, pong_for_ping
from tether.protocol.messages import (
    CloseCode,
    ErrorReport,
    Message,
    TelemetryAck,
    TelemetryBatch,
    TelemetryReject,
)
from tether.protocol.session import (
    Event,
    FrameRejected,
    HelloReceived,
    LinkClosed,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)

__all__ = [
    "AiohttpChannel",
    "LinkChannel",
    "LinkHub",
    "WebSocketLink",
    "max_ws_message",
    "serve_aiohttp_link",
]

log = logging.getLogger(__name__)


#: Link deadlines are kept to this many seconds at most (the wheel's slot width).
DEADLINE_GRANULARITY = 0.25
#: A gateway whose link is taken over this many times within REPLACED_WINDOW seconds is
#: probably running on two hosts (see :meth:`LinkHub.replaced`).
REPLACED_WARN = 3
REPLACED_WINDOW = 600.0
#: Gateways whose take-overs are remembered at most (the quiet ones are forgotten first).
REPLACED_TRACKED = 10_000


#: The close codes the protocol defines: the labels links are counted under when they end.
KNOWN_CLOSE_CODES: frozenset[str] = frozenset(
    value for name, value in vars(CloseCode).items() if name.isupper() and isinstance(value, str)
)


class LinkHub:
    """The links held by this process: open ones by gateway id, and every live one (opening
    included) so that shutting down reaches them all.

    The hub also keeps the links' deadlines (handshake, liveness) on a timing wheel: each link
    sits in the slot of its next deadline, and one ticker empties the slots as they fall due.
    Heartbeats only move a session's ``last_received``; a link whose slot comes up early (it
    was heard from since) is put in the slot of its new deadline. So a link costs about one
    look per liveness timeout, whatever the heartbeat rate, with no timer of its own."""

    def __init__(self, *, granularity: float = DEADLINE_GRANULARITY) -> None:
        self._links: dict[str, WebSocketLink] = {}
        self._live: set[WebSocketLink] = set()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._granularity = granularity
        self._wheel: dict[int, set[WebSocketLink]] = {}
        self._next_slot = math.floor(time.monotonic() / granularity)
        self._ticker: asyncio.TimerHandle | None = None
        # gateway -> when its link was taken over by a newer one, within REPLACED_WINDOW
        self._replaced: dict[str, collections.deque[float]] = {}
        self._warned: dict[str, float] = {}  # gateway -> when a clone was last warned of
        #: Links opened (their Hello accepted) and ended, by close code: for /metrics.
        self.opened_total = 0
        self.closed_total: dict[str, int] = {}
        self.replaced_total = 0

    # -- a gateway on two hosts ------------------------------------------------------------------

    def replaced(self, gateway_id: str, *, old_peer: str | None, new_peer: str | None) -> bool:
        """A link of *gateway_id* just took over from an older one. Returns True (and warns,
        once per window) when that happened :data:`REPLACED_WARN` times within
        :data:`REPLACED_WINDOW`: two hosts are probably running with the same identity, each
        taking the link from the other (their telemetry is deduplicated, so one's is lost)."""
        self.replaced_total += 1
        now = time.monotonic()
        if len(self._replaced) > REPLACED_TRACKED:  # bounded: forget the quiet ones
            for gid in [g for g, t in self._replaced.items() if now - t[-1] > REPLACED_WINDOW]:
                del self._replaced[gid]
        times = self._replaced.setdefault(gateway_id, collections.deque(maxlen=REPLACED_WARN))
        times.append(now)
        if len(times) < REPLACED_WARN or now - times[0] > REPLACED_WINDOW:
            return False
        if now - self._warned.get(gateway_id, -math.inf) > REPLACED_WINDOW:
            self._warned[gateway_id] = now
            log.warning(
                "gateway %s: its link was taken over %d times within %d minutes (now from %s, "
                "before from %s): another host is probably running with this gateway's identity; "
                "revoke the gateway and enroll each host with its own token",
                gateway_id,
                REPLACED_WARN,
                round(REPLACED_WINDOW / 60),
                new_peer or "?",
                old_peer or "?",
            )
        return True

    # -- deadlines -------------------------------------------------------------------------------

    def schedule(self, link: WebSocketLink, deadline: float) -> None:
        """Look at *link* again once the monotonic time *deadline* has passed (``inf``: never)."""
        old = link.slot
        if deadline == math.inf:
            slot = None
        else:
            slot = max(math.ceil(deadline / self._granularity), self._next_slot)
        if old == slot:
            return
        if old is not None:
            bucket = self._wheel.get(old)
            if bucket is not None:
                bucket.discard(link)
                if not bucket:
                    del self._wheel[old]
        link.slot = slot
        if slot is None:
            return
        if not self._wheel and self._ticker is None:
            # the wheel was idle: skip the empty slots rather than walk them
            self._next_slot = max(self._next_slot, math.floor(time.monotonic() / self._granularity))
            slot = link.slot = max(slot, self._next_slot)
        self._wheel.setdefault(slot, set()).add(link)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(self._granularity, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = time.monotonic()
        upto = math.floor(now / self._granularity)
        wheel = self._wheel
        while self._next_slot <= upto and wheel:
            bucket = wheel.pop(self._next_slot, None)
            self._next_slot += 1
            for link in bucket or ():
                link.slot = None
                link.deadline_due(now)
        self._next_slot = max(self._next_slot, upto + 1)
        # a link moved to a later slot above may have started the next tick already
        if wheel and self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(self._granularity, self._tick)

    def __len__(self) -> int:
        return len(self._links)

    def get(self, gateway_id: str) -> WebSocketLink | None:
        return self._links.get(gateway_id)

    def track(self, link: WebSocketLink) -> None:
        self._live.add(link)

    def untrack(self, link: WebSocketLink) -> None:
        self._live.discard(link)

    def gateway_ids(self) -> list[str]:
        """The gateways whose WebSocket link this process holds."""
        return list(self._links)

    def register(self, link: WebSocketLink) -> WebSocketLink | None:
        """Make *link* the gateway's link; return the one it replaces, if any."""
        previous = self._links.get(link.gateway_id)
        self._links[link.gateway_id] = link
        self.opened_total += 1
        return previous

    def note_closed(self, code: str | None) -> None:
        """Count a link that was open and has ended: by its close code, one the protocol
        knows (what a gateway sends is not a label of its own), or ``connection-lost`` when
        the connection ended without one."""
        if code is None:
            label = "connection-lost"
        elif code in KNOWN_CLOSE_CODES:
            label = code
        else:
            label = "other"
        self.closed_total[label] = self.closed_total.get(label, 0) + 1

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
        """Close every link; their clean-up (link state, requeued commands) is queued in the
        link store, whose ``drain()`` waits for it."""
        await asyncio.gather(
            *(link.close(code, reason) for link in list(self._live)),
            return_exceptions=True,
        )
        for link in list(self._live):
            link.transport_lost()


class LinkChannel(Protocol):
    """How a link writes: the lean server's :class:`~tether.cloud.wsserver.LinkConnection`,
    or :class:`AiohttpChannel` for an upgrade that arrived on a connection aiohttp serves."""

    def write_frames(self, frames: list[bytes]) -> None: ...

    async def drain(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close_transport(self, code: int = ..., reason: str = ...) -> None: ...


#: Reading pauses while this many received frames wait for the link to handle them.
_BACKLOG_PAUSE = 32
_BACKLOG_RESUME = 8


class WebSocketLink:
    """One gateway's WebSocket link, driven by its channel's callbacks.

    A frame is fed to the session the moment it arrives; heartbeats are answered right there.
    Messages that need the store are handled in order by one task that exists only while there
    is such work (frames arriving meanwhile wait in a backlog, and reading pauses if it grows).
    Telemetry batches are handled beside that order, so a window of them keeps flowing while
    each waits for its group commit. The hub's sweeper calls :meth:`tick` for liveness.
    """

    __slots__ = (
        "_background",
        "_backlog",
        "_close_code",
        "_deliver_lock",
        "_flush_pending",
        "_lost",
        "_opened_at",
        "_worker",
        "channel",
        "gateway_id",
        "hub",
        "identity",
        "links",
        "peer",
        "service",
        "session",
        "slot",
        "store",
    )

    def __init__(
        self,
        channel: LinkChannel,
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
        self.channel = channel
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
        self._backlog: collections.deque[bytes] | None = None  # not None while the worker runs
        self._worker: asyncio.Task[None] | None = None
        self._deliver_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[None]] | None = None
        self._flush_pending = False
        self._lost = False
        self._opened_at: datetime | None = None  # when the store recorded this link's start
        self._close_code: str | None = None  # why the session closed, once it has
        self.slot: int | None = None  # the hub's wheel slot of the next deadline
        hub.track(self)
        hub.schedule(self, self.session.next_deadline())

    # -- from the channel ------------------------------------------------------------------------

    def frame_received(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is not None:
            backlog.append(data)
            if len(backlog) == _BACKLOG_PAUSE:
                self.channel.pause_reading()
            return
        session = self.session
        if len(data) <= PING_FRAME_MAX and session.state is SessionState.OPEN:
            pong = pong_for_ping(data)  # a heartbeat: answered without the whole session path
            if pong is not None:
                session.ping_answered(now=time.monotonic())
                self.channel.write_frames([pong])
                return
        session.receive_frame(data, now=time.monotonic())
        events = session.events()
        if len(events) == 1 and type(events[0]) is TelemetryBatch:
            # The common case, handed to ingest without a task while its queue has room.
            gate = self.service.telemetry_gate
            if gate is not None and gate.has_room():
                self._submit(gate, events[0])
                self._flush()
                return
        if events:
            self._backlog = collections.deque()
            self._worker = asyncio.get_running_loop().create_task(self._work(events))
        else:
            self._flush()

    def transport_lost(self) -> None:
        """The connection is gone: forget the link and put back what it was given."""
        if self._lost:
            return
        self._lost = True
        self.hub.schedule(self, math.inf)
        if self.session.state is not SessionState.CLOSED:
            self.session.close(CloseCode.GOING_AWAY, "link ended")
        self.hub.untrack(self)
        if self.hub.unregister(self):
            self.hub.note_closed(self._close_code)
            # Marked offline and its delivered commands requeued in the next grouped write.
            self.links.closed_soon(self.gateway_id, opened_at=self._opened_at)

    # -- deadlines ---------------------------------------------------------------------------

    def deadline_due(self, now: float) -> None:
        """The hub's wheel reached this link's slot: enforce what fell due, look again later."""
        if self._lost:
            return
        if self.session.next_deadline() <= now:
            self.tick(now)
        self.hub.schedule(self, self.session.next_deadline())

    def tick(self, now: float) -> None:
        """Enforce the liveness and handshake deadlines that fell due by *now*."""
        self.session.tick(now)
        if self.session.state is SessionState.CLOSED:
            for event in self.session.events():
                if isinstance(event, LinkClosed):
                    self._close_code = event.code
                    log.info(
                        "gateway %s link closed: %r %r", self.gateway_id, event.code, event.reason
                    )
            self._flush()

    # -- work ------------------------------------------------------------------------------------

    async def _work(self, events: list[Event]) -> None:
        session = self.session
        backlog = self._backlog
        assert backlog is not None
        try:
            while True:
                while events:
                    for event in events:
                        await self._on_event(event)
                    events = session.events()  # accept() raises LinkOpened, and so on
                self._flush()
                if not backlog or session.state is SessionState.CLOSED:
                    break
                if len(backlog) == _BACKLOG_RESUME:
                    self.channel.resume_reading()
                session.receive_frame(backlog.popleft(), now=time.monotonic())
                events = session.events()
        except Exception:  # a bug must not leave the link half-handled: close it, say why
            log.exception("gateway %s: link handler failed", self.gateway_id)
            session.close(CloseCode.GOING_AWAY, "the cloud failed to handle a message")
            self._flush()
        finally:
            if len(backlog) >= _BACKLOG_RESUME:
                self.channel.resume_reading()
            self._backlog = None
            self._worker = None
        # Frames that arrived after the last look are fed on the normal path.
        for data in backlog:
            self.frame_received(data)

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
                self.hub.replaced(self.gateway_id, old_peer=previous.peer, new_peer=self.peer)
                await previous.close(CloseCode.REPLACED, "a newer link of this gateway took over")
            agent_version, reason = hello_facts(event.hello)
            self._opened_at = await self.links.opened(
                self.gateway_id,
                tier="ws",
                reason=reason,
                agent_version=agent_version,
                peer=self.peer,
            )
            # What the gateway sent is logged quoted (%r): a newline in it cannot forge a line.
            log.info("gateway %s linked (agent %r)", self.gateway_id, agent_version)
        elif isinstance(event, LinkOpened):
            self._in_background(self.deliver(link_opened=True))
        elif isinstance(event, LinkClosed):
            self._close_code = event.code
            log.info("gateway %s link closed: %r %r", self.gateway_id, event.code, event.reason)
        elif isinstance(event, FrameRejected):
            log.warning("gateway %s sent a refused frame: %r", self.gateway_id, event.reason)
        elif isinstance(event, TelemetryBatch):
            # Acknowledged after the group commit: do not stop reading while it happens, so a
            # window of batches (and any command update between them) keeps flowing.
            gate = self.service.telemetry_gate
            if gate is None:
                self._in_background(self._handle_later(event))
                return
            if not gate.has_room():
                await self._wait_for_ingest(gate)
            self._submit(gate, event)
        else:
            self._send_all(await self._handle(event))  # type: ignore[arg-type]

    async def _wait_for_ingest(self, gate: TelemetryGate) -> None:
        """The ingest queue is full: hold this batch and read nothing more from this gateway
        until there is room, so what it sends next waits in the kernel's buffers and on its
        spool, not in the cloud's memory."""
        self.channel.pause_reading()
        try:
            await gate.room()
        finally:
            backlog = self._backlog
            if backlog is None or len(backlog) < _BACKLOG_PAUSE:  # else the backlog's pause
                self.channel.resume_reading()

    def _submit(self, gate: TelemetryGate, batch: TelemetryBatch) -> None:
        """Hand a batch to ingest; its answer is sent from the future's done-callback."""
        answer = gate.submit(self.gateway_id, batch)
        if isinstance(answer, TelemetryReject):
            self._send_all([answer])
        else:
            answer.add_done_callback(lambda done: self._batch_answered(done, batch))

    def _batch_answered(
        self, done: asyncio.Future[TelemetryAck | TelemetryReject], batch: TelemetryBatch
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            # Ingest answers every batch it took; should it fail to, the gateway sends it again.
            log.error(
                "gateway %s: batch %s %d..%d went unanswered by ingest",
                self.gateway_id,
                batch.stream,
                batch.first_seq,
                batch.last_seq,
            )
            answer: TelemetryAck | TelemetryReject = TelemetryReject(
                stream=batch.stream,
                first_seq=batch.first_seq,
                last_seq=batch.last_seq,
                reason="the cloud could not store this batch now; send it again later",
                permanent=False,
            )
        else:
            answer = done.result()
        self._send_all([answer])
        # A group commit answers many batches of a link in the same loop pass: their answers
        # leave in one write (one TLS record, one send) once that pass is through.
        self._flush_soon()

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        if self._background is None:
            self._background = set()
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        # A group commit answers many batches of a link in the same loop pass: their answers
        # leave in one write (one TLS record, one send) once that pass is through.
        self._flush_soon()
        await self.channel.drain()

    def _send_all(self, messages: list[Message]) -> None:
        for message in messages:
            if self.session.state is SessionState.OPEN:
                self.session.send(message)

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self._flush_pending = False
        if not self._lost:
            self._flush()

    def _flush(self) -> None:
        frames = self.session.data_to_send()
        if frames:
            self.channel.write_frames(frames)
        if self.session.state is SessionState.CLOSED:
            self.channel.close_transport()

    async def flush(self) -> None:
        self._flush()
        await self.channel.drain()

    async def deliver(self, *, link_opened: bool = False) -> None:
        """Send whatever waits for this gateway (configuration, queued commands)."""
        if self.session.state is not SessionState.OPEN:
            return
        if self._deliver_lock is None:
            self._deliver_lock = asyncio.Lock()
        async with self._deliver_lock:
            # A new link also takes what an older one (perhaps on a process that died) was given
            # but never started: the agent runs an id at most once, so sending again is harmless.
            outgoing = await self.service.outgoing(
                self.gateway_id, link_opened=link_opened, redeliver=link_opened
            )
            self._send_all(outgoing)
            await self.flush()

    async def close(self, code: str, reason: str) -> None:
        self.session.close(code, reason)
        await self.flush()


class AiohttpChannel:
    """A :class:`LinkChannel` over aiohttp's WebSocket, for the upgrade that arrives on a
    connection aiohttp already serves (a reused keep-alive connection, a test server)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def write_frames(self, frames: list[bytes]) -> None:
        if self._closing:
            return
        self._outgoing.extend(frames)
        self._idle.clear()
        self._ready.set()

    async def drain(self) -> None:
        await self._idle.wait()

    def pause_reading(self) -> None:
        """aiohttp's reader is paused by the loop in :func:`serve_aiohttp_link` instead."""

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self._closing or self.ws.closed

    def close_transport(self, code: int = 1000, reason: str = "") -> None:
        self._closing = True
        self._ready.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._outgoing:
                    frame = self._outgoing.popleft()
                    if self.ws.closed:
                        self._outgoing.clear()
                        break
                    await self.ws.send_bytes(frame)
                self._idle.set()
                if self._closing:
                    break
        except (ConnectionError, RuntimeError):
            self._outgoing.clear()
            self._idle.set()
        await self.ws.close()

    async def finish(self) -> None:
        self.close_transport()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer


async def serve_aiohttp_link(ws: web.WebSocketResponse, link: WebSocketLink) -> None:
    """Feed *link* from aiohttp's WebSocket until the connection ends."""
    channel = link.channel
    assert isinstance(channel, AiohttpChannel)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                link.frame_received(msg.data)
            elif msg.type is WSMsgType.TEXT:
                link.frame_received(msg.data.encode())
            else:
                break
            worker = link._worker
            backlog = link._backlog
            if worker is not None and backlog is not None and len(backlog) >= _BACKLOG_PAUSE:
                await asyncio.wait([worker])  # aiohttp reads on only when the link caught up
            gate = link.service.telemetry_gate
            if gate is not None and not gate.has_room():
                await gate.room()  # the ingest queue is full: read on once it has room
            if channel.is_closing():
                break
    finally:
        link.transport_lost()
        await channel.finish()


def max_ws_message(max_frame: int) -> int:
    """The WebSocket message limit: a whole frame plus room to refuse an oversized one politely."""
    return 2 * max_frame + HEADER.size
