"""Agent settings: ``agent.toml`` in the data directory (optional), read once and frozen.

Example::

    proxy = "http://proxy.site:3128"      # else HTTPS_PROXY / NO_PROXY from the environment
    [hooks]                               # system actions; absent = refused on this host
    reboot = ["systemctl", "reboot"]
    shutdown = ["systemctl", "poweroff"]
    restart_service = ["systemctl", "restart"]   # the service name is appended
"""

from __future__ import annotations

import math
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.protocol.config import LOG_LEVEL_NAMES

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_UPLOAD_BATCH",
    "AgentSettings",
    "AgentSettingsError",
    "check_cloud_url",
    "check_log_options",
    "check_proxy_url",
    "load_agent_settings",
]


class AgentSettingsError(ValueError):
    """``agent.toml`` is unreadable or a setting is wrong; the message names it."""


#: The default of ``upload_window``.
UPLOAD_WINDOW = 8
#: The largest ``upload_batch``: a batch is read from the spool into memory whole, and a link
#: frame (``max_frame``, 1 MiB) holds some 20,000 small observations: a larger batch would only
#: be split again before it is sent.
MAX_UPLOAD_BATCH = 20_000
#: The largest ``upload_window``: batches in flight are held in the agent's memory.
MAX_UPLOAD_WINDOW = 64
#: What ``--log-level`` and ``--log-format`` take.
LOG_LEVELS = LOG_LEVEL_NAMES
LOG_FORMATS = ("text", "json")


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


def check_log_options(level: str, fmt: str) -> None:
    """Refuse a log level or format the agent does not know (ValueError names the valid ones)."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"--log-level takes one of {', '.join(LOG_LEVELS)}; got {level!r}")
    if fmt.lower() not in LOG_FORMATS:
        raise ValueError(f"--log-format takes one of {', '.join(LOG_FORMATS)}; got {fmt!r}")


def _host_and_port(parts: urllib.parse.SplitResult, value: str) -> None:
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is no number or out of range)
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{value!r} names no host")


def check_cloud_url(value: str) -> str:
    """The cloud's URL as the agent uses it: ``https://host[:port]`` (a trailing ``/`` is
    dropped). Raises ValueError saying what is wrong."""
    if "://" not in value:
        raise ValueError(f"{value!r} is not a URL: give https://host[:port]")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme.lower() != "https":
        raise ValueError(
            f"{value!r}: the cloud is reached over https:// only (the link is TLS end to end)"
        )
    _host_and_port(parts, value)
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: give only https://host[:port]")
    return f"https://{parts.netloc}"


def check_proxy_url(value: str) -> str:
    """A proxy as the agent can use it: ``http://[user:password@]host:port``.

    ``https://`` proxies are refused: the agent's HTTP client (aiohttp) would verify the
    proxy's own certificate with the agent's TLS context, which trusts the platform CA alone,
    so no ordinary proxy could pass. The tunnel through the proxy is TLS to the cloud anyway.
    """
    parts = urllib.parse.urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ValueError(
            "https:// proxies are not supported (the agent trusts only the platform CA, so "
            "it cannot verify a proxy's own certificate): use the proxy's http:// port; "
            "the tunnel through it is TLS to the cloud all the same"
        )
    if "://" not in value or scheme != "http":
        raise ValueError(f"{_redact(value)!r} is not a proxy URL: give http://host:port")
    _host_and_port(parts, _redact(value))
    if parts.port is None:
        raise ValueError(f"{_redact(value)!r}: give the proxy's port (http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{_redact(value)!r}: give only http://[user:password@]host:port")
    return value.strip()


def _redact(value: str) -> str:
    """*value* without the password a proxy URL may carry."""
    head, at, tail = value.rpartition("@")
    if not at:
        return value
    scheme, sep, userinfo = head.partition("://")
    user = userinfo.split(":", 1)[0] if sep else ""
    return f"{scheme}://{user}:***@{tail}" if sep else f"***@{tail}"


def _number(path: Path, name: str, value: object) -> float:
    """A finite number, not a boolean (TOML has ``inf``, ``nan`` and ``true``)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise AgentSettingsError(f"{path}: {name!r} must be a finite number, not {value!r}")
    return float(value)


def load_agent_settings(data_dir: Path, **overrides: Any) -> AgentSettings:
    path = data_dir / "agent.toml"
    raw: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise AgentSettingsError(f"{path}: {reason}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
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
    for name, check in (("cloud_url", check_cloud_url), ("proxy", check_proxy_url)):
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, str):
                raise AgentSettingsError(f"{path}: setting {name!r} must be a string")
            try:
                values[name] = check(value)
            except ValueError as exc:
                raise AgentSettingsError(f"{path}: {name!r}: {exc}") from None
    if "trust_env" in raw:
        trust = raw.pop("trust_env")
        if not isinstance(trust, bool):
            raise AgentSettingsError(
                f"{path}: 'trust_env' must be true or false (unquoted), not {trust!r}"
            )
        values["trust_env"] = trust
    for name, top in (
        ("spool_max_bytes", None),
        ("upload_batch", MAX_UPLOAD_BATCH),
        ("upload_window", MAX_UPLOAD_WINDOW),
    ):
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AgentSettingsError(f"{path}: {name!r} must be a positive integer")
            if top is not None and value > top:
                raise AgentSettingsError(f"{path}: {name!r} must be at most {top:,}")
            values[name] = value
    for name in (
        "longpoll_wait",
        "poll_interval",
        "probe_interval",
        "unstable_after",
        "health_interval",
        "preflight_interval",
        "spool_max_age",
    ):
        if name in raw:
            seconds = _number(path, name, raw.pop(name))
            if seconds <= 0:
                raise AgentSettingsError(f"{path}: {name!r} must be a positive number of seconds")
            values[name] = seconds
    if "reconnect_cap" in raw:
        cap = _number(path, "reconnect_cap", raw.pop("reconnect_cap"))
        if cap < 1:
            raise AgentSettingsError(f"{path}: 'reconnect_cap' must be a number of seconds >= 1")
        values["reconnect_cap"] = cap
    if raw:
        raise AgentSettingsError(f"{path}: unknown settings {sorted(raw)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return AgentSettings(**values)
