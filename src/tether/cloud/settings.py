"""Cloud deployment settings: read once from TOML (and a few env vars), validated, frozen.

Example ``cloud.toml``::

    data_dir = "/var/lib/tether"
    hostname = "tether.example.com"     # what gateways dial; the manifest is generated from it
    listen_host = "0.0.0.0"
    listen_port = 443
    public_port = 443                   # what gateways dial, if a load balancer listens elsewhere
    database_url = "postgresql+asyncpg://tether@db/tether"   # default: SQLite in data_dir
    database_connections = 90           # PostgreSQL connections of all workers together
    ingest_queue_observations = 1000000 # waiting for a group commit, per process

    [link]
    heartbeat_interval = 30
    last_seen_interval = 300            # how often last_seen is written for WebSocket links

    [hostnames]            # optional: one hostname per service area
    ingest = "ingest.tether.example.com"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_CONNECTIONS_PER_WORKER",
    "CloudSettings",
    "SettingsError",
    "connections_per_worker",
    "load_settings",
]


#: PostgreSQL connections one cloud process needs at least: its LISTEN connection, the two
#: ingest writers', and two for requests and the link.
MIN_CONNECTIONS_PER_WORKER = 5

#: The smallest ingest queue: a batch of the agent's default size, many times over.
MIN_INGEST_QUEUE = 10_000

#: The settings read from the ``[link]`` table.
LINK_SETTINGS = frozenset({"heartbeat_interval", "last_seen_interval"})


class SettingsError(ValueError):
    """A setting is missing, of the wrong type or out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class CloudSettings:
    data_dir: Path = Path("var/cloud")
    hostname: str = "localhost"
    extra_hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    #: The port gateways dial when a load balancer listens on another (default: listen_port).
    public_port: int | None = None
    database_url: str | None = None
    #: PostgreSQL connections the cloud may hold, all its worker processes together: each
    #: worker gets an equal share (its LISTEN connection included). Keep it under the server's
    #: ``max_connections``, less what other clients need. SQLite ignores it.
    database_connections: int = 90
    #: Observations a cloud process holds waiting for a group commit at most; past it, links
    #: wait before they send more (about 200 bytes of memory each).
    ingest_queue_observations: int = 1_000_000
    heartbeat_interval: float = 30.0
    #: How often the cloud writes ``last_seen`` of the gateways it holds a WebSocket link of
    #: (the link itself proves they are alive within 2.5 heartbeats; the store hears of it
    #: this often).
    last_seen_interval: float = 300.0
    command_ttl: timedelta = timedelta(hours=1)
    #: Command kinds this fleet's agents run beyond the built-in table (handlers a deployment
    #: added to its agents); the API refuses any other kind.
    extra_command_kinds: tuple[str, ...] = ()
    certificate_lifetime: timedelta = timedelta(days=90)
    enrollment_token_ttl: timedelta = timedelta(hours=24)
    max_frame: int = 1 << 20
    hostnames: dict[str, str] = field(default_factory=dict)
    #: Peers (IP addresses) allowed to pass a TLS-terminated client certificate in a header.
    trusted_proxies: tuple[str, ...] = ()
    client_cert_header: str = "X-Tether-Client-Cert"
    workers: int = 1
    health_raw_retention: timedelta = timedelta(hours=48)
    health_retention: timedelta = timedelta(days=90)

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tether.db').resolve()}"

    @property
    def gateway_port(self) -> int:
        return self.public_port or self.listen_port

    @property
    def public_url(self) -> str:
        port = "" if self.gateway_port == 443 else f":{self.gateway_port}"
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"https://{host}{port}"

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"


_DURATIONS = {
    "command_ttl",
    "certificate_lifetime",
    "enrollment_token_ttl",
    "health_raw_retention",
    "health_retention",
}


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name in _DURATIONS:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return timedelta(seconds=value)
        raise SettingsError(f"setting {name!r}: expected a positive number of seconds")
    if isinstance(default, Path):
        if not isinstance(value, str):
            raise SettingsError(f"setting {name!r}: expected a path string")
        return Path(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"setting {name!r}: expected a list of strings")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise SettingsError(f"setting {name!r}: expected a table of strings")
        return dict(value)
    if isinstance(default, bool) or default is None:
        return value
    if isinstance(default, int | float) and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        raise SettingsError(f"setting {name!r}: expected a number")
    if isinstance(default, str) and not isinstance(value, str):
        raise SettingsError(f"setting {name!r}: expected a string")
    return value


def load_settings(path: Path | None = None, **overrides: Any) -> CloudSettings:
    """Settings from *path* (TOML), then ``TETHER_DATABASE_URL``, then explicit *overrides*."""
    base = CloudSettings()
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from None
        link = raw.pop("link", {})
        if not isinstance(link, dict):
            raise SettingsError(f"{path}: [link] must be a table")
        for name in link:
            if name not in LINK_SETTINGS:
                raise SettingsError(f"{path}: unknown setting {name!r} in [link]")
            raw[name] = link[name]
    known = {f.name: f for f in fields(CloudSettings)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise SettingsError(f"{path}: unknown setting {name!r}")
        values[name] = _coerce(name, value, getattr(base, name))
    if env_db := os.environ.get("TETHER_DATABASE_URL"):
        values["database_url"] = env_db
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    settings = replace(base, **values)
    if not 0 < settings.listen_port < 65536:
        raise SettingsError("setting 'listen_port': expected 1..65535")
    if settings.public_port is not None and (
        isinstance(settings.public_port, bool)
        or not isinstance(settings.public_port, int)
        or not 0 < settings.public_port < 65536
    ):
        raise SettingsError("setting 'public_port': expected 1..65535")
    if settings.heartbeat_interval < 1:
        raise SettingsError("setting 'heartbeat_interval': expected at least 1 second")
    if not 1 <= settings.last_seen_interval <= 86_400:
        raise SettingsError("setting 'last_seen_interval': expected 1 to 86400 seconds")
    _whole("database_connections", settings.database_connections)
    connections_per_worker(settings, settings.workers)
    _whole("ingest_queue_observations", settings.ingest_queue_observations, MIN_INGEST_QUEUE)
    return settings


def _whole(name: str, value: object, minimum: int | None = None) -> None:
    """Refuse a setting that is not a whole number (of at least *minimum*)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
    ):
        at_least = "" if minimum is None else f" of at least {minimum:,}"
        raise SettingsError(f"setting {name!r}: expected a whole number{at_least}")


def connections_per_worker(settings: CloudSettings, workers: int) -> int:
    """Each of *workers* processes' share of ``database_connections``; a
    :class:`SettingsError` if a share would be too small to serve."""
    share = settings.database_connections // max(1, workers)
    if share < MIN_CONNECTIONS_PER_WORKER:
        need = MIN_CONNECTIONS_PER_WORKER * max(1, workers)
        raise SettingsError(
            f"setting 'database_connections': {settings.database_connections} gives each of "
            f"{workers} worker processes {share} PostgreSQL connections; each needs at least "
            f"{MIN_CONNECTIONS_PER_WORKER}: set it to {need} or more (and PostgreSQL's "
            "max_connections above that), or run fewer workers"
        )
    return share
