"""storable(): NUL becomes U+FFFD and a non-finite float None at any depth (keys included),
lengths kept, and what needs no change comes back as the very same object."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.cloud.storable import NUL, REPLACEMENT, has_nul, storable, storable_text
from tether.protocol.telemetry import DeviceInfo, PointInfo

_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),  # NaN and infinities included
        st.text(alphabet=st.sampled_from(["a", "é", NUL, "\\", "u", "0"]), max_size=6),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=3), children, max_size=4),
    ),
    max_leaves=20,
)


def _holds_nul_or_nonfinite(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(
            _holds_nul_or_nonfinite(k) or _holds_nul_or_nonfinite(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(map(_holds_nul_or_nonfinite, value))
    return False


def _expected(value: Any) -> Any:
    """What storable() should make of a JSON-like value, written out plainly."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_expected(k): _expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(_json)
def test_storable_replaces_nul_and_nonfinite_floats_and_nothing_else(value: Any) -> None:
    result = storable(value)
    assert not _holds_nul_or_nonfinite(result)
    # msgspec's JSON keeps the types apart (1 and 1.0, True and 1) where == would not.
    assert msgspec.json.encode(result) == msgspec.json.encode(_expected(value))
    if not _holds_nul_or_nonfinite(value):
        assert result is value


def test_a_nul_in_a_nested_key_and_value_is_replaced_keeping_lengths() -> None:
    doc = {"a": [{f"k{NUL}": f"{NUL}v{NUL}"}, ("t", f"u{NUL}")], "n": 1}
    assert storable(doc) == {
        "a": [{f"k{REPLACEMENT}": f"{REPLACEMENT}v{REPLACEMENT}"}, ("t", f"u{REPLACEMENT}")],
        "n": 1,
    }
    assert len(storable_text(f"{NUL}x{NUL}")) == 3


def test_struct_fields_are_replaced_and_an_untouched_struct_is_kept() -> None:
    device = DeviceInfo(device_id="d", name=f"n{NUL}", kind="k", attributes={"a": f"b{NUL}"})
    assert storable(device) == DeviceInfo(
        device_id="d", name=f"n{REPLACEMENT}", kind="k", attributes={"a": f"b{REPLACEMENT}"}
    )
    point = PointInfo(point_id="p", device_id="d", name="plain")
    assert storable(point) is point


def test_has_nul_and_storable_text() -> None:
    assert has_nul("a", f"b{NUL}")
    assert not has_nul("a", "b", "")
    text = "no nul here"
    assert storable_text(text) is text
