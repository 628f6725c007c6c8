"""TCP reachability: open a connection directly or through a proxy, and say why it failed.

The kinds of failure map to what the site's network did, which is what the fix depends on:

=================  ======================================  ===================================
kind               seen as                                 usually means
=================  ======================================  ===================================
``refused``        TCP RST (ECONNREFUSED)                  a firewall rejects, or no listener
``timeout``        no answer at all                        a firewall silently drops
``unreachable``    ICMP unreachable (EHOSTUNREACH)         a router or firewall rejects
``no-route``       ENETUNREACH                             no route on this machine
``local-policy``   EPERM / EACCES on connect               this machine's own firewall drops
``reset``          ECONNRESET after connecting             a middlebox tears the flow down
=================  ======================================  ===================================
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import ssl
from dataclasses import dataclass

from tether.netcheck.proxy import ProxyProtocolError, ProxyURL, connect_tunnel

__all__ = [
    "ConnectError",
    "ConnectFailure",
    "Connection",
    "classify",
    "close",
    "describe",
    "open_path",
    "open_tcp",
]

STREAM_LIMIT = 256 * 1024


class ConnectFailure(enum.StrEnum):
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    NO_ROUTE = "no-route"
    LOCAL_POLICY = "local-policy"
    RESET = "reset"
    OTHER = "error"


class ConnectError(Exception):
    """A TCP connection could not be opened to ``target`` (``to_proxy``: the proxy itself)."""

    def __init__(
        self, kind: ConnectFailure, target: str, detail: str = "", *, to_proxy: bool = False
    ) -> None:
        super().__init__(f"{target}: {kind.value}{': ' + detail if detail else ''}")
        self.kind = kind
        self.target = target
        self.detail = detail
        self.to_proxy = to_proxy


_ERRNO_KINDS = {
    errno.ECONNREFUSED: ConnectFailure.REFUSED,
    errno.EHOSTUNREACH: ConnectFailure.UNREACHABLE,
    errno.EHOSTDOWN: ConnectFailure.UNREACHABLE,
    errno.ENETUNREACH: ConnectFailure.NO_ROUTE,
    errno.EADDRNOTAVAIL: ConnectFailure.NO_ROUTE,
    errno.EPERM: ConnectFailure.LOCAL_POLICY,
    errno.EACCES: ConnectFailure.LOCAL_POLICY,
    errno.ECONNRESET: ConnectFailure.RESET,
    errno.EPIPE: ConnectFailure.RESET,
    errno.ETIMEDOUT: ConnectFailure.TIMEOUT,
}


def classify(exc: BaseException) -> ConnectFailure:
    if isinstance(exc, TimeoutError):
        return ConnectFailure.TIMEOUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ERRNO_KINDS.get(exc.errno, ConnectFailure.OTHER)
    if isinstance(exc, ConnectionError):
        return ConnectFailure.RESET
    return ConnectFailure.OTHER


def describe(kind: ConnectFailure, what: str, *, timeout: float) -> str:
    """One line saying what the failure means, for ``what`` (e.g. "TCP 443 to 192.0.2.1")."""
    return {
        ConnectFailure.REFUSED: f"{what} refused (TCP reset): a firewall rejects it, "
        "or nothing listens there",
        ConnectFailure.TIMEOUT: f"{what}: no answer in {timeout:g} s, packets are silently "
        "dropped (firewall)",
        ConnectFailure.UNREACHABLE: f"{what}: host unreachable (ICMP): a router or firewall "
        "rejects it",
        ConnectFailure.NO_ROUTE: f"{what}: no route from this machine",
        ConnectFailure.LOCAL_POLICY: f"{what}: blocked by this machine's own firewall "
        "(connect: operation not permitted)",
        ConnectFailure.RESET: f"{what}: connection reset by a middlebox",
        ConnectFailure.OTHER: f"{what} failed",
    }[kind]


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_tcp(
    address: str, port: int, *, to_proxy: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to ``address`` (an IP literal, or a name the system resolves).

    Bound it with ``asyncio.timeout``; OS-level failures become :class:`ConnectError`.
    """
    target = _authority(address, port)
    try:
        return await asyncio.open_connection(address, port, limit=STREAM_LIMIT)
    except OSError as exc:
        raise ConnectError(
            classify(exc), target, exc.strerror or str(exc), to_proxy=to_proxy
        ) from None


@dataclass
class Connection:
    """An open path to ``host:port`` (directly to ``address``, or tunnelled through ``proxy``)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    host: str
    port: int
    address: str | None
    proxy: ProxyURL | None

    async def close(self) -> None:
        await close(self.writer)


async def open_path(
    host: str,
    port: int,
    *,
    address: str | None,
    proxy: ProxyURL | None,
    timeout: float,  # noqa: ASYNC109 (each stage gets this bound, so a timeout names its stage)
) -> Connection:
    """Connect to ``host:port``: to ``address`` directly, or with CONNECT through ``proxy``.

    Raises :class:`ConnectError` (TCP to the target or to the proxy) or a ``ProxyError``.
    """
    if proxy is None:
        target = _authority(address or host, port)
        reader, writer = await _bounded_tcp(address or host, port, target, timeout, False)
        return Connection(reader, writer, host, port, address, None)
    proxy_target = _authority(proxy.host, proxy.port)
    reader, writer = await _bounded_tcp(proxy.host, proxy.port, proxy_target, timeout, True)
    try:
        async with asyncio.timeout(timeout):
            if proxy.scheme == "https":
                await _tls_to_proxy(writer, proxy)
            await connect_tunnel(reader, writer, proxy, host, port)
    except TimeoutError:
        await close(writer)
        raise ConnectError(
            ConnectFailure.TIMEOUT,
            proxy_target,
            "the proxy did not answer CONNECT",
            to_proxy=True,
        ) from None
    except BaseException:
        await close(writer)
        raise
    return Connection(reader, writer, host, port, None, proxy)


async def _tls_to_proxy(writer: asyncio.StreamWriter, proxy: ProxyURL) -> None:
    """An ``https://`` proxy is spoken to over TLS (verified like any server), as the agent does."""
    context = ssl.create_default_context()
    try:
        await writer.start_tls(context, server_hostname=proxy.host)
    except ssl.SSLError as exc:
        raise ProxyProtocolError(
            f"TLS to the https:// proxy {proxy.redacted()} failed ({exc.reason or exc}): if it "
            "is a plain HTTP proxy, write its URL with http://"
        ) from None
    except (ConnectionError, EOFError) as exc:
        raise ProxyProtocolError(
            f"the https:// proxy {proxy.redacted()} closed the TLS handshake ({exc})"
        ) from None


async def _bounded_tcp(
    address: str, port: int, target: str, seconds: float, to_proxy: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(seconds):
            return await open_tcp(address, port, to_proxy=to_proxy)
    except TimeoutError:
        raise ConnectError(ConnectFailure.TIMEOUT, target, to_proxy=to_proxy) from None


CLOSE_GRACE = 2.0


async def close(writer: asyncio.StreamWriter) -> None:
    """Close without waiting long for a peer that does not finish the (TLS) shutdown."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
