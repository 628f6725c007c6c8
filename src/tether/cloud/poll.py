"""The HTTPS tiers on the cloud side: long-poll (tier 2) and periodic poll (tier 3).

One endpoint, ``POST /link/exchange``: the request body carries the gateway's frames (a
:class:`Hello` first on a new link, then command updates, telemetry batches, acks…), the response
body carries the cloud's answers followed by whatever waits for the gateway. With ``wait=N`` the
cloud holds the request up to N seconds until something arrives for the gateway (long-poll). The
messages are the WebSocket tier's and go through the same :class:`GatewayService`, so every
command and batch means the same thing on every tier.

Because an HTTP response can be lost without either side noticing, commands already delivered
but not started are delivered again on these tiers; the agent runs an id at most once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from tether.cloud.identity import IdentityError
from tether.cloud.service import hello_facts
from tether.cloud.state import STATE_KEY, CloudState
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.errors import ProtocolError
from tether.protocol.messages import ErrorReport, Hello, Message, Welcome

__all__ = ["FRAMES_CONTENT_TYPE", "MAX_WAIT", "exchange", "routes"]

log = logging.getLogger(__name__)

FRAMES_CONTENT_TYPE = "application/x-tether-frames"
MAX_WAIT = 55.0  # below the usual 60 s idle timeout of proxies and load balancers
TIERS = {"long-poll", "poll"}


async def exchange(request: web.Request) -> web.Response:
    state: CloudState = request.app[STATE_KEY]
    try:
        identity = await state.gateway_identity(request)
    except IdentityError as exc:
        log.warning("exchange refused from %s: %s", request.remote, exc.reason_text)
        raise
    gateway_id = identity.gateway_id
    tier = request.query.get("tier", "long-poll")
    if tier not in TIERS:
        raise web.HTTPBadRequest(text=f"tier must be one of {sorted(TIERS)}\n")
    try:
        wait = min(MAX_WAIT, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError:
        raise web.HTTPBadRequest(text="wait must be a number of seconds\n") from None
    decoder = FrameDecoder(max_frame=state.settings.max_frame)
    try:
        messages = decoder.feed(await request.read())
        decoder.finish()
    except ProtocolError as exc:
        raise web.HTTPBadRequest(text=f"malformed frames: {exc}\n") from None

    replies: list[Message] = []
    opened = False
    for message in messages:
        if isinstance(message, Hello):
            opened = True
            replies.append(
                Welcome(
                    protocol_version=1,
                    session_id=uuid.uuid4().hex,
                    gateway_id=gateway_id,
                    max_frame=min(state.settings.max_frame, max(1024, message.max_frame)),
                    heartbeat_interval=state.settings.heartbeat_interval,
                    server_time=time.time(),
                )
            )
            agent_version, reason = hello_facts(message)
            await state.links.opened(
                gateway_id,
                tier=tier,
                reason=reason,
                agent_version=agent_version,
                peer=request.remote,
            )
        else:
            replies.extend(await _answer(state, gateway_id, message))
    if not opened:
        await state.links.heard(gateway_id, tier=tier, peer=request.remote)
    outgoing = await state.service.outgoing(gateway_id, link_opened=opened, redeliver=True)
    if not replies and not outgoing and wait > 0:
        waiter = state.hub.waiter(gateway_id)
        try:
            await asyncio.wait_for(waiter.wait(), wait)
        except TimeoutError:
            pass
        finally:
            state.hub.forget_waiter(gateway_id, waiter)
        outgoing = await state.service.outgoing(gateway_id)
    return web.Response(body=encode_frames([*replies, *outgoing]), content_type=FRAMES_CONTENT_TYPE)


async def _answer(state: CloudState, gateway_id: str, message: Message) -> list[Message]:
    """The service's answer; a store failure refuses this one message (the gateway sends it
    again later), as on the WebSocket tier, not the whole exchange."""
    try:
        return await state.service.handle(gateway_id, message)
    except (SQLAlchemyError, OSError) as exc:
        log.error("gateway %s: %s not handled: %s", gateway_id, type(message).__name__, exc)
        return [
            ErrorReport(
                code="unavailable",
                message="the cloud could not store this message now; send it again later",
            )
        ]


def routes() -> list[web.RouteDef]:
    return [web.post("/link/exchange", exchange)]
