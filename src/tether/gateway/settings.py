"""Agent settings: ``agent.toml`` in the data directory (optional), read once and frozen.

Example::

    proxy = "http://proxy.site:3128"      # else HTTPS_PROXY / NO_PROXY from the environment
    [hooks]                               # system actions; absent = refused on this host
    reboot = ["systemctl", "reboot"]
    shutdown = ["systemctl", "poweroff"]
    restart_service = ["systemctl", "restart"]   # the service name is appended
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AgentSettings", "AgentSettingsError", "load_agent_settings"]


class AgentSettingsError(ValueError):
    """``agent.toml`` is unreadable or a setting is wrong; the message names it."""


#: The default of ``upload_window``.
UPLOAD_WINDOW = 8


@dataclass(frozen=True, slots=True)
class AgentSettings:
    data_dir: Path
    cloud_url: str | None = None  # overrides the URL recorded at enrollment
    proxy: str | None = None
    trust_env: bool = True  # honour HTTPS_PROXY / NO_PROXY
    max_frame: int = 1 << 20
    reconnect_cap: float = 60.0
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_age: float = 7 * 86400.0
    health_interval: float = 60.0
    preflight_interval: float = 600.0
    ntp_pools: tuple[str, ...] = ()  # used when DHCP advertises no NTP server
    tier: str = "auto"  # "auto" adapts; "ws", "long-poll" or "poll" pins the link to one tier
    longpoll_wait: float = 25.0
    poll_interval: float = 900.0
    probe_interval: float = 300.0
    unstable_after: float = 20.0  # a link that dies younger than this counts against its tier
    upload_batch: int = 2000
    #: Batches sent and not yet acknowledged: enough that the cloud receives the next ones while
    #: it commits these (at 4 its ingest waited for them between commits, measured in
    #: bench/ingest).
    upload_window: int = UPLOAD_WINDOW
    hooks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def identity_dir(self) -> Path:
        return self.data_dir / "identity"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "agent.db"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.db"


_HOOKS = {"reboot", "shutdown", "restart_service"}


def load_agent_settings(data_dir: Path, **overrides: Any) -> AgentSettings:
    path = data_dir / "agent.toml"
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AgentSettingsError(f"{path}: {exc}") from None
    hooks = raw.pop("hooks", {})
    if not isinstance(hooks, dict):
        raise AgentSettingsError(f"{path}: [hooks] must be a table")
    for name, argv in hooks.items():
        if name not in _HOOKS:
            raise AgentSettingsError(f"{path}: unknown hook {name!r} (known: {sorted(_HOOKS)})")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise AgentSettingsError(f"{path}: hook {name!r} must be a non-empty list of strings")
    values: dict[str, Any] = {"data_dir": data_dir, "hooks": hooks}
    if "tier" in raw:
        tier = raw.pop("tier")
        if tier not in {"auto", "ws", "long-poll", "poll"}:
            raise AgentSettingsError(f"{path}: 'tier' must be auto, ws, long-poll or poll")
        values["tier"] = tier
    if "ntp_pools" in raw:
        pools = raw.pop("ntp_pools")
        if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
            raise AgentSettingsError(f"{path}: 'ntp_pools' must be a list of host names")
        values["ntp_pools"] = tuple(pools)
    for name in ("cloud_url", "proxy"):
        if name in raw:
            if not isinstance(raw[name], str):
                raise AgentSettingsError(f"{path}: setting {name!r} must be a string")
            values[name] = raw.pop(name)
    if "trust_env" in raw:
        values["trust_env"] = bool(raw.pop("trust_env"))
    for name in ("spool_max_bytes", "upload_batch", "upload_window"):
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AgentSettingsError(f"{path}: {name!r} must be a positive integer")
            values[name] = value
    for name in (
        "longpoll_wait",
        "poll_interval",
        "probe_interval",
        "unstable_after",
        "health_interval",
        "preflight_interval",
    ):
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise AgentSettingsError(f"{path}: {name!r} must be a positive number of seconds")
            values[name] = float(value)
    if "spool_max_age" in raw:
        age = raw.pop("spool_max_age")
        if not isinstance(age, int | float) or age <= 0:
            raise AgentSettingsError(f"{path}: 'spool_max_age' must be a positive number")
        values["spool_max_age"] = float(age)
    if "reconnect_cap" in raw:
        cap = raw.pop("reconnect_cap")
        if not isinstance(cap, int | float) or cap < 1:
            raise AgentSettingsError(f"{path}: 'reconnect_cap' must be a number >= 1")
        values["reconnect_cap"] = float(cap)
    if raw:
        raise AgentSettingsError(f"{path}: unknown settings {sorted(raw)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return AgentSettings(**values)
