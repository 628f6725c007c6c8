"""The ``connectors`` configuration document and the settings schemas of tether's own connectors.

Both programs need these: the agent applies a connectors document, the cloud checks one before
storing and pushing it. The document (:class:`ConnectorsConfig`) maps each instance name to a
connector name and that connector's raw settings; :func:`decode_connectors_config` checks its
shape only. Each connector's settings are checked against its own schema, a msgspec ``Struct``:
:data:`BUILTIN_CONNECTOR_SCHEMAS` holds the schemas of the connectors shipped with tether, by
connector name, so the cloud can check their settings without importing the agent. The agent's
connector manifests (:mod:`tether.gateway.connectors`) take their schemas from here.

No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "BUILTIN_CONNECTOR_SCHEMAS",
    "SIMULATED_BUILDING",
    "ConnectorsConfig",
    "ConnectorsConfigInvalid",
    "InstanceConfig",
    "SimulatedBuildingConfig",
    "decode_connectors_config",
]


# --- the document --------------------------------------------------------------------------------


class InstanceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One configured instance: which connector, with which settings."""

    connector: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    enabled: bool = True


class ConnectorsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every connector instance of a gateway, as one versioned document."""

    version: int
    instances: dict[str, InstanceConfig] = msgspec.field(default_factory=dict)


class ConnectorsConfigInvalid(ValueError):
    """The connectors document itself is malformed (not one instance's settings)."""


def decode_connectors_config(raw: Mapping[str, Any]) -> ConnectorsConfig:
    """Convert a parsed document (JSON, msgpack, TOML) into a :class:`ConnectorsConfig`."""
    try:
        return msgspec.convert(raw, ConnectorsConfig)
    except msgspec.ValidationError as exc:
        raise ConnectorsConfigInvalid(f"connectors configuration: {exc}") from exc


# --- settings of the connectors shipped with tether ----------------------------------------------

#: The simulated building's connector name (:mod:`tether.gateway.connectors.simulated`).
SIMULATED_BUILDING: Final = "simulated-building"


class SimulatedBuildingConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Settings of the ``simulated-building`` connector."""

    seed: int = 0
    building: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "Simulated Building"
    air_handlers: Annotated[int, msgspec.Meta(ge=0, le=500)] = 2
    vavs_per_ahu: Annotated[int, msgspec.Meta(ge=0, le=200)] = 6
    meters: Annotated[int, msgspec.Meta(ge=0, le=500)] = 2
    zone_sensors: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 6
    poll_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    rate: Annotated[float, msgspec.Meta(ge=0, le=100_000)] = 0.0  # observations/s; 0: natural
    utc_offset_hours: Annotated[float, msgspec.Meta(ge=-14, le=14)] = 0.0


#: Connector name → settings schema, for every connector shipped with tether (read-only). The
#: agent's built-in registry holds exactly these names with exactly these schemas (tested).
BUILTIN_CONNECTOR_SCHEMAS: Final[Mapping[str, type[msgspec.Struct]]] = MappingProxyType(
    {SIMULATED_BUILDING: SimulatedBuildingConfig}
)
