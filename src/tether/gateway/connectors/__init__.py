"""Field connectors: the contract (base), the registry, the runner (core), built-in connectors.

Importing this package registers nothing: build a registry with
:func:`~tether.gateway.connectors.registry.builtin_registry`.
"""

from tether.gateway.connectors.base import (
    Connector,
    ConnectorConfigError,
    ConnectorContext,
    ConnectorError,
    ConnectorFactory,
    ConnectorFatal,
    ConnectorManifest,
    ConnectorNotReady,
    InstanceStopped,
    IotClass,
)
from tether.gateway.connectors.core import (
    ApplyResult,
    ConnectorRunner,
    ConnectorsConfig,
    ConnectorsConfigInvalid,
    InstanceConfig,
    InstanceState,
    InstanceStats,
    ObservationSink,
    StaleConnectorsConfig,
    decode_connectors_config,
)
from tether.gateway.connectors.registry import (
    ConnectorRegistry,
    DuplicateConnector,
    Registration,
    RegistryError,
    UnknownConnector,
    builtin_registry,
)
from tether.protocol.telemetry import Discovery

__all__ = [
    "ApplyResult",
    "Connector",
    "ConnectorConfigError",
    "ConnectorContext",
    "ConnectorError",
    "ConnectorFactory",
    "ConnectorFatal",
    "ConnectorManifest",
    "ConnectorNotReady",
    "ConnectorRegistry",
    "ConnectorRunner",
    "ConnectorsConfig",
    "ConnectorsConfigInvalid",
    "Discovery",
    "DuplicateConnector",
    "InstanceConfig",
    "InstanceState",
    "InstanceStats",
    "InstanceStopped",
    "IotClass",
    "ObservationSink",
    "Registration",
    "RegistryError",
    "StaleConnectorsConfig",
    "UnknownConnector",
    "builtin_registry",
    "decode_connectors_config",
]
