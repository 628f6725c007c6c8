"""The cloud's check of a configuration section before it is stored and pushed.

``agent`` and ``logs`` are checked as the agent checks them (:mod:`tether.protocol.config`).
``connectors`` is checked for its shape, its instance names, and, for the connectors shipped
with tether, each instance's settings against that connector's schema
(:data:`tether.protocol.connectors.BUILTIN_CONNECTOR_SCHEMAS`); a connector the cloud does not
know (one a deployment added to its agents) is left to the agent to judge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from tether.protocol.config import (
    CONFIG_SECTIONS,
    ConfigInvalid,
    agent_section,
    check_instance_name,
    logs_section,
)
from tether.protocol.connectors import (
    BUILTIN_CONNECTOR_SCHEMAS,
    ConnectorsConfigInvalid,
    decode_connectors_config,
)

__all__ = ["check_section"]


def check_section(section: str, data: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigInvalid` saying what is wrong with *data* as *section*."""
    if section not in CONFIG_SECTIONS:
        known = ", ".join(CONFIG_SECTIONS)
        raise ConfigInvalid(f"unknown configuration section {section!r} (known: {known})")
    if section == "agent":
        agent_section(data, default_interval=HEALTH_DEFAULT)
    elif section == "logs":
        logs_section(data)
    else:
        _connectors(data)


#: Any valid interval: a section that leaves it out keeps the agent's own.
HEALTH_DEFAULT = 60.0


def _connectors(data: Mapping[str, Any]) -> None:
    if "version" in data:
        raise ConfigInvalid("connectors: 'version' is set by the cloud, leave it out")
    try:
        config = decode_connectors_config({**data, "version": 1})
    except ConnectorsConfigInvalid as exc:
        raise ConfigInvalid(str(exc)) from None
    for name, instance in config.instances.items():
        check_instance_name(name)
        schema = BUILTIN_CONNECTOR_SCHEMAS.get(instance.connector)
        if schema is None:
            continue  # perhaps one the deployment added to its agents: theirs to judge
        try:
            msgspec.convert(instance.config, schema)
        except msgspec.ValidationError as exc:
            raise ConfigInvalid(f"instance {name!r} ({instance.connector}): {exc}") from None
