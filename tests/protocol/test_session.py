"""The link session state machine, driven through an in-memory client/server pair."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.linkpair import (
    SessionPair,
    corrupt_payload,
    drop,
    flip_bit,
    sample_messages,
)

from tether.protocol.codec import (
    HARD_MAX_FRAME,
    HEADER,
    MIN_FRAME,
    decode_frame,
    encode_frame,
)
from tether.protocol.errors import LocalProtocolError
from tether.protocol.messages import (
    Close,
    CloseCode,
    CommandRequest,
    ErrorReport,
    HealthReport,
    Hello,
    Message,
    Ping,
    Pong,
    TelemetryAck,
    TelemetryBatch,
    Welcome,
)
from tether.protocol.session import (
    FrameRejected,
    HelloReceived,
    LinkClosed,
    LinkSession,
    Role,
    SessionState,
)
from tether.protocol.telemetry import Observation

HEARTBEAT = 10.0


def _opened(**options: object) -> SessionPair:
    pair = SessionPair(**options)  # type: ignore[arg-type]
    pair.open(heartbeat_interval=HEARTBEAT)
    return pair


def _hello(**fields: object) -> Hello:
    values: dict[str, object] = {
        "protocol_versions": [1],
        "agent_version": "9.9",
        "max_frame": 65_536,
        "boot_id": "b",
    }
    values.update(fields)
    return Hello(**values)  # type: ignore[arg-type]


def _welcome(**fields: object) -> Welcome:
    values: dict[str, object] = {
        "protocol_version": 1,
        "session_id": "s",
        "gateway_id": "g",
        "max_frame": 65_536,
        "heartbeat_interval": HEARTBEAT,
        "server_time": 0.0,
    }
    values.update(fields)
    return Welcome(**values)  # type: ignore[arg-type]


def _decoded(frames: list[bytes]) -> list[Message]:
    return [decode_frame(f, max_frame=HARD_MAX_FRAME) for f in frames]


def _batch(n: int, size: int = 0) -> TelemetryBatch:
    return TelemetryBatch(
        stream="s",
        first_seq=n,
        last_seq=n,
        observations=[Observation("p", float(n), "x" * size if size else n)],
    )


# -- handshake --------------------------------------------------------------------------------


def test_hello_carries_the_agents_parameters() -> None:
    pair = SessionPair(
        client_options={"agent_version": "1.2.3", "boot_id": "boot-1", "tier": "poll"},
    )
    assert pair.client.state is SessionState.HANDSHAKE
    pair.pump()
    (event,) = pair.server.events()
    assert isinstance(event, HelloReceived)
    assert event.hello == Hello(
        protocol_versions=[1],
        agent_version="1.2.3",
        max_frame=pair.client.max_frame,
        boot_id="boot-1",
        tier="poll",
    )
    # The server waits for the application's decision.
    assert pair.server.state is SessionState.HANDSHAKE
    assert pair.server.data_to_send() == []


def test_welcome_fields_and_open_on_both_sides() -> None:
    pair = SessionPair()
    welcome = pair.open(
        session_id="sess-42", gateway_id="gw-7", server_time=1_700_000_123.5, heartbeat_interval=12
    )
    assert welcome == Welcome(
        protocol_version=1,
        session_id="sess-42",
        gateway_id="gw-7",
        max_frame=pair.server.max_frame,
        heartbeat_interval=12,
        server_time=1_700_000_123.5,
    )
    assert pair.client.welcome == welcome
    assert pair.server.welcome == welcome
    assert pair.client.heartbeat_interval == 12
    assert pair.server.heartbeat_interval == 12


@pytest.mark.parametrize(
    ("client_max", "server_max", "expected"),
    [(8192, 4096, 4096), (4096, 8192, 4096), (65_536, 65_536, 65_536), (MIN_FRAME, 2048, 1024)],
)
def test_max_frame_is_the_smaller_of_both(client_max: int, server_max: int, expected: int) -> None:
    pair = SessionPair(
        client_options={"max_frame": client_max}, server_options={"max_frame": server_max}
    )
    welcome = pair.open()
    assert welcome.max_frame == expected
    assert pair.client.max_frame == expected
    assert pair.server.max_frame == expected


def test_heartbeat_interval_comes_from_the_server() -> None:
    pair = SessionPair(
        client_options={"heartbeat_interval": 5.0}, server_options={"heartbeat_interval": 45.0}
    )
    welcome = pair.open()  # no override at accept(): the server's own setting
    assert welcome.heartbeat_interval == 45.0
    assert pair.client.heartbeat_interval == 45.0
    assert pair.client.next_deadline() == pair.now + 45.0


def test_a_peer_cannot_shrink_frames_below_the_minimum() -> None:
    server = LinkSession(Role.SERVER, now=0.0)
    server.receive_frame(encode_frame(_hello(max_frame=0)), now=0.0)
    assert isinstance(server.events()[0], HelloReceived)
    assert server.max_frame == MIN_FRAME
    # A Welcome with long identifiers still fits.
    server.accept(session_id="a" * 64, gateway_id="gw-" + "b" * 64, server_time=0.0, now=0.0)
    assert server.state is SessionState.OPEN
    client = LinkSession(Role.CLIENT, now=0.0)
    client.receive_frame(encode_frame(_welcome(max_frame=1)), now=0.0)
    assert client.state is SessionState.OPEN
    assert client.max_frame == MIN_FRAME


@pytest.mark.parametrize("max_frame", [0, MIN_FRAME - 1, HARD_MAX_FRAME + 1])
def test_max_frame_out_of_bounds_is_refused(max_frame: int) -> None:
    with pytest.raises(LocalProtocolError):
        LinkSession(Role.CLIENT, now=0.0, max_frame=max_frame)


def test_accept_is_for_a_server_in_its_handshake() -> None:
    pair = SessionPair()
    with pytest.raises(LocalProtocolError):
        pair.client.accept(session_id="s", gateway_id="g", server_time=0.0, now=pair.now)
    pair.open()
    with pytest.raises(LocalProtocolError):
        pair.server.accept(session_id="s", gateway_id="g", server_time=0.0, now=pair.now)


@pytest.mark.parametrize("interval", [0.0, -1.0, math.nan, math.inf])
def test_accept_refuses_an_invalid_heartbeat_interval(interval: float) -> None:
    pair = SessionPair()
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.server.accept(
            session_id="s",
            gateway_id="g",
            server_time=0.0,
            now=pair.now,
            heartbeat_interval=interval,
        )
    assert pair.server.state is SessionState.HANDSHAKE
    assert pair.server.heartbeat_interval == 30.0


@pytest.mark.parametrize("interval", [0.0, -5.0, math.nan, math.inf])
def test_client_refuses_a_welcome_with_an_invalid_heartbeat(interval: float) -> None:
    client = LinkSession(Role.CLIENT, now=0.0)
    client.data_to_send()
    client.receive_frame(encode_frame(_welcome(heartbeat_interval=interval)), now=1.0)
    assert client.state is SessionState.CLOSED
    assert client.close_code == CloseCode.PROTOCOL_ERROR
    assert client.events() == [LinkClosed(CloseCode.PROTOCOL_ERROR, client.close_reason, False)]
    assert _decoded(client.data_to_send()) == [
        Close(code=CloseCode.PROTOCOL_ERROR, reason=client.close_reason)
    ]


def test_client_refuses_a_welcome_in_an_unknown_version() -> None:
    client = LinkSession(Role.CLIENT, now=0.0)
    client.receive_frame(encode_frame(_welcome(protocol_version=99)), now=1.0)
    assert client.state is SessionState.CLOSED
    assert client.close_code == CloseCode.UNSUPPORTED_VERSION


def test_hello_without_a_common_version_closes() -> None:
    pair = SessionPair()
    pair.client.data_to_send()  # replace the real hello
    pair.server.receive_frame(encode_frame(_hello(protocol_versions=[2, 3])), now=pair.now)
    assert pair.server.state is SessionState.CLOSED
    assert pair.server.close_code == CloseCode.UNSUPPORTED_VERSION
    assert CloseCode.UNSUPPORTED_VERSION in CloseCode.FATAL
    (event,) = pair.server.events()
    assert event == LinkClosed(CloseCode.UNSUPPORTED_VERSION, pair.server.close_reason, False)
    assert "[2, 3]" in pair.server.close_reason
    pair.pump()
    assert pair.client.events() == [
        LinkClosed(CloseCode.UNSUPPORTED_VERSION, pair.server.close_reason, True)
    ]


def test_a_huge_version_list_still_closes_cleanly() -> None:
    # The close reason quotes the versions; on the wire it is clipped to fit any frame.
    server = LinkSession(Role.SERVER, now=0.0, max_frame=MIN_FRAME)
    hello = _hello(protocol_versions=list(range(2, 120)) * 8)
    assert len(encode_frame(hello)) - HEADER.size <= MIN_FRAME
    server.receive_frame(encode_frame(hello), now=0.0)
    assert server.state is SessionState.CLOSED
    assert server.close_code == CloseCode.UNSUPPORTED_VERSION
    (close,) = _decoded(server.data_to_send())
    assert isinstance(close, Close)
    assert len(close.reason.encode()) <= 256
    assert server.close_reason.startswith(close.reason)


@pytest.mark.parametrize(
    "first",
    [Ping(seq=1), _welcome(), TelemetryAck(stream="s", last_seq=1), ErrorReport("x", "y")],
    ids=lambda m: type(m).__name__,
)
def test_server_wants_hello_first(first: Message) -> None:
    pair = SessionPair()
    pair.client.data_to_send()
    pair.server.receive_frame(encode_frame(first), now=pair.now)
    assert pair.server.state is SessionState.CLOSED
    assert pair.server.close_code == CloseCode.UNEXPECTED_MESSAGE
    assert pair.server.events() == [
        LinkClosed(CloseCode.UNEXPECTED_MESSAGE, pair.server.close_reason, False)
    ]
    assert _decoded(pair.server.data_to_send()) == [
        Close(CloseCode.UNEXPECTED_MESSAGE, pair.server.close_reason)
    ]


def test_client_wants_welcome_first() -> None:
    client = LinkSession(Role.CLIENT, now=0.0)
    client.receive_frame(encode_frame(Pong(seq=1)), now=0.0)
    assert client.state is SessionState.CLOSED
    assert client.close_code == CloseCode.UNEXPECTED_MESSAGE


def test_a_second_hello_before_accept_closes() -> None:
    pair = SessionPair()
    hello = pair.client.data_to_send()[0]
    pair.server.receive_frame(hello, now=pair.now)
    pair.server.receive_frame(hello, now=pair.now)
    events = pair.server.events()
    assert [type(e) for e in events] == [HelloReceived, LinkClosed]
    assert pair.server.close_code == CloseCode.UNEXPECTED_MESSAGE
    with pytest.raises(LocalProtocolError):
        pair.server.accept(session_id="s", gateway_id="g", server_time=0.0, now=pair.now)


def test_corrupt_frame_during_handshake_closes() -> None:
    pair = SessionPair()
    pair.transfer(Role.CLIENT, mangle=corrupt_payload)
    events = pair.server.events()
    assert [type(e) for e in events] == [FrameRejected, LinkClosed]
    assert events[0].code == CloseCode.MALFORMED_FRAME  # type: ignore[union-attr]
    assert pair.server.close_code == CloseCode.MALFORMED_FRAME


# -- open link --------------------------------------------------------------------------------


def test_messages_flow_both_ways_in_order() -> None:
    pair = _opened()
    up: list[Message] = [_batch(1), _batch(2), HealthReport(ts=1.0, data={"cpu": 0.1})]
    down: list[Message] = [
        TelemetryAck(stream="s", last_seq=2, accepted=2),
        CommandRequest(command_id="c1", kind="noop", args={}, expires_at=0.0),
    ]
    for message in up:
        pair.client.send(message)
    for message in down:
        pair.server.send(message)
    assert pair.pump() == len(up) + len(down)
    assert pair.server.events() == up
    assert pair.client.events() == down


def test_every_application_message_passes() -> None:
    pair = _opened()
    control = (Hello, Welcome, Ping, Pong, Close)
    payload = [m for m in sample_messages() if not isinstance(m, control)]
    for message in payload:
        pair.client.send(message)
        pair.server.send(message)
    pair.pump()
    assert pair.server.events() == payload
    assert pair.client.events() == payload


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
def test_sending_before_open_is_refused(role: Role) -> None:
    pair = SessionPair()
    with pytest.raises(LocalProtocolError, match="handshake"):
        pair.session(role).send(_batch(1))


def test_sending_after_close_is_refused() -> None:
    pair = _opened()
    pair.client.close()
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send(_batch(1))


def test_a_message_above_max_frame_cannot_be_sent() -> None:
    pair = _opened(client_options={"max_frame": 2048})
    small = _batch(1, size=1000)
    big = _batch(2, size=2100)
    pair.client.send(small)
    with pytest.raises(LocalProtocolError, match="frame limit"):
        pair.client.send(big)
    assert pair.client.state is SessionState.OPEN
    pair.pump()
    assert pair.server.events() == [small]  # nothing of the refused message went out


def test_data_to_send_empties_the_queue() -> None:
    pair = _opened()
    pair.client.send(_batch(1))
    assert len(pair.client.data_to_send()) == 1
    assert pair.client.data_to_send() == []


def test_receive_message_is_the_same_path_as_frames() -> None:
    # The HTTPS tiers decode bodies themselves and feed messages.
    pair = _opened()
    pair.server.receive_message(_batch(5), now=pair.now)
    assert pair.server.events() == [_batch(5)]
    pair.server.receive_message(Ping(seq=3), now=pair.now)
    assert _decoded(pair.server.data_to_send()) == [Pong(seq=3)]


# -- heartbeats -------------------------------------------------------------------------------


def test_client_pings_at_the_interval_and_measures_rtt() -> None:
    pair = _opened()
    start = pair.now
    assert pair.client.next_deadline() == start + HEARTBEAT
    assert pair.server.next_deadline() == start + HEARTBEAT * 2.5
    assert pair.client.rtt is None

    pair.clock.set(start + HEARTBEAT - 0.001)
    pair.tick()
    assert pair.client.data_to_send() == []  # not yet

    pair.clock.set(start + HEARTBEAT)
    pair.tick()
    (ping,) = pair.transfer(Role.CLIENT)
    assert decode_frame(ping) == Ping(seq=1)
    pair.clock.advance(0.25)
    (pong,) = pair.transfer(Role.SERVER)
    assert decode_frame(pong) == Pong(seq=1)
    assert pair.client.rtt == pytest.approx(0.25)
    # Heartbeats are not application events.
    assert pair.drain() == ([], [])
    assert pair.client.next_deadline() == start + 2 * HEARTBEAT


def test_heartbeats_keep_the_link_alive() -> None:
    pair = _opened()
    start = pair.now
    for _ in range(50):
        pair.step()
    assert pair.client.state is SessionState.OPEN
    assert pair.server.state is SessionState.OPEN
    pings = [m for m in _decoded(pair.sent[Role.CLIENT]) if isinstance(m, Ping)]
    pongs = [m for m in _decoded(pair.sent[Role.SERVER]) if isinstance(m, Pong)]
    assert [p.seq for p in pings] == list(range(1, 51))
    assert [p.seq for p in pongs] == list(range(1, 51))
    assert pair.now == start + 50 * HEARTBEAT  # every step was a ping, none a timeout
    assert pair.client.rtt == 0.0


def test_server_answers_but_never_starts_pings() -> None:
    pair = _opened()
    pair.clock.advance(HEARTBEAT * 2)
    pair.server.tick(pair.now)
    assert pair.server.data_to_send() == []
    # A ping from the server is still answered by the client.
    pair.server.send(Ping(seq=77))
    pair.pump()
    assert Pong(seq=77) in _decoded(pair.sent[Role.CLIENT])


def test_only_the_newest_ping_measures_rtt() -> None:
    pair = _opened()
    pair.step(to_client=drop)  # ping 1's pong is lost
    pair.step()  # ping 2 answered at once
    assert pair.client.rtt == 0.0
    pair.client.receive_frame(encode_frame(Pong(seq=1)), now=pair.now + 5)
    assert pair.client.rtt == 0.0  # a stale pong changes nothing
    pair.client.receive_frame(encode_frame(Pong(seq=999)), now=pair.now + 5)
    assert pair.client.rtt == 0.0


def test_client_times_out_when_the_server_goes_silent() -> None:
    pair = _opened()
    last_heard = pair.now
    for _ in range(10):
        if pair.client.state is SessionState.CLOSED:
            break
        pair.step(to_client=drop)
    assert pair.client.state is SessionState.CLOSED
    assert pair.now == last_heard + HEARTBEAT * 2.5
    assert pair.client.close_code == CloseCode.HEARTBEAT_TIMEOUT
    client_events, server_events = pair.drain()
    assert client_events == [
        LinkClosed(CloseCode.HEARTBEAT_TIMEOUT, pair.client.close_reason, False)
    ]
    # The client's Close reached the server (only server→client traffic was lost).
    assert server_events == [
        LinkClosed(CloseCode.HEARTBEAT_TIMEOUT, pair.client.close_reason, True)
    ]
    assert pair.client.next_deadline() == math.inf


def test_server_times_out_when_the_client_goes_silent() -> None:
    pair = _opened()
    last_heard = pair.now
    deadline = pair.server.next_deadline()
    assert deadline == last_heard + HEARTBEAT * 2.5
    pair.server.tick(deadline - 0.001)
    assert pair.server.state is SessionState.OPEN
    pair.server.tick(deadline)
    assert pair.server.state is SessionState.CLOSED  # type: ignore[comparison-overlap]
    assert pair.server.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert pair.server.events() == [
        LinkClosed(CloseCode.HEARTBEAT_TIMEOUT, pair.server.close_reason, False)
    ]
    assert _decoded(pair.server.data_to_send()) == [
        Close(CloseCode.HEARTBEAT_TIMEOUT, pair.server.close_reason)
    ]


def test_any_frame_counts_as_a_sign_of_life() -> None:
    pair = _opened()
    pair.clock.advance(HEARTBEAT * 2)
    pair.client.send(_batch(1))
    pair.transfer(Role.CLIENT)
    assert pair.server.next_deadline() == pair.now + HEARTBEAT * 2.5


def test_client_handshake_timeout() -> None:
    pair = SessionPair(client_options={"handshake_timeout": 5.0})
    start = pair.now
    pair.client.data_to_send()  # the hello is lost
    assert pair.client.next_deadline() == start + 5.0
    pair.client.tick(start + 4.999)
    assert pair.client.state is SessionState.HANDSHAKE
    pair.client.tick(start + 5.0)
    assert pair.client.state is SessionState.CLOSED  # type: ignore[comparison-overlap]
    assert pair.client.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert "handshake" in pair.client.close_reason


def test_server_handshake_timeout_when_the_app_never_accepts() -> None:
    pair = SessionPair(server_options={"handshake_timeout": 3.0})
    pair.pump()
    assert isinstance(pair.server.events()[0], HelloReceived)
    pair.clock.advance(3.0)
    pair.tick()
    assert pair.server.state is SessionState.CLOSED
    assert pair.server.close_code == CloseCode.HEARTBEAT_TIMEOUT
    with pytest.raises(LocalProtocolError):
        pair.server.accept(session_id="s", gateway_id="g", server_time=0.0, now=pair.now)


def test_next_deadline_is_infinite_once_closed() -> None:
    pair = SessionPair()
    pair.client.close()
    pair.server.close()
    assert pair.client.next_deadline() == math.inf
    assert pair.server.next_deadline() == math.inf


# -- closing ----------------------------------------------------------------------------------


def test_close_from_the_peer() -> None:
    pair = _opened()
    pair.client.close(CloseCode.GOING_AWAY, "agent restarting")
    assert pair.client.state is SessionState.CLOSED
    assert pair.client.events() == [LinkClosed(CloseCode.GOING_AWAY, "agent restarting", False)]
    pair.pump()
    assert pair.server.state is SessionState.CLOSED
    assert pair.server.close_code == CloseCode.GOING_AWAY
    assert pair.server.close_reason == "agent restarting"
    assert pair.server.events() == [LinkClosed(CloseCode.GOING_AWAY, "agent restarting", True)]
    assert pair.server.data_to_send() == []  # the close is not echoed

    # Everything after the close is ignored.
    pair.server.receive_frame(encode_frame(_batch(1)), now=pair.now)
    pair.server.receive_frame(b"garbage", now=pair.now)
    pair.server.receive_message(Close("normal"), now=pair.now)
    pair.server.tick(pair.now + 1e6)
    assert pair.server.events() == []
    assert pair.server.data_to_send() == []
    assert pair.server.close_code == CloseCode.GOING_AWAY


def test_close_is_idempotent() -> None:
    pair = _opened()
    pair.server.close(CloseCode.REPLACED, "newer link")
    pair.server.close(CloseCode.NORMAL)
    assert _decoded(pair.server.data_to_send()) == [Close(CloseCode.REPLACED, "newer link")]
    assert pair.server.events() == [LinkClosed(CloseCode.REPLACED, "newer link", False)]


def test_close_during_handshake() -> None:
    pair = SessionPair()
    pair.pump()
    pair.server.events()
    pair.server.close(CloseCode.UNAUTHORIZED, "certificate revoked")
    pair.pump()
    assert pair.client.events() == [LinkClosed(CloseCode.UNAUTHORIZED, "certificate revoked", True)]
    assert pair.client.close_code in CloseCode.FATAL


def test_a_long_close_reason_is_clipped_on_the_wire_only() -> None:
    pair = _opened()
    reason = "é" * 1000
    pair.client.close(CloseCode.NORMAL, reason)
    assert pair.client.close_reason == reason
    (close,) = _decoded(pair.client.data_to_send())
    assert isinstance(close, Close)
    assert close.reason == "é" * 128  # 256 UTF-8 bytes, cut on a character boundary


@pytest.mark.parametrize("late", [_hello(), _welcome()], ids=["Hello", "Welcome"])
@pytest.mark.parametrize("receiver", [Role.CLIENT, Role.SERVER])
def test_handshake_messages_after_open_close_the_link(late: Message, receiver: Role) -> None:
    pair = _opened()
    session = pair.session(receiver)
    session.receive_frame(encode_frame(late), now=pair.now)
    assert session.state is SessionState.CLOSED
    assert session.close_code == CloseCode.UNEXPECTED_MESSAGE
    pair.pump()
    assert pair.peer(receiver).close_code == CloseCode.UNEXPECTED_MESSAGE


def test_a_frame_in_an_unknown_version_closes_the_link() -> None:
    pair = _opened()
    frame = bytearray(encode_frame(_batch(1)))
    frame[0] = 2
    pair.server.receive_frame(bytes(frame), now=pair.now)
    assert pair.server.close_code == CloseCode.UNSUPPORTED_VERSION


# -- refused frames ---------------------------------------------------------------------------


def test_corrupt_frame_is_refused_and_the_link_stays_open() -> None:
    pair = _opened()
    pair.client.send(_batch(1))
    pair.transfer(Role.CLIENT, mangle=corrupt_payload)
    events = pair.server.events()
    assert len(events) == 1
    assert isinstance(events[0], FrameRejected)
    assert events[0].code == CloseCode.MALFORMED_FRAME
    assert pair.server.state is SessionState.OPEN
    assert pair.server.frames_rejected == 1

    pair.pump()
    (report,) = pair.client.events()
    assert isinstance(report, ErrorReport)
    assert report.code == CloseCode.MALFORMED_FRAME
    assert report.message == events[0].reason

    pair.client.send(_batch(2))
    pair.pump()
    assert pair.server.events() == [_batch(2)]
    assert pair.client.state is SessionState.OPEN


def test_oversized_frame_is_refused_and_the_link_stays_open() -> None:
    pair = _opened(server_options={"max_frame": 2048})
    frame = encode_frame(_batch(1, size=3000))
    pair.server.receive_frame(frame, now=pair.now)
    (event,) = pair.server.events()
    assert event == FrameRejected(CloseCode.FRAME_TOO_LARGE, event.reason)  # type: ignore[union-attr]
    assert pair.server.state is SessionState.OPEN
    pair.pump()
    (report,) = pair.client.events()
    assert isinstance(report, ErrorReport)
    assert report.code == CloseCode.FRAME_TOO_LARGE
    pair.client.send(_batch(2))
    pair.pump()
    assert pair.server.events() == [_batch(2)]


def test_refusal_text_quoting_the_peer_still_fits_a_frame() -> None:
    # msgspec's error quotes an unknown tag; the ErrorReport must not outgrow max_frame.
    pair = _opened(server_options={"max_frame": 2048})
    payload = msgspec.msgpack.encode(["x" * 2000, 1])
    pair.server.receive_frame(HEADER.pack(1, 0, len(payload)) + payload, now=pair.now)
    assert pair.server.state is SessionState.OPEN
    (report,) = _decoded(pair.server.data_to_send())
    assert isinstance(report, ErrorReport)
    assert len(report.message.encode()) <= 256


def test_bit_flips_never_break_the_session() -> None:
    frame = encode_frame(_batch(1))
    for bit in range(len(frame) * 8):
        pair = _opened()
        pair.server.receive_frame(flip_bit(frame, bit), now=pair.now)
        assert pair.server.state is SessionState.OPEN or pair.server.close_code is not None
        for out in pair.server.data_to_send():
            decode_frame(out, max_frame=pair.client.max_frame)


def test_dropped_frames_are_counted() -> None:
    pair = _opened()
    pair.client.send(_batch(1))
    pair.client.send(_batch(2))
    assert pair.pump(to_server=drop) == 0
    assert pair.dropped[Role.CLIENT] == 2
    assert pair.server.events() == []


# -- fuzzing ----------------------------------------------------------------------------------


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "payload", "flip", "sample"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "payload":
        payload = draw(st.binary(max_size=256))
        return HEADER.pack(1, 0, len(payload)) + payload
    sample = encode_frame(draw(st.sampled_from(sample_messages())))
    if kind == "flip":
        for bit in draw(st.lists(st.integers(0, len(sample) * 8 - 1), min_size=1, max_size=4)):
            sample = flip_bit(sample, bit)
    return sample


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames(), min_size=1, max_size=5), st.booleans())
def test_fuzz_frames_into_an_open_server(frames: list[bytes], as_client: bool) -> None:
    pair = _opened(server_options={"max_frame": 4096})
    session = pair.client if as_client else pair.server
    for frame in frames:
        session.receive_frame(frame, now=pair.now)  # must not raise
        assert session.state in (SessionState.OPEN, SessionState.CLOSED)
        if session.state is SessionState.CLOSED:
            assert session.close_code is not None
    events = session.events()
    closes = [e for e in events if isinstance(e, LinkClosed)]
    assert len(closes) == (session.state is SessionState.CLOSED)
    # Whatever it answers, the peer can decode.
    for out in session.data_to_send():
        decode_frame(out, max_frame=pair.peer(session.role).max_frame)


def test_a_ping_answered_outside_the_session_counts_as_heard() -> None:
    pair = _opened()
    server = pair.server
    before = server.last_received
    server.ping_answered(now=before + 5.0)
    assert server.last_received == before + 5.0
    assert server.data_to_send() == []  # the answer was the application's to send
    server.close(CloseCode.NORMAL, "done")
    server.ping_answered(now=before + 9.0)  # not once the link is closed
    assert server.last_received == before + 5.0
