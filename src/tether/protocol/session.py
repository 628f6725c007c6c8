"""The link session state machine: bytes in, events out, bytes to send. No I/O, no clocks.

The I/O layer (cloud link handler, agent link tiers) feeds received frames with
:meth:`LinkSession.receive_frame`, reads :meth:`LinkSession.events`, writes what
:meth:`LinkSession.data_to_send` returns, and calls :meth:`LinkSession.tick` with the monotonic
time whenever :meth:`LinkSession.next_deadline` passes. Times are always passed in.

    client                                   server
    HANDSHAKE --Hello-->                      HANDSHAKE
                                              (HelloReceived event; app calls accept())
    OPEN      <--Welcome--                    OPEN
    ... Ping/Pong every heartbeat_interval (client pings; both check liveness) ...
    CLOSED    <--Close(code, reason)-->       CLOSED

A frame that is whole but cannot be decoded is refused with an :class:`ErrorReport` and the link
survives (the framing is still in step). A frame in an unsupported version, a message the state
does not allow, or silence beyond the liveness timeout close the session with a code.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from tether.protocol.codec import (
    DEFAULT_MAX_FRAME,
    HARD_MAX_FRAME,
    MIN_FRAME,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    decode_frame,
    encode_frame,
)
from tether.protocol.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
)
from tether.protocol.messages import (
    Close,
    CloseCode,
    ErrorReport,
    Hello,
    Message,
    Ping,
    Pong,
    Welcome,
)

__all__ = [
    "Event",
    "FrameRejected",
    "HelloReceived",
    "LinkClosed",
    "LinkOpened",
    "LinkSession",
    "Role",
    "SessionState",
]


class Role(enum.Enum):
    CLIENT = "client"  # the gateway agent
    SERVER = "server"  # the cloud


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Server side: the agent said hello; call :meth:`LinkSession.accept` or close."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class LinkOpened:
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class LinkClosed:
    code: str
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A whole frame could not be decoded; the peer was told and the link goes on."""

    code: str
    reason: str


Event = HelloReceived | LinkOpened | LinkClosed | FrameRejected | Message

_DROPPED_ON_CLOSE = (Ping, Pong)

#: Bytes of UTF-8 kept of a reason or error text we send: error texts may quote the peer's
#: input, and a Close or ErrorReport must always fit in the smallest frame (MIN_FRAME).
_MAX_TEXT = 256


def _valid_interval(seconds: float) -> bool:
    return math.isfinite(seconds) and seconds > 0


def _clip(text: str) -> str:
    """Cut *text* to at most :data:`_MAX_TEXT` UTF-8 bytes, on a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= _MAX_TEXT:
        return text
    return raw[:_MAX_TEXT].decode("utf-8", "ignore")


class LinkSession:
    """One link's protocol state, shared by both programs."""

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat_interval: float = 30.0,
        liveness_factor: float = 2.5,
        handshake_timeout: float = 20.0,
        agent_version: str = "",
        boot_id: str = "",
        tier: str = "ws",
        tier_reason: str = "",
    ) -> None:
        if not MIN_FRAME <= max_frame <= HARD_MAX_FRAME:
            raise LocalProtocolError(
                f"max_frame must be within {MIN_FRAME}..{HARD_MAX_FRAME} bytes"
            )
        self.role = role
        self.state = SessionState.HANDSHAKE
        self.max_frame = max_frame
        self.heartbeat_interval = heartbeat_interval
        self.liveness_factor = liveness_factor
        self.welcome: Welcome | None = None
        self.close_code: str | None = None
        self.close_reason = ""
        self.rtt: float | None = None
        self.frames_rejected = 0
        self._events: deque[Event] = deque()
        self._outgoing: list[bytes] = []
        self.last_received = now
        self._handshake_deadline = now + handshake_timeout
        self._next_ping = now + heartbeat_interval
        self._ping_seq = 0
        self._ping_sent: dict[int, float] = {}
        self._hello_seen = False  # a second Hello while the app decides is a protocol error
        if role is Role.CLIENT:
            self._queue(
                Hello(
                    protocol_versions=list(SUPPORTED_VERSIONS),
                    agent_version=agent_version,
                    max_frame=max_frame,
                    boot_id=boot_id,
                    tier=tier,
                    tier_reason=tier_reason,
                )
            )

    # -- inputs -----------------------------------------------------------------------------

    def receive_frame(self, data: bytes, *, now: float) -> None:
        """Feed one whole frame (one WebSocket message, or one frame split from a body)."""
        if self.state is SessionState.CLOSED:
            return
        try:
            message = decode_frame(data, max_frame=self.max_frame)
        except (MalformedFrame, FrameTooLarge) as exc:
            # The frame's bounds are known, so the stream is still in step: refuse this one.
            self.last_received = now
            self.frames_rejected += 1
            self._events.append(FrameRejected(exc.close_code, str(exc)))
            if self.state is SessionState.OPEN:
                self._queue(ErrorReport(code=exc.close_code, message=_clip(str(exc))))
            else:
                self._fail(exc.close_code, str(exc))
            return
        except RemoteProtocolError as exc:
            self._fail(exc.close_code, str(exc))
            return
        self.receive_message(message, now=now)

    def ping_answered(self, *, now: float) -> None:
        """A Ping the application answered itself (see :func:`~tether.protocol.codec.
        pong_for_ping`) while the link is open: it counts as heard from the peer."""
        if self.state is SessionState.OPEN:
            self.last_received = now

    def receive_message(self, message: Message, *, now: float) -> None:
        """Feed an already decoded message (the HTTPS tiers decode bodies themselves)."""
        if self.state is SessionState.CLOSED:
            return
        self.last_received = now
        if isinstance(message, Close):
            self._closed(message.code, message.reason, by_peer=True)
        elif self.state is SessionState.HANDSHAKE:
            self._handshake(message, now)
        elif isinstance(message, Ping):
            self._queue(Pong(seq=message.seq))
        elif isinstance(message, Pong):
            sent = self._ping_sent.pop(message.seq, None)
            if sent is not None:
                self.rtt = now - sent
        elif isinstance(message, Hello | Welcome):
            self._fail(CloseCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} after handshake")
        else:
            self._events.append(message)

    def _handshake(self, message: Message, now: float) -> None:
        if self.role is Role.SERVER and isinstance(message, Hello) and not self._hello_seen:
            self._hello_seen = True
            common = set(message.protocol_versions) & set(SUPPORTED_VERSIONS)
            if not common:
                self._fail(
                    CloseCode.UNSUPPORTED_VERSION,
                    f"agent speaks protocol {message.protocol_versions}, "
                    f"cloud speaks {list(SUPPORTED_VERSIONS)}",
                )
                return
            self.max_frame = max(MIN_FRAME, min(self.max_frame, message.max_frame))
            self._events.append(HelloReceived(message))
        elif self.role is Role.CLIENT and isinstance(message, Welcome):
            if message.protocol_version not in SUPPORTED_VERSIONS:
                self._fail(CloseCode.UNSUPPORTED_VERSION, "cloud chose an unknown version")
                return
            if not _valid_interval(message.heartbeat_interval):
                # NaN would silence every ping and liveness check; 0 or less would flap.
                self._fail(CloseCode.PROTOCOL_ERROR, "cloud chose an invalid heartbeat interval")
                return
            self.max_frame = max(MIN_FRAME, min(self.max_frame, message.max_frame))
            self.heartbeat_interval = message.heartbeat_interval
            self._open(message, now)
        else:
            self._fail(
                CloseCode.UNEXPECTED_MESSAGE,
                f"{type(message).__name__} before the handshake completed",
            )

    def accept(
        self,
        *,
        session_id: str,
        gateway_id: str,
        server_time: float,
        now: float,
        heartbeat_interval: float | None = None,
    ) -> Welcome:
        """Server side: answer the agent's hello and open the link."""
        if self.role is not Role.SERVER or self.state is not SessionState.HANDSHAKE:
            raise LocalProtocolError("accept() is for a server session in its handshake")
        interval = self.heartbeat_interval if heartbeat_interval is None else heartbeat_interval
        if not _valid_interval(interval):
            raise LocalProtocolError("heartbeat_interval must be a finite number of seconds > 0")
        self.heartbeat_interval = interval
        welcome = Welcome(
            protocol_version=PROTOCOL_VERSION,
            session_id=session_id,
            gateway_id=gateway_id,
            max_frame=self.max_frame,
            heartbeat_interval=self.heartbeat_interval,
            server_time=server_time,
        )
        self._queue(welcome)
        self._open(welcome, now)
        return welcome

    def _open(self, welcome: Welcome, now: float) -> None:
        self.state = SessionState.OPEN
        self.welcome = welcome
        self._next_ping = now + self.heartbeat_interval
        self._events.append(LinkOpened(welcome))

    # -- outputs ----------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__}: link is {self.state.value}"
            )
        self._queue(message)

    def close(self, code: str = CloseCode.NORMAL, reason: str = "") -> None:
        if self.state is SessionState.CLOSED:
            return
        self._queue(Close(code=code, reason=_clip(reason)))
        self._closed(code, reason, by_peer=False)

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def data_to_send(self) -> list[bytes]:
        """Frames to write, in order (one WebSocket message each)."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- time -------------------------------------------------------------------------------

    @property
    def liveness_timeout(self) -> float:
        return self.heartbeat_interval * self.liveness_factor

    def next_deadline(self) -> float:
        """The monotonic time at which :meth:`tick` must next be called (``inf`` once closed)."""
        if self.state is SessionState.CLOSED:
            return math.inf
        if self.state is SessionState.HANDSHAKE:
            return self._handshake_deadline
        deadline = self.last_received + self.liveness_timeout
        if self.role is Role.CLIENT:
            deadline = min(deadline, self._next_ping)
        return deadline

    def tick(self, now: float) -> None:
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.HANDSHAKE:
            if now >= self._handshake_deadline:
                self.close(CloseCode.HEARTBEAT_TIMEOUT, "handshake not completed in time")
            return
        if now - self.last_received >= self.liveness_timeout:
            self.close(
                CloseCode.HEARTBEAT_TIMEOUT,
                f"nothing received for {now - self.last_received:.1f} s",
            )
            return
        if self.role is Role.CLIENT and now >= self._next_ping:
            self._ping_seq += 1
            self._ping_sent = {self._ping_seq: now}  # only the newest ping measures the RTT
            self._queue(Ping(seq=self._ping_seq))
            self._next_ping = now + self.heartbeat_interval

    # -- internals --------------------------------------------------------------------------

    def _queue(self, message: Message) -> None:
        frame = encode_frame(message)
        if len(frame) - 6 > self.max_frame:
            raise LocalProtocolError(
                f"{type(message).__name__} of {len(frame)} bytes exceeds the link's "
                f"{self.max_frame}-byte frame limit"
            )
        self._outgoing.append(frame)

    def _fail(self, code: str, reason: str) -> None:
        self.close(code, reason)

    def _closed(self, code: str, reason: str, *, by_peer: bool) -> None:
        self.state = SessionState.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._events.append(LinkClosed(code, reason, by_peer))
