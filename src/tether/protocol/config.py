"""The configuration sections a gateway takes from the cloud, and the checks both sides run.

An operator sets a section (``tether config set``); the cloud checks it before storing it, so a
section no agent would take is refused where the operator is, not later on the gateway. The
agent checks again (it may be older or newer than the cloud). ``connectors`` is checked by the
cloud against the connectors it knows (see :mod:`tether.cloud.configcheck`), each instance's
name by the rule both sides share (:func:`check_instance_name`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "CONFIG_SECTIONS",
    "HEALTH_INTERVAL_RANGE",
    "INSTANCE_NAME",
    "LOG_LEVEL_NAMES",
    "ConfigInvalid",
    "agent_section",
    "check_instance_name",
    "logs_section",
]

#: The sections an agent applies.
CONFIG_SECTIONS: Final = ("agent", "connectors", "logs")
#: Seconds between two health reports, at least and at most.
HEALTH_INTERVAL_RANGE: Final = (5.0, 86400.0)
#: The log levels a ``logs`` section may name, lowest first.
LOG_LEVEL_NAMES: Final = ("debug", "info", "warning", "error", "critical")
#: A connector instance's name: a letter or a digit, then letters, digits, '.', '_' or '-'; 63 at
#: most (it names the instance in logs, metrics and point ids).
INSTANCE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class ConfigInvalid(ValueError):
    """A configuration section no agent would apply; the message says what is wrong."""


def _only(section: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigInvalid(f"{section}: unknown setting {names} (known: {', '.join(known)})")


def check_instance_name(name: str) -> None:
    """Raise :class:`ConfigInvalid` unless *name* may name a connector instance."""
    if not INSTANCE_NAME.fullmatch(name):
        raise ConfigInvalid(
            f"instance {name!r}: name must be letters, digits, '.', '_' or '-'"
            " (at most 63, starting with a letter or digit)"
        )


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
