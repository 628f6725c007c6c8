"""The HTTPS tiers on the agent side: long-poll (tier 2) and periodic poll (tier 3).

Each exchange is one ``POST /link/exchange`` on the same port and hostname as the WebSocket:
the body carries the agent's pending messages, the response the cloud's answers and whatever
waits for the gateway. On tier 2 one request is always held open (``wait``) so commands arrive
at once; on tier 3 the agent asks every ``interval`` seconds (with jitter). On both, anything the
agent has to say (a command's outcome, telemetry, an ack) is posted straight away.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time

import aiohttp

from tether import __version__
from tether.aio import cancel_and_wait
from tether.gateway.link import (
    ERROR_HEADER,
    LinkCore,
    LinkEnded,
    LinkError,
    LinkRefused,
    certificate_refusal,
    proxy_error,
    proxy_for,
    proxy_unreachable,
    untrusted_server,
)
from tether.protocol.codec import SUPPORTED_VERSIONS, FrameDecoder, encode_frames
from tether.protocol.errors import ProtocolError
from tether.protocol.messages import CloseCode, Hello, Message, Welcome

__all__ = ["HttpTier"]

FRAMES = "application/x-tether-frames"
#: Consecutive long-polls cut short before the agent gives up on tier 2.
CUT_LIMIT = 2


class HttpTier:
    def __init__(
        self,
        *,
        mode: str,
        url: str,
        ssl_context: ssl.SSLContext,
        core: LinkCore,
        boot_id: str,
        max_frame: int,
        proxy: str | None,
        trust_env: bool,
        wait: float = 25.0,
        interval: float = 900.0,
        jitter: float = 0.1,
        tier_reason: str = "",
        request_timeout: float = 30.0,
    ) -> None:
        if mode not in {"long-poll", "poll"}:
            raise ValueError(f"unknown HTTPS tier {mode!r}")
        self.name = mode
        self.cloud_url = url.rstrip("/")
        self.url = self.cloud_url + "/link/exchange"
        self.ssl_context = ssl_context
        self.core = core
        self.boot_id = boot_id
        self.max_frame = max_frame
        self.proxy = proxy
        self.trust_env = trust_env
        self.wait = wait
        self.interval = interval
        self.jitter = jitter
        self.tier_reason = tier_reason
        self.request_timeout = request_timeout
        self._outbox: list[Message] = []
        self._has_mail = asyncio.Event()
        self._closing: tuple[str, str] | None = None
        self._closed = asyncio.Event()
        self._rng = random.Random()

    async def close(self, code: str = CloseCode.GOING_AWAY, reason: str = "") -> None:
        self._closing = (code, reason)
        self._closed.set()

    def _send(self, message: Message) -> None:
        self._outbox.append(message)
        self._has_mail.set()

    async def _exchange(
        self, http: aiohttp.ClientSession, messages: list[Message], wait: float
    ) -> list[Message]:
        timeout = aiohttp.ClientTimeout(total=wait + self.request_timeout)
        try:
            async with http.post(
                self.url,
                params={"tier": self.name, "wait": f"{wait:g}"},
                data=encode_frames(messages),
                headers={"Content-Type": FRAMES},
                ssl=self.ssl_context,
                proxy=self.proxy,
                timeout=timeout,
            ) as response:
                if response.status in (401, 403):
                    reason = response.headers.get(ERROR_HEADER) or (await response.text()).strip()
                    raise LinkRefused(response.status, reason)
                if response.status != 200:
                    # The cloud explains in plain text; a proxy's HTML error page is no reason.
                    detail = response.reason or ""
                    if response.content_type == "text/plain":
                        detail = (await response.text())[:200].strip()
                    raise LinkError(
                        f"{self.name} exchange answered {response.status}: {detail}",
                        tier_specific=True,
                    )
                body = await response.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise await untrusted_server(
                exc,
                cloud_url=self.cloud_url,
                ssl_context=self.ssl_context,
                proxy=self.proxy,
                trust_env=self.trust_env,
            ) from None
        except aiohttp.ClientHttpProxyError as exc:
            raise proxy_error(exc, proxy_for(self.url, self.proxy, self.trust_env)) from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise proxy_unreachable(exc, proxy_for(self.url, self.proxy, self.trust_env)) from None
        except aiohttp.ClientConnectorError as exc:
            raise certificate_refusal(exc) or LinkError(f"cannot reach {self.url}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if (refused := certificate_refusal(exc)) is not None:
                raise refused from None
            raise LinkError(
                f"{self.name} exchange broke: {exc or type(exc).__name__}", tier_specific=True
            ) from None
        decoder = FrameDecoder(max_frame=max(self.max_frame, len(body)))
        try:
            replies = decoder.feed(body)
            decoder.finish()
        except ProtocolError as exc:
            raise LinkError(f"malformed answer from the cloud: {exc}", tier_specific=True) from None
        return replies

    async def _dispatch(self, replies: list[Message]) -> None:
        for message in replies:
            if not isinstance(message, Welcome):
                await self.core.on_message(message)

    async def run_once(self) -> LinkEnded:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=4)
        async with aiohttp.ClientSession(trust_env=self.trust_env, connector=connector) as http:
            hello = Hello(
                protocol_versions=list(SUPPORTED_VERSIONS),
                agent_version=__version__,
                max_frame=self.max_frame,
                boot_id=self.boot_id,
                tier=self.name,
                tier_reason=self.tier_reason,
            )
            hello_at = time.monotonic()
            first = await self._exchange(http, [hello], 0.0)
            round_trip = time.monotonic() - hello_at
            welcome = next((m for m in first if isinstance(m, Welcome)), None)
            if welcome is None:
                raise LinkError("the cloud did not welcome the agent", tier_specific=True)
            self.core.on_link_open(self._send, self.name, welcome=welcome, round_trip=round_trip)
            try:
                await self._dispatch(first)
                loop = asyncio.get_running_loop()
                tasks: list[asyncio.Task[object]] = [
                    loop.create_task(self._sender(http)),
                    loop.create_task(self._receiver(http)),
                    loop.create_task(self._closed.wait()),
                ]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait(*tasks)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
            finally:
                self.core.on_link_closed()
        code, reason = self._closing or (CloseCode.GOING_AWAY, "")
        return LinkEnded(code, reason, False, True, time.monotonic() - started)

    async def _sender(self, http: aiohttp.ClientSession) -> object:
        while True:
            await self._has_mail.wait()
            self._has_mail.clear()
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    replies = await self._exchange(http, batch, 0.0)
                except LinkError:
                    self._outbox[:0] = batch  # nothing durable is lost, but keep the order
                    raise
                await self._dispatch(replies)

    async def _receiver(self, http: aiohttp.ClientSession) -> object:
        cuts = 0
        while True:
            if self.name == "poll":
                spread = self.interval * self.jitter
                await asyncio.sleep(max(1.0, self.interval + self._rng.uniform(-spread, spread)))
                await self._dispatch(await self._exchange(http, [], 0.0))
                continue
            began = time.monotonic()
            try:
                replies = await self._exchange(http, [], self.wait)
            except LinkError as exc:
                if not exc.tier_specific:
                    raise
                cuts += 1
                if cuts >= CUT_LIMIT:
                    raise LinkError(
                        f"long-polls cut after {time.monotonic() - began:.1f} s of the "
                        f"{self.wait:.0f} s wait ({exc})",
                        tier_specific=True,
                    ) from None
                continue
            cuts = 0
            await self._dispatch(replies)
