"""HTTP proxies: ``HTTPS_PROXY`` / ``NO_PROXY`` semantics, CONNECT tunnels, and their failures.

Environment semantics (curl's, which most gateway software follows):

* the proxy for ``https`` targets comes from ``https_proxy``, then ``HTTPS_PROXY``, then
  ``all_proxy`` / ``ALL_PROXY``; a value without a scheme means ``http://``;
* ``no_proxy`` / ``NO_PROXY`` is a comma- (or space-) separated list: ``*`` bypasses the proxy
  for every host; a name bypasses it for itself and every name under it (a leading ``.`` or
  ``*.`` is ignored); an IP address or CIDR block bypasses matching address literals; an entry
  with ``:port`` applies to that port only.

Passwords never leave this module unredacted: :meth:`ProxyURL.redacted` is what reports show.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import urllib.parse
from collections.abc import Mapping
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


@dataclass(frozen=True)
class _Bypass:
    host: str | None = None  # a name (suffix match) …
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # … or addresses
    port: int | None = None
    everything: bool = False

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        if self.host is None:
            return False
        name = host.lower().rstrip(".")
        return name == self.host or name.endswith("." + self.host)


def _parse_no_proxy(value: str) -> tuple[_Bypass, ...]:
    entries: list[_Bypass] = []
    for raw in value.replace(" ", ",").split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "*":
            entries.append(_Bypass(everything=True))
            continue
        port: int | None = None
        if item.startswith("["):  # [v6]:port
            addr, _, rest = item[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
            item = addr
        elif item.count(":") == 1:
            name, _, port_text = item.partition(":")
            if port_text.isdigit():
                item, port = name, int(port_text)
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            item = item.removeprefix("*").removeprefix(".").rstrip(".")
            if item:
                entries.append(_Bypass(host=item, port=port))
        else:
            entries.append(_Bypass(network=network, port=port))
    return tuple(entries)


@dataclass(frozen=True)
class ProxySettings:
    """Which proxy an HTTPS connection to a given host uses (``None``: go direct)."""

    https_proxy: ProxyURL | None = None
    no_proxy: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxySettings:
        """Read ``https_proxy`` & co. from ``environ``; raises ValueError on a bad URL."""
        value = ""
        for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            value = environ.get(name, "").strip()
            if value:
                break
        no_proxy = environ.get("no_proxy", "") or environ.get("NO_PROXY", "")
        return cls(https_proxy=parse_proxy_url(value) if value else None, no_proxy=no_proxy)

    def bypasses(self, host: str, port: int) -> bool:
        """Whether ``NO_PROXY`` sends ``host:port`` direct."""
        return any(b.matches(host, port) for b in _parse_no_proxy(self.no_proxy))

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
