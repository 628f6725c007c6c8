"""Tests for the connector registry: explicit registration, loud duplicates, lookups."""

from __future__ import annotations

import pytest
from tests.support.connectors import PROBE_MANIFEST, Lab, Probe, ProbeConfig

from tether.gateway.connectors import (
    ConnectorManifest,
    ConnectorRegistry,
    DuplicateConnector,
    IotClass,
    UnknownConnector,
    builtin_registry,
)
from tether.gateway.connectors.simulated import MANIFEST as SIMULATED
from tether.protocol.connectors import BUILTIN_CONNECTOR_SCHEMAS


def test_registering_a_name_twice_fails_and_keeps_the_first() -> None:
    lab = Lab()
    registry = ConnectorRegistry()
    registry.register(PROBE_MANIFEST, lambda config: Probe(lab, config))
    impostor = ConnectorManifest(
        name="probe",
        version="9.9.9",
        description="another connector with the same name",
        config_schema=ProbeConfig,
        iot_class=IotClass.CLOUD_PUSH,
    )
    with pytest.raises(DuplicateConnector, match="'probe' is already registered"):
        registry.register(impostor, lambda config: Probe(lab, config))
    assert registry.get("probe").manifest is PROBE_MANIFEST
    assert len(registry) == 1


def test_unknown_names_list_what_is_known() -> None:
    registry = builtin_registry()
    with pytest.raises(UnknownConnector, match=r"'bacnet'.*known: simulated-building"):
        registry.get("bacnet")
    assert "simulated-building" in registry
    assert list(registry) == ["simulated-building"]
    assert registry.manifests() == [SIMULATED]


def test_importing_connectors_registers_nothing() -> None:
    assert len(ConnectorRegistry()) == 0
    first, second = builtin_registry(), builtin_registry()
    assert first is not second
    second.register(PROBE_MANIFEST, lambda config: Probe(Lab(), config))
    assert "probe" not in first


def test_the_builtin_registry_and_the_shared_schemas_table_agree() -> None:
    # The cloud checks settings against tether.protocol's table, the agent against its registry:
    # the same connector names with the same schema types, or the two would judge differently.
    registry = builtin_registry()
    assert list(registry) == sorted(BUILTIN_CONNECTOR_SCHEMAS)
    for name, schema in BUILTIN_CONNECTOR_SCHEMAS.items():
        assert registry.get(name).manifest.config_schema is schema, name
