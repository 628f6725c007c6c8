"""Tests for the connectors document and the settings schemas of tether's own connectors."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tether.protocol.connectors import (
    BUILTIN_CONNECTOR_SCHEMAS,
    SIMULATED_BUILDING,
    ConnectorsConfig,
    ConnectorsConfigInvalid,
    InstanceConfig,
    SimulatedBuildingConfig,
    decode_connectors_config,
)


def test_a_document_decodes_with_defaults_filled_in() -> None:
    config = decode_connectors_config(
        {
            "version": 3,
            "instances": {
                "sim": {"connector": SIMULATED_BUILDING, "config": {"seed": 7}},
                "off": {"connector": "modbus", "enabled": False},
            },
        }
    )
    assert config == ConnectorsConfig(
        version=3,
        instances={
            "sim": InstanceConfig(connector=SIMULATED_BUILDING, config={"seed": 7}),
            "off": InstanceConfig(connector="modbus", config={}, enabled=False),
        },
    )
    assert decode_connectors_config({"version": 1}).instances == {}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({}, "missing required field `version`"),
        ({"version": "1"}, "Expected `int`, got `str` - at `$.version`"),
        ({"version": 1, "instance": {}}, "unknown field `instance`"),
        ({"version": 1, "instances": {"sim": {}}}, "missing required field `connector`"),
        (
            {"version": 1, "instances": {"sim": {"connector": "x", "config": []}}},
            "Expected `object`, got `array` - at `$.instances[...].config`",
        ),
        (
            {"version": 1, "instances": {"sim": {"connector": "x", "enable": True}}},
            "unknown field `enable` - at `$.instances[...]`",
        ),
    ],
)
def test_a_malformed_document_is_refused_naming_the_field(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConnectorsConfigInvalid, match=r"^connectors configuration: ") as caught:
        decode_connectors_config(raw)
    assert words in str(caught.value)
    assert isinstance(caught.value.__cause__, msgspec.ValidationError)


def test_the_document_round_trips_through_msgpack() -> None:
    config = ConnectorsConfig(
        version=2, instances={"sim": InstanceConfig(connector=SIMULATED_BUILDING)}
    )
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(config))
    assert decode_connectors_config(wire) == config


def test_the_builtin_schemas_table_is_read_only() -> None:
    assert dict(BUILTIN_CONNECTOR_SCHEMAS) == {SIMULATED_BUILDING: SimulatedBuildingConfig}
    with pytest.raises(TypeError):
        BUILTIN_CONNECTOR_SCHEMAS["mine"] = SimulatedBuildingConfig  # type: ignore[index]
    assert "mine" not in BUILTIN_CONNECTOR_SCHEMAS


def test_simulated_building_settings_have_defaults_and_bounds() -> None:
    assert msgspec.convert({}, SimulatedBuildingConfig) == SimulatedBuildingConfig()
    assert msgspec.convert({"seed": 5, "rate": 1000}, SimulatedBuildingConfig).rate == 1000.0
    for bad, words in [
        ({"poll_interval": 0}, "Expected `float` > 0"),
        ({"air_handlers": 501}, "Expected `int` <= 500"),
        ({"building": ""}, "Expected `str` of length >= 1"),
        ({"seed": "x"}, "Expected `int`, got `str`"),
        ({"floors": 3}, "unknown field `floors`"),
    ]:
        with pytest.raises(msgspec.ValidationError) as caught:
            msgspec.convert(bad, SimulatedBuildingConfig)
        assert words in str(caught.value), bad
