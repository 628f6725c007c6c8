"""Tests for the telemetry wire types: compact, exact round trips, strict decoding."""

from __future__ import annotations

import gc
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.telemetry import (
    DeviceInfo,
    Discovery,
    Observation,
    PointInfo,
    Quality,
    decode_observations,
    encode_observations,
    observation_columns,
)

values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
observations = st.builds(
    Observation,
    point_id=st.text(min_size=1, max_size=40),
    ts=st.floats(min_value=0, max_value=4e9),
    value=values,
    quality=st.sampled_from([q.value for q in Quality]),
)


@given(st.lists(observations, max_size=30))
def test_observations_round_trip_exactly_with_their_value_types(items: list[Observation]) -> None:
    decoded = decode_observations(encode_observations(items))
    assert decoded == items
    assert [type(o.value) for o in decoded] == [type(o.value) for o in items]


def test_an_observation_is_a_compact_array() -> None:
    packed = encode_observations([Observation("ahu-1/sat", 1_718_000_000.0, 13.25)])
    assert msgspec.msgpack.decode(packed) == [["ahu-1/sat", 1_718_000_000.0, 13.25, "good"]]
    assert len(packed) == 1 + 1 + 10 + 9 + 9 + 5  # array, array, id, ts, value, quality


def test_nan_survives_and_malformed_input_is_refused() -> None:
    (nan,) = decode_observations(encode_observations([Observation("p", 1.0, math.nan)]))
    assert isinstance(nan.value, float)
    assert math.isnan(nan.value)
    with pytest.raises(msgspec.ValidationError):
        decode_observations(msgspec.msgpack.encode([["p", "yesterday", 1.0, "good"]]))
    with pytest.raises(msgspec.ValidationError):
        decode_observations(msgspec.msgpack.encode([["p", 1.0, [1, 2], "good"]]))


def test_observations_are_immutable() -> None:
    o = Observation("p", 1.0, 2)
    with pytest.raises(AttributeError):
        o.value = 3  # type: ignore[misc]


def test_discovery_round_trips() -> None:
    discovery = Discovery(
        devices=(DeviceInfo(device_id="b/ahu-1", name="AHU-1", kind="ahu", vendor="Acme"),),
        points=(
            PointInfo(point_id="b/ahu-1/sat", device_id="b/ahu-1", name="Supply air", unit="°C"),
        ),
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(discovery), type=Discovery)
    assert decoded == discovery
    assert decoded.points[0].kind == "numeric"
    assert decoded.points[0].writable is False


def test_columns_are_the_fields_in_order() -> None:
    items = [Observation("a", 1.0, 2), Observation("b", 2.0, "x", "bad")]
    columns = observation_columns(items)
    assert columns == (["a", "b"], [1.0, 2.0], [2, "x"], ["good", "bad"])
    assert observation_columns([]) == ([], [], [], [])


def test_observations_are_not_tracked_by_the_garbage_collector() -> None:
    (decoded,) = decode_observations(encode_observations([Observation("p", 1.0, 2.0)]))
    assert not gc.is_tracked(decoded)
    assert not gc.is_tracked(Observation("p", 1.0, "text"))
