"""Wire messages: the registry is complete, tags are unique, and the array layout evolves safely."""

from __future__ import annotations

import typing

import msgspec
import pytest
from tests.support.linkpair import sample_messages

from tether.protocol import messages
from tether.protocol.codec import HEADER, decode_frame, encode_frame
from tether.protocol.errors import MalformedFrame
from tether.protocol.messages import (
    MESSAGE_TYPES,
    Close,
    CloseCode,
    Hello,
    LogRecord,
    Message,
    Ping,
    Pong,
    TelemetryAck,
    TelemetryBatch,
)
from tether.protocol.telemetry import Observation


def _tag(cls: type[msgspec.Struct]) -> str:
    tag = msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


def test_message_union_and_registry_agree() -> None:
    assert typing.get_args(Message) == MESSAGE_TYPES


def test_every_message_class_in_the_module_is_registered() -> None:
    defined = {
        obj
        for name, obj in vars(messages).items()
        if not name.startswith("_")
        and isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == messages.__name__
        and msgspec.inspect.type_info(obj).tag is not None  # type: ignore[attr-defined]
    }
    assert defined == set(MESSAGE_TYPES)


def test_tags_are_unique_strings() -> None:
    tags = [_tag(cls) for cls in MESSAGE_TYPES]
    assert len(set(tags)) == len(tags)
    assert all(tag and tag == tag.strip() for tag in tags)


def test_samples_cover_every_message_type() -> None:
    assert [type(m) for m in sample_messages()] == list(MESSAGE_TYPES)


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_message_is_a_tagged_array(message: Message) -> None:
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(message))
    assert isinstance(raw, list)
    assert raw[0] == _tag(type(message))
    fields = msgspec.structs.fields(type(message))
    assert len(raw) == 1 + len(fields)


def test_ping_costs_a_few_bytes() -> None:
    # array of 2, "ping", 1: the heartbeat of 10,000 links stays cheap.
    assert msgspec.msgpack.encode(Ping(seq=1)) == b"\x92\xa4ping\x01"


def test_observation_is_a_plain_array() -> None:
    obs = Observation("b1/ahu-1/sat", 1718000000.0, 13.2)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(obs)) == [
        "b1/ahu-1/sat",
        1718000000.0,
        13.2,
        "good",
    ]


def _frame(raw: object) -> bytes:
    payload = msgspec.msgpack.encode(raw)
    return HEADER.pack(1, 0, len(payload)) + payload


def test_a_newer_peer_may_append_fields() -> None:
    # A later version adds optional fields at the end; this version still reads the message.
    assert decode_frame(_frame(["pong", 3, "new-field", [1, 2]])) == Pong(seq=3)
    assert decode_frame(_frame(["tm-ack", "s", 9, 1, 0, {"future": True}])) == TelemetryAck(
        stream="s", last_seq=9, accepted=1, duplicates=0
    )


def test_an_older_peer_may_omit_optional_fields() -> None:
    assert decode_frame(_frame(["hello", [1], "0.0.1", 4096, "boot"])) == Hello(
        protocol_versions=[1], agent_version="0.0.1", max_frame=4096, boot_id="boot"
    )
    assert decode_frame(_frame(["close", "normal"])) == Close(code="normal")
    assert decode_frame(_frame(["tm-ack", "s", 9])) == TelemetryAck(stream="s", last_seq=9)


@pytest.mark.parametrize(
    "raw",
    [
        ["pong"],  # a required field missing
        ["pong", "seven"],  # wrong type
        ["no-such-tag", 1],
        [7, 1],  # tag of the wrong type
        {"t": "pong", "seq": 1},  # a map, not an array
        ["tm", "s", 1, 2, [["p", 1.0]]],  # an observation without its value
        ["tm", "s", 1, 2, [["p", 1.0, [1], "good"]]],  # a value of no allowed type
    ],
    ids=repr,
)
def test_invalid_layouts_are_malformed(raw: object) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(_frame(raw))


def test_observation_values_keep_their_type() -> None:
    batch = TelemetryBatch(
        stream="s",
        first_seq=1,
        last_seq=5,
        observations=[
            Observation("p", 1.0, 1.0),
            Observation("p", 2.0, 1),
            Observation("p", 3.0, True),
            Observation("p", 4.0, False),
            Observation("p", 5.0, "1"),
        ],
    )
    decoded = decode_frame(encode_frame(batch))
    assert isinstance(decoded, TelemetryBatch)
    values = [o.value for o in decoded.observations]
    assert [type(v) for v in values] == [float, int, bool, bool, str]
    assert values == [1.0, 1, True, False, "1"]


def test_mutable_defaults_are_not_shared() -> None:
    first = Hello(protocol_versions=[1], agent_version="a", max_frame=4096, boot_id="b")
    second = Hello(protocol_versions=[1], agent_version="a", max_frame=4096, boot_id="b")
    first.capabilities.append("x")
    assert second.capabilities == []
    assert LogRecord(0.0, "info", "s", "m").fields == {}


def test_close_codes() -> None:
    codes = {v for k, v in vars(CloseCode).items() if k.isupper() and isinstance(v, str)}
    assert len(codes) == 11
    assert codes >= CloseCode.FATAL
    # After these a reconnect cannot help; after a timeout or going-away it must be tried.
    assert {CloseCode.REVOKED, CloseCode.UNAUTHORIZED, CloseCode.UNSUPPORTED_VERSION} == (
        CloseCode.FATAL
    )
    assert CloseCode.HEARTBEAT_TIMEOUT not in CloseCode.FATAL
    assert CloseCode.GOING_AWAY not in CloseCode.FATAL
