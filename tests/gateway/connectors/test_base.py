"""Tests for the connector contract: manifests refuse malformed declarations."""

from __future__ import annotations

import pytest
from tests.support.connectors import ProbeConfig

from tether.gateway.connectors import ConnectorManifest, IotClass


@pytest.mark.parametrize("name", ["", "Modbus", "modbus tcp", "-modbus", "x" * 64])
def test_manifest_names_are_lowercase_slugs(name: str) -> None:
    with pytest.raises(ValueError, match="lowercase"):
        ConnectorManifest(
            name=name,
            version="1",
            description="",
            config_schema=ProbeConfig,
            iot_class=IotClass.LOCAL_POLLING,
        )


def test_manifest_config_schema_must_be_a_struct() -> None:
    with pytest.raises(TypeError, match=r"msgspec\.Struct"):
        ConnectorManifest(
            name="modbus-tcp",
            version="1",
            description="",
            config_schema=dict,  # type: ignore[type-var]
            iot_class=IotClass.LOCAL_POLLING,
        )
    ok = ConnectorManifest(
        name="modbus-tcp",
        version="1",
        description="Modbus TCP",
        config_schema=ProbeConfig,
        iot_class=IotClass.LOCAL_POLLING,
    )
    assert ok.iot_class == "local_polling"
