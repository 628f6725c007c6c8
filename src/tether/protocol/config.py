"""The configuration sections a gateway takes from the cloud, and the checks both sides run.

An operator sets a section (``tether config set``); the cloud checks it before storing it, so a
section no agent would take is refused where the operator is, not later on the gateway. The
agent checks again (it may be older or newer than the cloud). ``connectors`` is checked by the
cloud against the connectors it knows (see :mod:`tether.cloud.configcheck`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "CONFIG_SECTIONS",
    "HEALTH_INTERVAL_RANGE",
    "LOG_LEVEL_NAMES",
    "ConfigInvalid",
    "agent_section",
    "logs_section",
]

#: The sections an agent applies.
CONFIG_SECTIONS: Final = ("agent", "connectors", "logs")
#: Seconds between two health reports, at least and at most.
HEALTH_INTERVAL_RANGE: Final = (5.0, 86400.0)
#: The log levels a ``logs`` section may name, lowest first.
LOG_LEVEL_NAMES: Final = ("debug", "info", "warning", "error", "critical")


class ConfigInvalid(ValueError):
    """A configuration section no agent would apply; the message says what is wrong."""


def _only(section: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigInvalid(f"{section}: unknown setting {names} (known: {', '.join(known)})")


def agent_section(data: Mapping[str, Any], *, default_interval: float) -> float:
    """``agent``: ``{"health_interval": seconds}``; the interval it sets."""
    _only("agent", data, ("health_interval",))
    raw = data.get("health_interval", default_interval)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigInvalid("health_interval must be a number of seconds")
    low, high = HEALTH_INTERVAL_RANGE
    if not math.isfinite(raw) or not low <= raw <= high:
        raise ConfigInvalid(f"health_interval must be within {low:g}..{high:g} seconds")
    return float(raw)


def logs_section(data: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``logs``: ``{"level": "info", "sources": ["agent", "journald:ssh.service"]}``; the
    level (lower case) and the sources it sets."""
    _only("logs", data, ("level", "sources"))
    level = data.get("level", "info")
    if not isinstance(level, str) or level.lower() not in LOG_LEVEL_NAMES:
        raise ConfigInvalid(f"log level must be one of {', '.join(LOG_LEVEL_NAMES)}")
    sources = data.get("sources", ["agent"])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigInvalid("log sources must be a list of strings")
    for source in sources:
        if source not in {"agent", "journald"} and not source.startswith("journald:"):
            raise ConfigInvalid(f"unknown log source {source!r} (agent, journald[:UNIT])")
    return level.lower(), list(sources)
