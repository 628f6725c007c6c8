"""The link's WebSocket server without sockets: request heads, the upgrade, and client frames."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.cloud.wsserver import (
    CLOSE,
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    MESSAGE,
    PING,
    FrameParser,
    HandshakeRefused,
    WebSocketProtocolError,
    accept_key,
    check_upgrade,
    encode_frame_header,
    http_response,
    is_link_upgrade,
    parse_request_head,
)


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A client-to-server frame as RFC 6455 says a client sends it."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


UPGRADE = (
    b"GET /link HTTP/1.1\r\nHost: cloud\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade"
    b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"X-Dup: a\r\nx-dup: b"
)


def test_request_head_is_parsed_with_repeated_headers_joined() -> None:
    head = parse_request_head(UPGRADE)
    assert head is not None
    assert (head.method, head.path, head.query, head.version) == ("GET", "/link", "", "HTTP/1.1")
    assert head.headers["x-dup"] == "a, b"
    assert head.tokens("connection") == {"keep-alive", "upgrade"}
    assert is_link_upgrade(head)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /link\r\nHost: x",  # no version
        b"GET /link HTTP/2\r\nHost: x",  # not HTTP/1.x
        b"GET /link HTTP/1.1\r\nHost: x\r\n folded",  # obsolete line folding
        b"GET /link HTTP/1.1\r\nHost : x",  # space before the colon
        b"GET /link HTTP/1.1\r\nno colon here",
    ],
)
def test_heads_this_server_does_not_read_are_left_to_aiohttp(raw: bytes) -> None:
    assert parse_request_head(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /link?probe=1 HTTP/1.1\r\nUpgrade: websocket",  # the probe stays with aiohttp
        b"POST /link HTTP/1.1\r\nUpgrade: websocket",
        b"GET /link/poll HTTP/1.1\r\nUpgrade: websocket",
        b"GET /link HTTP/1.1\r\nHost: x",  # no upgrade asked
    ],
)
def test_only_an_upgrade_of_link_itself_is_taken(raw: bytes) -> None:
    head = parse_request_head(raw)
    assert head is not None
    assert not is_link_upgrade(head)


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    head = parse_request_head(UPGRADE)
    assert head is not None
    assert check_upgrade(head) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("replace", "status", "words"),
    [
        ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426, "version 13"),
        ((b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="), 400, "16 bytes"),
        ((b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64!!"), 400, "16 bytes"),
        ((b"keep-alive, Upgrade", b"keep-alive"), 400, "upgrade"),
        ((b"HTTP/1.1", b"HTTP/1.0"), 400, "HTTP/1.1"),
    ],
)
def test_a_bad_upgrade_is_refused_with_its_reason(
    replace: tuple[bytes, bytes], status: int, words: str
) -> None:
    head = parse_request_head(UPGRADE.replace(*replace))
    assert head is not None
    with pytest.raises(HandshakeRefused) as caught:
        check_upgrade(head)
    assert caught.value.status == status
    assert words in caught.value.reason


def test_refusal_response_is_well_formed_and_header_values_are_sanitised() -> None:
    raw = http_response(403, "no", (("X-Tether-Error", "bad\r\nInjected: yes"),), body="no\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 403 Forbidden"
    assert b"X-Tether-Error: bad??Injected: yes" in lines
    assert b"Connection: close" in lines
    assert body == b"no\n"
    assert b"Content-Length: 3" in lines


def test_a_masked_message_is_returned_whole_even_when_fed_byte_by_byte() -> None:
    parser = FrameParser(1 << 20)
    payload = bytes(range(256)) * 3
    data = client_frame(0x2, payload) + client_frame(0x9, b"hb")
    events: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    assert events == [(MESSAGE, payload), (PING, b"hb")]
    assert parser.pending == 0


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_every_length_encoding_is_read(size: int) -> None:
    payload = os.urandom(size)
    assert FrameParser(1 << 20).feed(client_frame(0x2, payload)) == [(MESSAGE, payload)]


def test_fragments_are_reassembled_with_control_frames_between_them() -> None:
    parser = FrameParser(1 << 20)
    data = (
        client_frame(0x2, b"abc", fin=False)
        + client_frame(0x9, b"p")
        + client_frame(0x0, b"def", fin=False)
        + client_frame(0x0, b"g")
    )
    assert parser.feed(data) == [(PING, b"p"), (MESSAGE, b"abcdefg")]


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (client_frame(0x2, b"x", masked=False), CLOSE_PROTOCOL_ERROR, "masked"),
        (client_frame(0x2, b"x", rsv=0x40), CLOSE_PROTOCOL_ERROR, "reserved bits"),
        (client_frame(0x0, b"x"), CLOSE_PROTOCOL_ERROR, "continuation"),
        (client_frame(0x3, b"x"), CLOSE_PROTOCOL_ERROR, "unknown opcode"),
        (client_frame(0x9, b"x" * 126), CLOSE_PROTOCOL_ERROR, "control frames"),
        (client_frame(0x9, b"x", fin=False), CLOSE_PROTOCOL_ERROR, "control frames"),
        (client_frame(0x8, b"\x03"), CLOSE_PROTOCOL_ERROR, "one byte"),
        (client_frame(0x8, b"\x03\xe8\xff\xfe"), CLOSE_INVALID_DATA, "UTF-8"),
        (
            client_frame(0x2, b"a", fin=False) + client_frame(0x2, b"b"),
            CLOSE_PROTOCOL_ERROR,
            "inside a fragmented",
        ),
    ],
)
def test_violations_close_with_the_code_the_rfc_names(data: bytes, code: int, words: str) -> None:
    with pytest.raises(WebSocketProtocolError) as caught:
        FrameParser(1 << 20).feed(data)
    assert caught.value.code == code
    assert words in caught.value.reason


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    parser = FrameParser(1000)
    header_only = client_frame(0x2, b"x" * 5000)[:8]  # 16-bit length and the mask key
    with pytest.raises(WebSocketProtocolError) as caught:
        parser.feed(header_only)
    assert caught.value.code == CLOSE_MESSAGE_TOO_BIG


def test_oversized_fragments_are_refused_as_they_add_up() -> None:
    parser = FrameParser(1000)
    assert parser.feed(client_frame(0x2, b"x" * 600, fin=False)) == []
    with pytest.raises(WebSocketProtocolError) as caught:
        parser.feed(client_frame(0x0, b"x" * 600))
    assert caught.value.code == CLOSE_MESSAGE_TOO_BIG


def test_close_carries_the_peers_code() -> None:
    events = FrameParser(1000).feed(client_frame(0x8, struct.pack("!H", 1001) + b"bye"))
    assert events == [(CLOSE, struct.pack("!H", 1001) + b"bye")]


def test_server_frame_headers_use_the_shortest_length_form() -> None:
    assert encode_frame_header(0x2, 5) == b"\x82\x05"
    assert encode_frame_header(0x2, 126) == b"\x82\x7e\x00\x7e"
    assert encode_frame_header(0xA, 70000) == b"\x8a\x7f" + (70000).to_bytes(8, "big")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_any_bytes_give_messages_or_a_protocol_error(data: bytes, step: int) -> None:
    parser = FrameParser(200)
    code = None
    try:
        for i in range(0, len(data), step):
            for kind, payload in parser.feed(data[i : i + step]):
                assert kind in (MESSAGE, PING, CLOSE)
                assert len(payload) <= 200
    except WebSocketProtocolError as exc:
        code = exc.code
    assert code in (None, CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_MESSAGE_TOO_BIG)
