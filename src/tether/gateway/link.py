"""The WebSocket tier on the agent side: one mutual-TLS WebSocket carrying every channel.

Thin glue around :class:`~tether.protocol.session.LinkSession`. The agent's core decides what a
message means; this module only connects, feeds frames, keeps time and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl

from tether import __version__
from tether.aio import cancel_and_wait
from tether.protocol.messages import CloseCode, Message, Welcome
from tether.protocol.session import (
    FrameRejected,
    LinkClosed,
    LinkOpened,
    LinkSession,
    Role,
    SessionState,
)

__all__ = [
    "CERTIFICATE_ALERTS",
    "NTP_FIX",
    "CertificateRefused",
    "ClockWrong",
    "LinkCore",
    "LinkEnded",
    "LinkError",
    "LinkRefused",
    "TlsUntrusted",
    "WebSocketTier",
    "certificate_refusal",
    "clean_error",
    "proxy_for",
    "proxy_unreachable",
    "untrusted_server",
]


#: Response header in which the cloud says why it refused the link.
ERROR_HEADER = "X-Tether-Error"

# aiohttp's connection errors quote its connection key, whose TLS context prints with its
# address ("ssl:<ssl.SSLContext object at 0x7f…>"): the same failure then never reads the same.
_SSL_KEY = re.compile(r" ssl:(?:<[^<>]*>|default|True|False|None)")
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def clean_error(text: str) -> str:
    """*text* without object addresses, so that one failure always reads the same."""
    return _OBJECT_REPR.sub(r"<\1>", _SSL_KEY.sub("", text))


class LinkError(Exception):
    """The link could not be established or broke (transient: retry with backoff).

    ``tier_specific`` says the failure is this tier's own (an upgrade stripped by a proxy, a
    long-poll cut short) rather than the cloud being unreachable: only then does the agent move
    down a tier.
    """

    def __init__(self, message: str, *, tier_specific: bool = False) -> None:
        super().__init__(clean_error(message))
        self.tier_specific = tier_specific


class LinkRefused(LinkError):
    """The cloud refused this gateway (HTTP 401/403): revoked or unknown certificate; or a
    proxy refused the agent (407 wrong credentials, 403 CONNECT denied)."""

    def __init__(self, status: int, message: str, *, by: str = "cloud") -> None:
        super().__init__(f"{by} refused the link ({status}): {message}")
        self.status = status
        #: The cloud said this gateway or its certificate is revoked: no retry can succeed.
        self.revoked = by == "cloud" and status in (401, 403) and "revoked" in message.lower()


class CertificateRefused(LinkRefused):
    """The cloud's TLS refused this gateway's client certificate with an alert, before any
    HTTP (``status`` is 0): not issued by the platform CA, expired, or not matching the key."""

    def __init__(self, alert: str, meaning: str) -> None:
        LinkError.__init__(
            self,
            f"the cloud refused this gateway's certificate during the TLS handshake "
            f"({alert.lower().replace('_', ' ')}): {meaning}; enroll the gateway again "
            "(tether gateway enroll) with a new enrollment token",
        )
        self.status = 0
        self.alert = alert
        self.revoked = False


#: The TLS alerts (OpenSSL's reason names) by which a server refuses a client certificate.
CERTIFICATE_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "it was not issued by this cloud's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the cloud could not accept it",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired (or is not valid yet: check the clock)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it is revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the cloud could not verify it",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "it is not a gateway (client) certificate",
    "TLSV1_ALERT_CERTIFICATE_REQUIRED": "the agent sent none",
    "TLSV1_ALERT_DECRYPT_ERROR": "it does not match the agent's private key",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def certificate_refusal(exc: BaseException) -> CertificateRefused | None:
    """The refusal of our client certificate that *exc* (or what caused it) carries, if any.

    aiohttp re-raises a connection's TLS error under its own classes, sometimes keeping only the
    message, so the alert is looked for by type and by OpenSSL's ``[SSL: REASON]`` text.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        reasons: list[str] = []
        reason = getattr(current, "reason", None)  # set on the SSLErrors OpenSSL raises
        if isinstance(current, ssl.SSLError) and isinstance(reason, str):
            reasons.append(reason)
        reasons.extend(_SSL_REASON.findall(str(current)))
        for reason in reasons:
            if reason in CERTIFICATE_ALERTS:
                return CertificateRefused(reason, CERTIFICATE_ALERTS[reason])
        for linked in (current.__cause__, current.__context__, getattr(current, "os_error", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return None


class TlsUntrusted(LinkError):
    """The server's certificate does not chain to the pinned platform CA: interception?"""


class ClockWrong(LinkError):
    """The server's certificate is outside its validity period by the host clock: the clock
    is wrong (``offset`` seconds, when the cloud's clock could be read), or the cloud's
    certificate really is out of date (``offset`` near zero)."""

    def __init__(self, message: str, offset: float | None) -> None:
        super().__init__(message)
        self.offset = offset


#: OpenSSL verify codes for a certificate outside its validity period.
_NOT_YET_VALID, _EXPIRED = 9, 10
#: How an operator fixes a wrong host clock (said wherever the agent finds one).
NTP_FIX = (
    "set the clock and keep it synchronized (NTP: `timedatectl set-ntp true`, and allow "
    "UDP 123 to the site's NTP server)"
)


async def untrusted_server(
    exc: aiohttp.ClientConnectorCertificateError,
    *,
    cloud_url: str,
    ssl_context: ssl.SSLContext,
    proxy: str | None,
    trust_env: bool,
) -> LinkError:
    """What TLS refusing the server's certificate means.

    A certificate outside its validity period was still verified up to the pinned CA (OpenSSL
    builds the chain before it checks dates), so no interception is involved: the host clock
    or the cloud's certificate is wrong, and the cloud's ``Date`` tells which.
    """
    error = exc.certificate_error
    code = getattr(error, "verify_code", None)
    if code not in (_NOT_YET_VALID, _EXPIRED):
        return TlsUntrusted(
            f"the server's certificate is not from the platform CA ({error}); a TLS-inspecting "
            "proxy may be intercepting: exempt this hostname from decryption"
        )
    # The clock check's code is loaded only when a clock looks wrong.
    from tether.gateway.timesync import cloud_clock_offset, describe_offset
    from tether.netcheck.timecheck import MAX_OFFSET

    state = "not valid yet" if code == _NOT_YET_VALID else "expired"
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    offset = await cloud_clock_offset(cloud_url, ssl_context, proxy=proxy, trust_env=trust_env)
    if offset is None:
        return ClockWrong(
            f"the cloud's certificate is {state} by this host's clock ({now}): the host clock "
            f"is probably wrong; {NTP_FIX}",
            None,
        )
    if abs(offset) <= MAX_OFFSET:
        return ClockWrong(
            f"the cloud's certificate is {state} (this host's clock, {now}, agrees with the "
            "cloud's): the cloud's TLS certificate must be renewed",
            offset,
        )
    direction = "behind" if offset > 0 else "ahead of"
    return ClockWrong(
        f"the host clock is wrong: it reads {now}, {describe_offset(offset)} {direction} the "
        f"cloud's, so the cloud's certificate looks {state}; {NTP_FIX}",
        offset,
    )


def proxy_for(url: str, proxy: str | None, trust_env: bool) -> str | None:
    """The proxy a request to *url* goes through (the setting, else the environment's when
    *trust_env*), without its credentials; None when the request goes direct."""
    if proxy is None and trust_env:
        with contextlib.suppress(LookupError):
            proxy = str(aiohttp.helpers.get_env_proxy_for_url(yarl.URL(url))[0])
    if not proxy:
        return None
    return str(yarl.URL(proxy).with_user(None))


def proxy_unreachable(exc: aiohttp.ClientProxyConnectionError, proxy: str | None) -> LinkError:
    """Connecting to the proxy itself failed (its host, port, or the proxy is down)."""
    reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
    return LinkError(f"cannot reach the proxy {proxy or '(from the environment)'}: {reason}")


@dataclass(frozen=True, slots=True)
class LinkEnded:
    code: str
    reason: str
    by_peer: bool
    opened: bool
    duration: float


class LinkCore(Protocol):
    """What a tier needs from the agent's core."""

    def on_link_open(
        self, send: Callable[[Message], None], tier: str, *, welcome: Welcome, round_trip: float
    ) -> None:
        """The link opened with *welcome*, which came *round_trip* seconds after the agent's
        Hello left (the cloud stamped its ``server_time`` somewhere in between)."""

    async def on_message(self, message: Message) -> None: ...

    def on_link_closed(self) -> None: ...


def proxy_error(exc: aiohttp.ClientHttpProxyError, proxy: str | None = None) -> LinkError:
    """Say what a proxy's refusal means, naming the proxy (*proxy*, without credentials)."""
    named = f" (proxy {proxy})" if proxy else ""
    if exc.status == 407:
        return LinkRefused(
            407,
            "the proxy requires authentication or refused the credentials: set them in "
            f"HTTPS_PROXY (http://user:password@proxy:port) or the agent's proxy setting{named}",
            by="proxy",
        )
    if exc.status == 403:
        return LinkRefused(
            403,
            "the proxy refuses CONNECT to the cloud: ask its admins to allow "
            f"this hostname on port 443{named}",
            by="proxy",
        )
    return LinkError(f"the proxy{named} answered {exc.status} to CONNECT: {exc.message}")


async def probe_websocket(
    url: str,
    ssl_context: ssl.SSLContext,
    *,
    proxy: str | None,
    trust_env: bool,
    within: float = 15.0,
) -> bool:
    """True if a WebSocket upgrade to the cloud completes now (the cloud closes it at once)."""
    client_timeout = aiohttp.ClientTimeout(total=within)
    try:
        async with aiohttp.ClientSession(trust_env=trust_env, timeout=client_timeout) as http:
            ws = await http.ws_connect(
                url.rstrip("/") + "/link?probe=1",
                ssl=ssl_context,
                proxy=proxy,
                autoping=True,
                heartbeat=None,
                compress=0,
            )
            await ws.close()
            return True
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


class WebSocketTier:
    name = "ws"

    def __init__(
        self,
        *,
        url: str,
        ssl_context: ssl.SSLContext,
        core: LinkCore,
        boot_id: str,
        max_frame: int,
        proxy: str | None,
        trust_env: bool,
        connect_timeout: float = 20.0,
        tier_reason: str = "",
    ) -> None:
        self.tier_reason = tier_reason
        self.cloud_url = url.rstrip("/")
        self.url = self.cloud_url + "/link"
        self.ssl_context = ssl_context
        self.core = core
        self.boot_id = boot_id
        self.max_frame = max_frame
        self.proxy = proxy
        self.trust_env = trust_env
        self.connect_timeout = connect_timeout
        self.session: LinkSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._wake = asyncio.Event()

    async def close(self, code: str = CloseCode.GOING_AWAY, reason: str = "") -> None:
        if self.session is not None and self.session.state is not SessionState.CLOSED:
            self.session.close(code, reason)
            self._wake.set()

    def _proxy_named(self) -> str | None:
        return proxy_for(self.url, self.proxy, self.trust_env)

    async def run_once(self) -> LinkEnded:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with aiohttp.ClientSession(trust_env=self.trust_env, timeout=timeout) as http:
            try:
                ws = await asyncio.wait_for(
                    http.ws_connect(
                        self.url,
                        ssl=self.ssl_context,
                        proxy=self.proxy,
                        autoping=True,
                        heartbeat=None,
                        compress=0,
                        max_msg_size=2 * self.max_frame + 64,
                    ),
                    self.connect_timeout,
                )
            except aiohttp.ClientConnectorCertificateError as exc:
                raise await untrusted_server(
                    exc,
                    cloud_url=self.cloud_url,
                    ssl_context=self.ssl_context,
                    proxy=self.proxy,
                    trust_env=self.trust_env,
                ) from None
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    reason = exc.headers.get(ERROR_HEADER) if exc.headers else None
                    raise LinkRefused(exc.status, reason or exc.message) from None
                raise LinkError(
                    f"WebSocket upgrade failed ({exc.status}): {exc.message}", tier_specific=True
                ) from None
            except aiohttp.ClientHttpProxyError as exc:
                raise proxy_error(exc, self._proxy_named()) from None
            except aiohttp.ClientProxyConnectionError as exc:
                raise proxy_unreachable(exc, self._proxy_named()) from None
            except aiohttp.ClientConnectorError as exc:
                raise certificate_refusal(exc) or LinkError(
                    f"cannot reach {self.url}: {exc}"
                ) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if (refused := certificate_refusal(exc)) is not None:
                    raise refused from None
                # Reached the network but the upgrade did not complete: something in the path
                # (a proxy, DPI) interferes with WebSocket.
                raise LinkError(
                    f"WebSocket upgrade to {self.url} broke: {exc or type(exc).__name__}",
                    tier_specific=True,
                ) from None
            self._ws = ws
            try:
                return await self._serve(ws, started)
            finally:
                self._ws = None
                with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError):
                    await ws.close()

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, started: float) -> LinkEnded:
        hello_at = time.monotonic()  # the Hello is queued now, sent by the writer at once
        session = LinkSession(
            Role.CLIENT,
            now=hello_at,
            agent_version=__version__,
            boot_id=self.boot_id,
            max_frame=self.max_frame,
            tier=self.name,
            tier_reason=self.tier_reason,
        )
        self.session = session
        opened = False
        writer = asyncio.get_running_loop().create_task(self._writer(ws, session))
        end: LinkClosed | None = None
        try:
            self._wake.set()
            while end is None:
                if session.state is SessionState.CLOSED:
                    end = LinkClosed(
                        session.close_code or CloseCode.NORMAL, session.close_reason, False
                    )
                    break
                # aiohttp reads a timeout of 0 as "none": never pass it, or a deadline that is
                # due now would wait for a frame that may never come.
                timeout = max(0.001, session.next_deadline() - time.monotonic())
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    session.tick(time.monotonic())
                    self._wake.set()
                    continue
                if msg.type is aiohttp.WSMsgType.BINARY:
                    session.receive_frame(msg.data, now=time.monotonic())
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    session.receive_frame(msg.data.encode(), now=time.monotonic())
                else:
                    session.close(CloseCode.GOING_AWAY, f"connection {msg.type.name.lower()}")
                for event in session.events():
                    if isinstance(event, LinkOpened):
                        opened = True
                        self.core.on_link_open(
                            self._send,
                            self.name,
                            welcome=event.welcome,
                            round_trip=time.monotonic() - hello_at,
                        )
                    elif isinstance(event, LinkClosed):
                        end = event
                    elif isinstance(event, FrameRejected):
                        continue
                    else:
                        await self.core.on_message(event)  # type: ignore[arg-type]
                self._wake.set()
        finally:
            if opened:
                self.core.on_link_closed()
            await cancel_and_wait(writer)
            # Whatever is left (a Close frame, say) goes out before the socket closes.
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                for frame in session.data_to_send():
                    await ws.send_bytes(frame)
            self.session = None
        return LinkEnded(end.code, end.reason, end.by_peer, opened, time.monotonic() - started)

    def _send(self, message: Message) -> None:
        session = self.session
        if session is not None and session.state is SessionState.OPEN:
            session.send(message)
            self._wake.set()

    async def _writer(self, ws: aiohttp.ClientWebSocketResponse, session: LinkSession) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for frame in session.data_to_send():
                try:
                    await ws.send_bytes(frame)
                except (ConnectionError, aiohttp.ClientError, RuntimeError):
                    return
