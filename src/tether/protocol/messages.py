"""Typed wire messages of the gateway link, one msgspec struct per message.

Every tier (WebSocket, HTTPS long-poll, periodic poll) carries these same messages, so a command,
a telemetry batch or a config change means the same thing whichever path it took. Messages are
tagged msgpack arrays (``array_like``): compact, and new optional fields may be appended at the
end without breaking older peers.

Direction is noted per message: ``G→C`` gateway to cloud, ``C→G`` cloud to gateway.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tether.protocol.telemetry import DeviceInfo, Observation, PointInfo

__all__ = [
    "MESSAGE_TYPES",
    "Close",
    "CloseCode",
    "CommandRequest",
    "CommandUpdate",
    "CommandUpdateAck",
    "ConfigAck",
    "ConfigUpdate",
    "Discovery",
    "DiscoveryAck",
    "DropReport",
    "DropReportAck",
    "ErrorReport",
    "HealthReport",
    "Hello",
    "LogBatch",
    "LogBatchAck",
    "LogRecord",
    "Message",
    "NetcheckReport",
    "Ping",
    "Pong",
    "TelemetryAck",
    "TelemetryBatch",
    "TelemetryReject",
    "Welcome",
]


class _Msg(msgspec.Struct, array_like=True, tag_field="t"):
    """Base of all link messages."""


class CloseCode:
    """Why a link ends. Strings on the wire so logs and operators can read them."""

    NORMAL = "normal"
    GOING_AWAY = "going-away"  # the peer is shutting down; reconnect soon
    HEARTBEAT_TIMEOUT = "heartbeat-timeout"
    PROTOCOL_ERROR = "protocol-error"
    FRAME_TOO_LARGE = "frame-too-large"
    UNSUPPORTED_VERSION = "unsupported-version"
    MALFORMED_FRAME = "malformed-frame"
    UNEXPECTED_MESSAGE = "unexpected-message"
    REVOKED = "revoked"  # the gateway's certificate was revoked: do not reconnect
    REPLACED = "replaced"  # a newer link of the same gateway took over
    UNAUTHORIZED = "unauthorized"

    #: Codes after which a well-behaved agent must not reconnect without operator action.
    FATAL = frozenset({REVOKED, UNAUTHORIZED, UNSUPPORTED_VERSION})


# --- session -------------------------------------------------------------------------------


class Hello(_Msg, tag="hello"):
    """G→C, first message on a link: what the agent speaks and can take."""

    protocol_versions: list[int]
    agent_version: str
    max_frame: int
    boot_id: str
    tier: str = "ws"
    capabilities: list[str] = []
    tier_reason: str = ""  # why the agent is on this tier (empty on its best tier)


class Welcome(_Msg, tag="welcome"):
    """C→G, the answer to :class:`Hello`: the negotiated parameters."""

    protocol_version: int
    session_id: str
    gateway_id: str
    max_frame: int
    heartbeat_interval: float
    server_time: float


class Ping(_Msg, tag="ping"):
    seq: int


class Pong(_Msg, tag="pong"):
    seq: int


class Close(_Msg, tag="close"):
    code: str
    reason: str = ""


class ErrorReport(_Msg, tag="error"):
    """Either way: a non-fatal refusal of one message; the link stays up."""

    code: str
    message: str
    ref: str | None = None


# --- commands ------------------------------------------------------------------------------


class CommandRequest(_Msg, tag="cmd"):
    """C→G: run a command. ``expires_at`` is a Unix time; an agent refuses expired commands."""

    command_id: str
    kind: str
    args: dict[str, Any]
    expires_at: float


class CommandUpdate(_Msg, tag="cmd-update"):
    """G→C: a command's lifecycle moved (``running``, ``succeeded``, ``failed``)."""

    command_id: str
    state: str
    result: dict[str, Any] | None = None
    error: str | None = None


class CommandUpdateAck(_Msg, tag="cmd-update-ack"):
    """C→G: the update is committed; the agent may forget it."""

    command_id: str
    state: str


# --- telemetry -----------------------------------------------------------------------------


class TelemetryBatch(_Msg, tag="tm"):
    """G→C: observations of one stream with consecutive sequence numbers ``first..last``."""

    stream: str
    first_seq: int
    last_seq: int
    observations: list[Observation]


class TelemetryAck(_Msg, tag="tm-ack"):
    """C→G: everything of *stream* up to *last_seq* is committed (deduplicated)."""

    stream: str
    last_seq: int
    accepted: int = 0
    duplicates: int = 0


class TelemetryReject(_Msg, tag="tm-reject"):
    """C→G: a batch was refused (malformed, oversized, inconsistent); the agent keeps it spooled
    only if the fault may be transient, else drops and counts it."""

    stream: str
    first_seq: int
    last_seq: int
    reason: str
    permanent: bool = True


class DropReport(_Msg, tag="drops"):
    """G→C: observations the spool had to drop (oldest first), cumulative per stream."""

    stream: str
    dropped_total: int


class DropReportAck(_Msg, tag="drops-ack"):
    stream: str
    dropped_total: int


class Discovery(_Msg, tag="discovery"):
    """G→C: devices and points a connector found."""

    connector: str
    devices: list[DeviceInfo]
    points: list[PointInfo]


class DiscoveryAck(_Msg, tag="discovery-ack"):
    connector: str
    points: int


# --- configuration, health, logs, preflight ------------------------------------------------


class ConfigUpdate(_Msg, tag="config"):
    """C→G: a versioned configuration section (``connectors``, ``agent``, ``logs``…)."""

    section: str
    version: int
    data: dict[str, Any]


class ConfigAck(_Msg, tag="config-ack"):
    section: str
    version: int
    ok: bool
    error: str | None = None


class HealthReport(_Msg, tag="health"):
    """G→C: periodic health (metrics, spool depth, connector stats, network identity)."""

    ts: float
    data: dict[str, Any]


class LogRecord(msgspec.Struct, array_like=True, frozen=True):
    ts: float
    level: str
    source: str
    message: str
    customer_data: bool = False
    fields: dict[str, Any] = {}


class LogBatch(_Msg, tag="logs"):
    seq: int
    records: list[LogRecord]
    dropped: int = 0


class LogBatchAck(_Msg, tag="logs-ack"):
    seq: int


class NetcheckReport(_Msg, tag="netcheck"):
    """G→C: the preflight result the agent ran when its best tier was unreachable."""

    ts: float
    report: dict[str, Any]


Message = (
    Hello
    | Welcome
    | Ping
    | Pong
    | Close
    | ErrorReport
    | CommandRequest
    | CommandUpdate
    | CommandUpdateAck
    | TelemetryBatch
    | TelemetryAck
    | TelemetryReject
    | DropReport
    | DropReportAck
    | Discovery
    | DiscoveryAck
    | ConfigUpdate
    | ConfigAck
    | HealthReport
    | LogBatch
    | LogBatchAck
    | NetcheckReport
)

MESSAGE_TYPES: tuple[type[_Msg], ...] = (
    Hello,
    Welcome,
    Ping,
    Pong,
    Close,
    ErrorReport,
    CommandRequest,
    CommandUpdate,
    CommandUpdateAck,
    TelemetryBatch,
    TelemetryAck,
    TelemetryReject,
    DropReport,
    DropReportAck,
    Discovery,
    DiscoveryAck,
    ConfigUpdate,
    ConfigAck,
    HealthReport,
    LogBatch,
    LogBatchAck,
    NetcheckReport,
)
