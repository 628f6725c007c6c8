"""HTTP proxies: which one the agent uses for a target, CONNECT tunnels, and their failures.

The decision is the agent's own, so the preflight never proves a path the agent does not take.
The agent's HTTP client (aiohttp with ``trust_env``) reads the environment through
:mod:`urllib.request`, and so does this module:

* the proxy for the agent's ``https://`` URLs is ``https_proxy`` (``HTTPS_PROXY`` when the
  lowercase name is absent); ``all_proxy`` and ``http_proxy`` are not used for them;
* a value without a scheme is no proxy URL to the agent (aiohttp raises ``InvalidURL``), and an
  ``https://`` proxy from the environment is ignored by it (it warns and connects directly);
* ``no_proxy`` / ``NO_PROXY`` is :func:`urllib.request.proxy_bypass_environment`'s: ``*`` alone
  bypasses everything; otherwise each comma-separated entry (leading dots ignored) bypasses that
  name and the names under it. It is compared with the host name only: ``*.example.com``,
  ``host:port`` entries and CIDR blocks match nothing.
* a proxy the agent is *configured* with (its ``proxy`` setting) is used for every target, and an
  ``https://`` one is spoken to over TLS before the CONNECT.

Passwords never leave this module unredacted: :meth:`ProxyURL.redacted` is what reports show.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tether.netcheck.http import HttpProtocolError, read_head

__all__ = [
    "ProxyAuthRequired",
    "ProxyError",
    "ProxyProtocolError",
    "ProxyRefused",
    "ProxySettings",
    "ProxyURL",
    "ProxyUpstreamFailed",
    "connect_tunnel",
    "environ_proxies",
    "parse_proxy_url",
]


class ProxyError(Exception):
    """The proxy did not open a tunnel; ``status`` is its HTTP status (0 if none)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ProxyAuthRequired(ProxyError):
    """407: the proxy wants credentials (or rejected the ones given)."""


class ProxyRefused(ProxyError):
    """403 (or another 4xx): the proxy's policy forbids this tunnel."""


class ProxyUpstreamFailed(ProxyError):
    """502/503/504: the proxy tried and could not reach the target itself."""


class ProxyProtocolError(ProxyError):
    """The proxy did not answer like an HTTP proxy."""


@dataclass(frozen=True)
class ProxyURL:
    """An HTTP proxy address with optional basic-authentication credentials."""

    host: str
    port: int
    scheme: str = "http"
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        """The URL as it may be shown or logged: the password replaced by ``***``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ""
        if self.username is not None:
            auth = urllib.parse.quote(self.username, safe="")
            if self.password is not None:
                auth += ":***"
            auth += "@"
        return f"{self.scheme}://{auth}{host}:{self.port}"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"ProxyURL({self.redacted()!r})"

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` header value, if credentials are configured."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_proxy_url(value: str) -> ProxyURL:
    """Parse ``[http://][user[:password]@]host[:port]``; the default port is 80 (curl: 1080)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported proxy scheme {scheme!r} (only http:// proxies)")
    if not parts.hostname:
        raise ValueError("proxy URL without a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad proxy port: {exc}") from None
    return ProxyURL(
        host=parts.hostname,
        port=port or (443 if scheme == "https" else 80),
        scheme=scheme,
        username=urllib.parse.unquote(parts.username) if parts.username is not None else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )


# What the agent's client calls (aiohttp: ``urllib.request.proxy_bypass``, which is this function
# on Linux); the stubs do not declare it.
_proxy_bypass_environment: Callable[[str, dict[str, str]], object] = (
    urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
)


def environ_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """:func:`urllib.request.getproxies_environment` for ``environ`` instead of ``os.environ``.

    ``{"https": "http://proxy:3128", "no": "localhost", …}``: every ``<scheme>_proxy`` variable,
    the lowercase name winning over the uppercase one, an empty lowercase one removing it.
    """
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        key = name.lower()
        if value and key.endswith("_proxy"):
            proxies[key[:-6]] = value
    if "REQUEST_METHOD" in environ:  # CVE-2016-1000110, as urllib does
        proxies.pop("http", None)
    for name, value in environ.items():
        if name.endswith("_proxy"):
            key = name.lower()[:-6]
            if value:
                proxies[key] = value
            else:
                proxies.pop(key, None)
    return proxies


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy an HTTPS connection to a given host uses (``None``: go direct).

    ``ignored`` says why a proxy variable that is set is not used (an ``https://`` proxy in the
    environment), for the report.
    """

    https_proxy: ProxyURL | None = None
    no_proxy: str = ""
    ignored: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxySettings:
        """The agent's proxy from ``environ``; raises ValueError for one it cannot use."""
        proxies = environ_proxies(environ)
        no_proxy = proxies.get("no", "")
        value = proxies.get("https", "").strip()
        if not value:
            return cls(no_proxy=no_proxy)
        if "://" not in value:
            raise ValueError(
                f"{value!r} has no scheme, and the agent's HTTP client rejects it as an invalid URL"
            )
        if value.split("://", 1)[0].lower() in ("https", "wss"):
            shown = parse_proxy_url(value).redacted()
            return cls(
                no_proxy=no_proxy,
                ignored=f"HTTPS_PROXY={shown} is an https:// proxy, which the agent ignores "
                "(it takes only http:// proxies from the environment): it connects directly",
            )
        return cls(https_proxy=parse_proxy_url(value), no_proxy=no_proxy)

    def bypasses(self, host: str, port: int) -> bool:
        """Whether ``NO_PROXY`` sends ``host`` direct (``port`` plays no part, as for the agent)."""
        if not self.no_proxy:
            return False
        return bool(_proxy_bypass_environment(host, {"no": self.no_proxy}))

    def proxy_for(self, host: str, port: int) -> ProxyURL | None:
        if self.https_proxy is None or self.bypasses(host, port):
            return None
        return self.https_proxy


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def connect_tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    proxy: ProxyURL,
    host: str,
    port: int,
) -> None:
    """Ask the proxy on this connection for a CONNECT tunnel to ``host:port``.

    Returns once the tunnel is open (2xx); raises a :class:`ProxyError` subclass otherwise.
    """
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    await writer.drain()
    try:
        status, reason, headers = await read_head(reader)
    except HttpProtocolError as exc:
        raise ProxyProtocolError(f"no HTTP answer to CONNECT: {exc}") from None
    if 200 <= status < 300:
        return
    detail = f"HTTP {status} {reason}".strip()
    squid_error = headers.get("x-squid-error")
    if squid_error:
        detail += f" ({squid_error})"
    if status == 407:
        realm = headers.get("proxy-authenticate", "")
        raise ProxyAuthRequired(
            f"{detail}; the proxy asks for {realm or 'credentials'}", status=status, reason=reason
        )
    if status in (502, 503, 504):
        raise ProxyUpstreamFailed(detail, status=status, reason=reason)
    if 400 <= status < 500:
        raise ProxyRefused(detail, status=status, reason=reason)
    raise ProxyProtocolError(
        f"unexpected answer to CONNECT: {detail}", status=status, reason=reason
    )
