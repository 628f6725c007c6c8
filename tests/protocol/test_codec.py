"""Framing codec: round trips, streaming at every split, header checks, and fuzzing."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.linkpair import sample_messages

from tether.protocol.codec import (
    DEFAULT_MAX_FRAME,
    HEADER,
    MIN_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    decode_frame,
    encode_frame,
    encode_frames,
    pong_for_ping,
)
from tether.protocol.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    ProtocolError,
    RemoteProtocolError,
    UnexpectedMessage,
    UnsupportedVersion,
)
from tether.protocol.messages import (
    MESSAGE_TYPES,
    Close,
    CloseCode,
    CommandRequest,
    Message,
    Ping,
    Pong,
    TelemetryBatch,
)

SAMPLES = sample_messages()
FRAMES = [encode_frame(m) for m in SAMPLES]
STREAM = b"".join(FRAMES)
FRAME_ENDS = list(itertools.accumulate(len(f) for f in FRAMES))
TAGS = [msgspec.inspect.type_info(cls).tag for cls in MESSAGE_TYPES]  # type: ignore[attr-defined]


def _frame(payload: bytes, *, version: int = 1, flags: int = 0) -> bytes:
    return HEADER.pack(version, flags, len(payload)) + payload


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: Message) -> None:
    frame = encode_frame(message)
    version, flags, length = HEADER.unpack_from(frame)
    assert (version, flags) == (PROTOCOL_VERSION, 0)
    assert length == len(frame) - HEADER.size
    assert frame[HEADER.size :] == msgspec.msgpack.encode(message)
    decoded = decode_frame(frame)
    assert type(decoded) is type(message)
    assert decoded == message
    assert FrameDecoder().feed(frame) == [message]


def test_samples_cover_every_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)


def test_observation_value_types_survive() -> None:
    (batch,) = FrameDecoder().feed(encode_frame(SAMPLES[MESSAGE_TYPES.index(TelemetryBatch)]))
    assert isinstance(batch, TelemetryBatch)
    assert [type(o.value) for o in batch.observations] == [float, int, bool, str]
    assert [o.quality for o in batch.observations] == ["good", "uncertain", "good", "bad"]


def test_header_is_six_bytes_big_endian() -> None:
    frame = encode_frame(Ping(seq=1))
    assert HEADER.size == 6
    assert frame[:6] == b"\x01\x00\x00\x00\x00\x07"
    assert frame[6:] == b"\x92\xa4ping\x01"


def test_encode_frames_concatenates() -> None:
    assert encode_frames(SAMPLES) == STREAM
    assert encode_frames([]) == b""


# -- streaming --------------------------------------------------------------------------------


def test_many_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(STREAM) == SAMPLES
    assert decoder.pending == 0
    decoder.finish()


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(STREAM[:cut])
        assert first == SAMPLES[: sum(end <= cut for end in FRAME_ENDS)], cut
        assert first + decoder.feed(STREAM[cut:]) == SAMPLES, cut
        assert decoder.pending == 0
        decoder.finish()


def test_byte_by_byte_messages_appear_exactly_at_frame_ends() -> None:
    decoder = FrameDecoder()
    ends: list[int] = []
    out: list[Message] = []
    for i in range(len(STREAM)):
        got = decoder.feed(STREAM[i : i + 1])
        assert len(got) <= 1
        if got:
            ends.append(i + 1)
            out += got
        assert decoder.pending == i + 1 - (ends[-1] if ends else 0)
    assert out == SAMPLES
    assert ends == FRAME_ENDS


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_arbitrary_chunking_yields_the_same_messages(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = FrameDecoder()
    out: list[Message] = []
    for start, stop in itertools.pairwise(bounds):
        out += decoder.feed(STREAM[start:stop])
    assert out == SAMPLES
    decoder.finish()


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == 0
    decoder.finish()


# -- limits -----------------------------------------------------------------------------------


def test_oversize_length_raises_as_soon_as_the_header_is_in() -> None:
    decoder = FrameDecoder(max_frame=MIN_FRAME)
    assert decoder.feed(HEADER.pack(1, 0, MIN_FRAME + 1)[:5]) == []  # header not complete yet
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(HEADER.pack(1, 0, MIN_FRAME + 1)[5:])  # no payload byte has arrived
    assert (caught.value.length, caught.value.limit) == (MIN_FRAME + 1, MIN_FRAME)
    assert caught.value.close_code == CloseCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("length", [DEFAULT_MAX_FRAME + 1, 2**32 - 1])
def test_oversize_default_limit(length: int) -> None:
    header = HEADER.pack(1, 0, length)
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(header)
    with pytest.raises(FrameTooLarge):  # checked before the length mismatch
        decode_frame(header)


def _close_with_payload(size: int) -> Close:
    for n in range(size):
        message = Close(code="normal", reason="x" * n)
        if len(msgspec.msgpack.encode(message)) == size:
            return message
    raise AssertionError(f"no Close encodes to {size} bytes")


def test_a_frame_of_exactly_max_frame_passes() -> None:
    message = _close_with_payload(MIN_FRAME)
    frame = encode_frame(message)
    assert len(frame) == HEADER.size + MIN_FRAME
    assert decode_frame(frame, max_frame=MIN_FRAME) == message
    assert FrameDecoder(max_frame=MIN_FRAME).feed(frame) == [message]
    with pytest.raises(FrameTooLarge):
        decode_frame(frame, max_frame=MIN_FRAME - 1)
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=MIN_FRAME - 1).feed(frame)


@pytest.mark.parametrize(("version", "flags"), [(0, 0), (2, 0), (255, 0), (1, 1), (1, 0x80)])
def test_unknown_version_or_flags(version: int, flags: int) -> None:
    frame = _frame(msgspec.msgpack.encode(Ping(seq=1)), version=version, flags=flags)
    with pytest.raises(UnsupportedVersion) as caught:
        decode_frame(frame)
    assert caught.value.close_code == CloseCode.UNSUPPORTED_VERSION
    with pytest.raises(UnsupportedVersion):
        FrameDecoder().feed(frame[: HEADER.size])  # the header alone is enough to refuse


# -- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, HEADER.size, HEADER.size + 1, len(FRAMES[0]) - 1])
def test_truncated_input_then_finish(cut: int) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(FRAMES[0][:cut]) == []
    assert decoder.pending == cut
    with pytest.raises(MalformedFrame) as caught:
        decoder.finish()
    assert caught.value.close_code == CloseCode.MALFORMED_FRAME


def test_finish_after_whole_frames_is_fine() -> None:
    decoder = FrameDecoder()
    decoder.feed(FRAMES[0] + FRAMES[1][:4])
    with pytest.raises(MalformedFrame):
        decoder.finish()
    decoder.feed(FRAMES[1][4:])
    decoder.finish()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00",
        FRAMES[0] + b"\x00",  # trailing bytes
        FRAMES[0] + FRAMES[1],  # two frames where one is expected
        FRAMES[0][:-1],  # payload shorter than declared
    ],
    ids=["empty", "short-header", "trailing-byte", "two-frames", "short-payload"],
)
def test_decode_frame_needs_exactly_one_frame(data: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(data)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # the byte msgpack never uses
        msgspec.msgpack.encode(7),
        msgspec.msgpack.encode(["no-such-tag"]),
        msgspec.msgpack.encode(["ping", "one"]),
        msgspec.msgpack.encode(["ping", 1]) + b"\x00",  # trailing data inside the payload
        b"\x92\xa4ping\xa2\xed\xa0",  # a str that is not UTF-8 where an int is expected
        b"\x92\xa5error\xa2\xed\xa0",  # not UTF-8 where a str is expected
        b"\x93\xa5close\xa6normal\xa3\xf4\x90\x80",  # truncated 4-byte sequence
        b"\x92\xa4ping\xd4\x05\x00",  # an ext where an int is expected
        b"\x95\xa3cmd\xa1i\xa1k\x81\xa1a\xd4\xff\x00\x00",  # a timestamp ext of no valid size
    ],
    ids=repr,
)
def test_undecodable_payloads_are_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(_frame(payload))
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(_frame(payload))


def _command_with_args(args_bytes: bytes) -> bytes:
    """A CommandRequest frame whose ``args`` map is the given raw msgpack bytes."""
    payload = b"\x95\xa3cmd\xa1i\xa1k" + args_bytes + msgspec.msgpack.encode(0.0)
    return _frame(payload)


@pytest.mark.parametrize("depth", [2_000, 200_000])
@pytest.mark.parametrize("unit", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
def test_deep_nesting_is_malformed_not_a_crash(depth: int, unit: bytes) -> None:
    frame = _command_with_args(b"\x81\xa1a" + unit * depth + b"\xc0")
    with pytest.raises(MalformedFrame, match="nested too deeply"):
        decode_frame(frame, max_frame=len(frame))
    with pytest.raises(MalformedFrame):
        FrameDecoder(max_frame=len(frame)).feed(frame)


def test_shallow_nesting_still_decodes() -> None:
    message = decode_frame(_command_with_args(b"\x81\xa1a" + b"\x91" * 20 + b"\xc0"))
    assert isinstance(message, CommandRequest)
    value: Any = message.args["a"]
    for _ in range(20):
        assert isinstance(value, list)
        (value,) = value
    assert value is None


def test_error_tree() -> None:
    for cls in (FrameTooLarge, UnsupportedVersion, MalformedFrame, UnexpectedMessage):
        assert issubclass(cls, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert UnexpectedMessage.close_code == CloseCode.UNEXPECTED_MESSAGE
    assert RemoteProtocolError.close_code == CloseCode.PROTOCOL_ERROR


# -- fuzzing ----------------------------------------------------------------------------------

FUZZ_MAX = MIN_FRAME * 2


def _feed_checked(data: bytes, cuts: list[int], max_frame: int = FUZZ_MAX) -> list[Message]:
    """Feed *data* in chunks; the only exceptions allowed are protocol errors. After every
    successful feed the decoder holds less than one frame, and only waits for a frame that is
    valid so far and genuinely incomplete (so it can never stall)."""
    decoder = FrameDecoder(max_frame=max_frame)
    out: list[Message] = []
    fed = 0
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, stop in itertools.pairwise(bounds):
        try:
            out += decoder.feed(data[start:stop])
        except ProtocolError:
            return out
        fed = stop
        pending = decoder.pending
        assert pending < HEADER.size + max_frame
        if pending >= HEADER.size:
            version, flags, length = HEADER.unpack_from(data, fed - pending)
            assert (version, flags) == (1, 0)
            assert length <= max_frame
            assert pending < HEADER.size + length
    try:
        decoder.finish()
    except MalformedFrame:
        assert decoder.pending > 0
    else:
        assert decoder.pending == 0
    assert fed == len(data)
    return out


def _decode_checked(data: bytes, max_frame: int = FUZZ_MAX) -> Message | None:
    try:
        return decode_frame(data, max_frame=max_frame)
    except ProtocolError:
        return None


def _check(data: bytes, cuts: list[int]) -> None:
    messages = _feed_checked(data, cuts)
    whole = _decode_checked(data)
    if whole is not None:  # one valid frame: the stream decoder agrees (bytes: NaN != NaN)
        assert [msgspec.msgpack.encode(m) for m in messages] == [msgspec.msgpack.encode(whole)]


_cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6)
_fuzz = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=3 * FUZZ_MAX), _cuts)
def test_fuzz_any_bytes(data: bytes, cuts: list[int]) -> None:
    _check(data, cuts)


@_fuzz
@given(st.binary(max_size=FUZZ_MAX), st.sampled_from([(1, 0), (1, 0), (0, 0), (1, 1)]), _cuts)
def test_fuzz_random_payload_in_a_valid_header(
    payload: bytes, head: tuple[int, int], cuts: list[int]
) -> None:
    _check(_frame(payload, version=head[0], flags=head[1]), cuts)


@st.composite
def _mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(FRAMES)))
    for bit in draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=6)):
        frame[bit // 8] ^= 1 << (bit % 8)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "truncate":
        frame = frame[: draw(st.integers(0, len(frame)))]
    elif kind == "extend":
        frame += draw(st.binary(max_size=64))
    elif kind == "splice":
        other = draw(st.sampled_from(FRAMES))
        frame = frame[: draw(st.integers(0, len(frame)))] + other
    return bytes(frame)


@st.composite
def _payload_mutated_frames(draw: st.DrawFn) -> bytes:
    # Keep the header right so the mutations reach the message decoder.
    payload = bytearray(draw(st.sampled_from(FRAMES))[HEADER.size :])
    for bit in draw(st.lists(st.integers(0, len(payload) * 8 - 1), min_size=1, max_size=4)):
        payload[bit // 8] ^= 1 << (bit % 8)
    return _frame(bytes(payload))


@_fuzz
@given(st.lists(_mutated_frames(), min_size=1, max_size=3), _cuts)
def test_fuzz_mutated_frames(frames: list[bytes], cuts: list[int]) -> None:
    _check(b"".join(frames), cuts)


@_fuzz
@given(_payload_mutated_frames(), _cuts)
def test_fuzz_mutated_payloads(frame: bytes, cuts: list[int]) -> None:
    _check(frame, cuts)
    _check(FRAMES[2] + frame + FRAMES[3], cuts)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(_fuzz, max_examples=300)
@given(st.sampled_from(TAGS), st.lists(_values, max_size=8), _cuts)
def test_fuzz_tagged_arrays_of_random_values(tag: str, fields: list[Any], cuts: list[int]) -> None:
    # A known tag with random fields gets past the union's dispatch into each struct's checks.
    payload = msgspec.msgpack.encode([tag, *fields])
    if len(payload) <= FUZZ_MAX:
        _check(_frame(payload), cuts)


@settings(_fuzz, max_examples=300)
@given(_values, _cuts)
def test_fuzz_random_msgpack_payload(value: Any, cuts: list[int]) -> None:
    payload = msgspec.msgpack.encode(value)
    if len(payload) <= FUZZ_MAX:
        _check(_frame(payload), cuts)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=FUZZ_MAX - 64),
    st.lists(
        st.sampled_from([b"\x91", b"\x81\xa1k", b"\x81\xc0", b"\x92\xc0", b"\xdd\x00\x00\x00\x01"]),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
    _cuts,
)
def test_fuzz_deep_nesting_in_a_valid_header(
    depth: int, units: list[bytes], inside_command: bool, cuts: list[int]
) -> None:
    nest = b"".join(units[i % len(units)] for i in range(depth))
    nest = nest[: FUZZ_MAX - 64]
    frame = _command_with_args(b"\x81\xa1a" + nest + b"\xc0") if inside_command else _frame(nest)
    _check(frame, cuts)


# -- the heartbeat shortcut ----------------------------------------------------------------


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_a_ping_is_answered_with_the_pong_the_codec_would_encode(seq: int) -> None:
    assert pong_for_ping(encode_frame(Ping(seq=seq))) == encode_frame(Pong(seq=seq))


def test_nothing_but_a_ping_gets_an_answer() -> None:
    for message, frame in zip(SAMPLES, FRAMES, strict=True):
        assert (pong_for_ping(frame) is not None) is isinstance(message, Ping)
    ping = encode_frame(Ping(seq=300))
    assert pong_for_ping(ping + b"\x00") is None  # a trailing byte (length no longer matches)
    assert pong_for_ping(ping[:-1]) is None  # cut short
    longer = bytearray(ping + b"\x00")
    longer[2:6] = (len(longer) - HEADER.size).to_bytes(4, "big")
    assert pong_for_ping(bytes(longer)) is None  # two values where one integer belongs
    flagged = bytearray(ping)
    flagged[1] = 1
    assert pong_for_ping(bytes(flagged)) is None
    versioned = bytearray(ping)
    versioned[0] = 2
    assert pong_for_ping(bytes(versioned)) is None
    float_seq = bytearray(ping[: HEADER.size + 6]) + b"\xcb" + bytes(8)  # seq as a float
    float_seq[2:6] = (len(float_seq) - HEADER.size).to_bytes(4, "big")
    assert pong_for_ping(bytes(float_seq)) is None


@given(st.binary(max_size=32))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_answered_are_a_ping_the_decoder_reads_alike(data: bytes) -> None:
    for candidate in (data, encode_frame(Ping(seq=1))[:12] + data[:9]):
        pong = pong_for_ping(candidate)
        if pong is None:
            continue
        ping = decode_frame(candidate)
        assert isinstance(ping, Ping)
        assert pong == encode_frame(Pong(seq=ping.seq))
