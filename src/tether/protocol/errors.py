"""Protocol errors, each saying whose fault it is.

ProtocolError
├── RemoteProtocolError        the peer sent something this side cannot accept
│   ├── FrameTooLarge          declared frame length above the negotiated maximum
│   ├── UnsupportedVersion     frame or hello speaks a protocol version we do not
│   ├── MalformedFrame         bytes that are not a frame, or a frame that is not a message
│   └── UnexpectedMessage      a valid message in a session state that does not allow it
└── LocalProtocolError         this side tried to do something the session forbids
"""

from __future__ import annotations

__all__ = [
    "FrameTooLarge",
    "LocalProtocolError",
    "MalformedFrame",
    "ProtocolError",
    "RemoteProtocolError",
    "UnexpectedMessage",
    "UnsupportedVersion",
]


class ProtocolError(Exception):
    """Base of every error the sans-I/O protocol raises."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the session closes with :attr:`close_code`."""

    close_code = "protocol-error"


class FrameTooLarge(RemoteProtocolError):
    close_code = "frame-too-large"

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {limit}-byte limit")
        self.length = length
        self.limit = limit


class UnsupportedVersion(RemoteProtocolError):
    close_code = "unsupported-version"


class MalformedFrame(RemoteProtocolError):
    close_code = "malformed-frame"


class UnexpectedMessage(RemoteProtocolError):
    close_code = "unexpected-message"


class LocalProtocolError(ProtocolError):
    """This side misused the session (a bug in the caller, not the peer)."""
