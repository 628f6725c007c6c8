"""Framing of link messages: a 6-byte header, then one msgpack-encoded message.

    +---------+-------+----------------+------------------------+
    | version | flags | length (u32 BE) | msgpack message bytes |
    +---------+-------+----------------+------------------------+

On the WebSocket tier each binary WebSocket message holds exactly one frame; on the HTTPS tiers a
request or response body is a concatenation of frames. ``flags`` is reserved (0 in version 1) for a
future end-to-end authenticated envelope, so message-level authentication can be added without a
new framing. Every malformed input raises a :class:`~tether.protocol.errors.RemoteProtocolError`
subclass; nothing else escapes the decoder, and it never waits for more bytes than a frame's
declared length, which is itself bounded by the negotiated maximum.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgspec

from tether.protocol.errors import FrameTooLarge, MalformedFrame, UnsupportedVersion
from tether.protocol.messages import Message, Ping, Pong

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HARD_MAX_FRAME",
    "HEADER",
    "MIN_FRAME",
    "PING_FRAME_MAX",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "FrameDecoder",
    "decode_frame",
    "encode_frame",
    "encode_frames",
    "pong_for_ping",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct(">BBI")
DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: a telemetry batch of ~20,000 observations
HARD_MAX_FRAME = 16 << 20  # no negotiation may go above this
MIN_FRAME = 1024  # no negotiation may go below this: every control message (Welcome...) fits

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)

# A Ping's and a Pong's encoding: the same header, the tag, then the same msgpack integer (seq).
_PING_TAG = _encoder.encode(Ping(seq=0))[:-1]
_PONG_TAG = _encoder.encode(Pong(seq=0))[:-1]
_TAG_AT = HEADER.size
_SEQ_AT = HEADER.size + len(_PING_TAG)
#: The longest Ping frame: header, tag, and the longest msgpack integer (9 bytes).
PING_FRAME_MAX = _SEQ_AT + 9
_int_decoder = msgspec.msgpack.Decoder(int)


def encode_frame(message: Message) -> bytes:
    """Encode one message into one frame."""
    payload = _encoder.encode(message)
    return HEADER.pack(PROTOCOL_VERSION, 0, len(payload)) + payload


def encode_frames(messages: Iterable[Message]) -> bytes:
    return b"".join(encode_frame(m) for m in messages)


def _check_header(version: int, flags: int, length: int, max_frame: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"frame protocol version {version} is not supported")
    if flags != 0:
        raise UnsupportedVersion(f"frame flags 0x{flags:02x} are not supported by version 1")
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)


def _decode_payload(payload: bytes | memoryview) -> Message:
    try:
        message: Message = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedFrame(f"undecodable message: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec lets this through for a str that is not UTF-8
        raise MalformedFrame(f"undecodable message: string is not UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise MalformedFrame("undecodable message: nested too deeply") from None
    return message


def decode_frame(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Message:
    """Decode a buffer that must hold exactly one frame (a WebSocket message)."""
    if len(data) < HEADER.size:
        raise MalformedFrame(f"frame of {len(data)} bytes is shorter than its header")
    version, flags, length = HEADER.unpack_from(data)
    _check_header(version, flags, length, max_frame)
    if len(data) != HEADER.size + length:
        raise MalformedFrame(
            f"frame declares {length} payload bytes but carries {len(data) - HEADER.size}"
        )
    return _decode_payload(memoryview(data)[HEADER.size :])


def pong_for_ping(frame: bytes) -> bytes | None:
    """The Pong frame answering *frame* if it is exactly one well-formed Ping frame in the
    encoder's own form, else None (then decode it as any other frame). Heartbeats are most of
    what an idle link carries: this answers them without decoding and re-encoding a message."""
    if len(frame) > PING_FRAME_MAX or frame[_TAG_AT:_SEQ_AT] != _PING_TAG:
        return None
    version, flags, length = HEADER.unpack_from(frame)  # the tag check implies 6 header bytes
    if version != PROTOCOL_VERSION or flags != 0 or length != len(frame) - HEADER.size:
        return None
    try:
        _int_decoder.decode(frame[_SEQ_AT:])  # exactly one integer, nothing after it
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return frame[:_TAG_AT] + _PONG_TAG + frame[_SEQ_AT:]


class FrameDecoder:
    """Incremental decoder for a stream of frames (HTTPS bodies): bytes in, messages out."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            version, flags, length = HEADER.unpack_from(self._buffer)
            _check_header(version, flags, length, self.max_frame)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            out.append(_decode_payload(payload))
        return out

    def finish(self) -> None:
        """Declare the end of input: leftover bytes are a truncated frame."""
        if self._buffer:
            raise MalformedFrame(f"input ended inside a frame ({len(self._buffer)} bytes left)")
