"""The cloud service: one aiohttp application on one TLS port, and how to run it.

Routes on the one port:
    /.well-known/est/…                 EST enrollment (RFC 7030)
    /.well-known/tether/hello          an application-layer answer for preflight checks
    /link                              the gateway's WebSocket link (mutual TLS)
    /api/v1/…                          the operator API (bearer tokens), /api/v1/openapi.json
    /console/…                         the web console for people (login sessions)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from tether import __version__
from tether.aio import cancel_and_wait
from tether.cloud import api, console, est, poll, wsserver
from tether.cloud.accounts import Accounts
from tether.cloud.health import FleetCollector, HealthService, metrics_handler
from tether.cloud.identity import (
    ERROR_HEADER,
    GatewayIdentity,
    IdentityError,
    connection_identity,
)
from tether.cloud.ingest import IngestPipeline
from tether.cloud.link import (
    AiohttpChannel,
    LinkChannel,
    LinkHub,
    WebSocketLink,
    max_ws_message,
    serve_aiohttp_link,
)
from tether.cloud.service import GatewayService
from tether.cloud.settings import CloudSettings, connections_per_worker
from tether.cloud.state import STATE_KEY, CloudState
from tether.cloud.store import Store
from tether.cloud.store.health import HealthStore
from tether.cloud.store.links import LinkStore
from tether.cloud.store.notify import MISSED
from tether.cloud.store.telemetry import TelemetryStore
from tether.cloud.tls import server_ssl_context
from tether.cloud.tlsserver import TLSServer, start_tls_server
from tether.cloud.wsserver import FrontDoor, HandshakeRefused, LinkConnection, RequestHead
from tether.netreq import serve
from tether.netreq.model import Manifest, is_valid_hostname
from tether.netreq.own import DeploymentSettings, build_own_manifest
from tether.pki.ca import CertificateAuthority
from tether.protocol.messages import (
    CloseCode,
    Discovery,
    DropReport,
    HealthReport,
    LogBatch,
    NetcheckReport,
    TelemetryBatch,
)

__all__ = ["ADMIN_TOKEN_FILE", "build_app", "run", "server_context", "write_secret_file"]

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name, not a secret)
SWEEP_INTERVAL = 5.0
#: Seconds a connection may stay idle between two requests (aiohttp's own default is an
#: hour); above the longest long-poll hold, so an agent's next exchange finds it open.
KEEPALIVE_TIMEOUT = 75.0
#: Seconds a new connection has to send its first request head (see wsserver.HEAD_TIMEOUT).
HEAD_TIMEOUT = wsserver.HEAD_TIMEOUT
#: Links offered their waiting commands together after lost wake-ups (their lookups group).
CATCH_UP_CHUNK = 1000
#: A gateway on the periodic-poll tier counts as linked this long after its last poll.
POLL_GRACE = 2 * 900 + 120.0
SETTINGS_KEY = web.AppKey("settings", CloudSettings)


def write_secret_file(path: Path, content: str) -> None:
    """Write *content* to a new file readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def _bootstrap_admin(settings: CloudSettings, store: Store) -> None:
    """On first start, make an admin API token and leave it in a 0600 file (never in logs)."""
    if await store.list_api_tokens():
        return
    _, secret = await store.create_api_token(
        name="bootstrap token", role="admin", created_by="bootstrap", now=datetime.now(UTC)
    )
    path = settings.data_dir / ADMIN_TOKEN_FILE
    write_secret_file(path, secret + "\n")
    log.info("first start: admin API token written to %s", path)


def server_context(settings: CloudSettings, ca: CertificateAuthority) -> ssl.SSLContext:
    hostnames = [settings.hostname, *settings.extra_hostnames, *settings.hostnames.values()]
    creds = ca.server_credentials(settings.pki_dir, list(dict.fromkeys(hostnames)))
    return server_ssl_context(
        cert_path=creds.cert_path, key_path=creds.key_path, ca_path=settings.pki_dir / "ca.pem"
    )


def own_manifest(settings: CloudSettings, ca: CertificateAuthority) -> Manifest:
    """The network requirements of this deployment, from its hostnames and its CA."""
    spki = ca.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hostname = settings.hostname if is_valid_hostname(settings.hostname) else "localhost"
    return build_own_manifest(
        DeploymentSettings(
            hostname=hostname,
            port=settings.gateway_port,
            area_hostnames=dict(settings.hostnames),
            ca_spki_sha256=hashlib.sha256(spki).hexdigest(),
        )
    )


def _manifest_routes(manifest: Manifest) -> list[web.RouteDef]:
    tag = serve.etag(manifest)

    def respond(request: web.Request, body: bytes) -> web.Response:
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"ETag": tag, "Cache-Control": "max-age=300"},
        )

    async def whole(request: web.Request) -> web.Response:
        return respond(request, serve.manifest_body(manifest))

    async def version(request: web.Request) -> web.Response:
        return respond(request, serve.version_body(manifest))

    async def changes(request: web.Request) -> web.Response:
        try:
            body = serve.changes_body(manifest, request.query.get("since"))
        except serve.InvalidVersion as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        return web.Response(body=body, content_type="application/json")

    return [
        web.get(serve.MANIFEST_PATH, whole),
        web.get(serve.VERSION_PATH, version),
        web.get(serve.CHANGES_PATH, changes),
    ]


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"service": "tether", "version": __version__})


PROBE_HOLD = 600.0  # a preflight's idle-survival probe may hold a probe link this long
#: Probes (WebSocket and long-poll) held at once from one source address, and in all. They
#: need no certificate and each holds a descriptor for minutes: without a bound, anyone could
#: hold every descriptor the process has and leave no room for the gateways' links.
PROBES_PER_SOURCE = 32
PROBES_IN_ALL = 1024


class ProbeSlots:
    """How many probes each source holds now; refuses one past the bounds (503)."""

    def __init__(self, *, per_source: int, in_all: int) -> None:
        self.per_source = per_source
        self.in_all = in_all
        self._held: dict[str, int] = {}
        self._total = 0

    @contextlib.contextmanager
    def take(self, source: str | None) -> Iterator[None]:
        key = source or ""
        held = self._held.get(key, 0)
        if held >= self.per_source or self._total >= self.in_all:
            whose = "from this address" if held >= self.per_source else "in all"
            raise web.HTTPServiceUnavailable(
                text=f"too many probes held {whose} now; try again later\n",
                headers={"Retry-After": "10"},
            )
        self._held[key] = held + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


PROBE_SLOTS_KEY = web.AppKey("probe_slots", ProbeSlots)


async def link_probe(request: web.Request) -> web.StreamResponse:
    """A WebSocket that proves upgrades pass (no certificate needed; it carries nothing).

    Preflight checks and agents on an HTTPS tier open it; it answers pings (idle-survival
    probes) and ends when the client closes or after :data:`PROBE_HOLD` seconds.
    """
    with request.app[PROBE_SLOTS_KEY].take(request.remote):
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False, max_msg_size=4096)
        await ws.prepare(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROBE_HOLD):
                async for _ in ws:
                    pass  # data on a probe link means nothing; pings are answered by aiohttp
        await ws.close()
        return ws


async def long_poll_probe(request: web.Request) -> web.Response:
    """Hold a request ``wait`` seconds (at most as long as a long-poll exchange is held), then
    answer 204: shows middleboxes that cut held requests. No certificate needed; nothing is
    disclosed."""
    try:
        wait = min(poll.MAX_WAIT, max(0.0, float(request.query.get("wait", "2"))))
    except ValueError:
        raise web.HTTPBadRequest(text="wait must be a number of seconds\n") from None
    with request.app[PROBE_SLOTS_KEY].take(request.remote):
        await asyncio.sleep(wait)
    return web.Response(status=204)


async def link(request: web.Request) -> web.StreamResponse:
    """A link upgrade on a connection aiohttp already serves (the first request of a connection
    goes to :class:`~tether.cloud.wsserver.FrontDoor`, which opens links itself)."""
    if "probe" in request.query:
        return await link_probe(request)
    state: CloudState = request.app[STATE_KEY]
    try:
        identity = await state.gateway_identity(request)
    except IdentityError as exc:
        log.warning("link refused from %s: %s", request.remote, exc.reason_text)
        raise
    ws = web.WebSocketResponse(
        autoping=True,
        heartbeat=None,
        compress=False,  # per-message deflate costs ~64 KiB per link; telemetry is msgpack
        max_msg_size=max_ws_message(state.settings.max_frame),
    )
    await ws.prepare(request)
    conn = _new_link(state, AiohttpChannel(ws), identity, request.remote)
    await serve_aiohttp_link(ws, conn)
    return ws


def _new_link(
    state: CloudState, channel: LinkChannel, identity: GatewayIdentity, peer: str | None
) -> WebSocketLink:
    return WebSocketLink(
        channel,
        identity,
        service=state.service,
        hub=state.hub,
        store=state.store,
        links=state.links,
        peer=peer,
        heartbeat_interval=state.settings.heartbeat_interval,
        max_frame=state.settings.max_frame,
    )


async def open_link(
    state: CloudState, head: RequestHead, connection: LinkConnection
) -> WebSocketLink:
    """Who is calling on a link upgrade the front door took; raise HandshakeRefused if no one
    the cloud will link with."""
    peername = connection.transport.get_extra_info("peername")
    remote = str(peername[0]) if peername else None
    try:
        identity = await connection_identity(
            transport=connection.transport,
            remote=remote,
            header_value=head.headers.get(state.settings.client_cert_header.lower()),
            store=state.store,
            ca=state.ca,
            trusted_proxies=state.settings.trusted_proxies,
            header=state.settings.client_cert_header,
            certificates=state.certificates,
        )
    except IdentityError as exc:
        log.warning("link refused from %s: %s", remote, exc.reason_text)
        raise HandshakeRefused(
            exc.status_code, exc.reason_text, ((ERROR_HEADER, exc.reason_text),)
        ) from None
    return _new_link(state, connection, identity, remote)


class FrontDoorSite(web.BaseSite):
    """The one TLS port: links through :class:`~tether.cloud.wsserver.FrontDoor`, everything
    else through the aiohttp application."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        backlog: int,
        reuse_port: bool,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._opening: set[asyncio.Task[None]] = set()
        self._app_runner = runner
        self._tls: TLSServer | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        http = self._app_runner.server
        assert http is not None
        state = self._app_runner.app[STATE_KEY]
        max_message = max_ws_message(state.settings.max_frame)
        opening = self._opening

        async def opener(head: RequestHead, connection: LinkConnection) -> WebSocketLink:
            return await open_link(state, head, connection)

        head_timeout = HEAD_TIMEOUT

        def front_door() -> FrontDoor:
            return FrontDoor(
                http, opener, max_message=max_message, tasks=opening, head_timeout=head_timeout
            )

        assert self._ssl_context is not None
        self._tls = start_tls_server(
            front_door,
            self._host,
            self._port,
            ctx=self._ssl_context,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        if self._tls is not None:
            self._tls.close()
        await super().stop()


async def _sweep(state: CloudState) -> None:
    """Expire commands whose deadline passed, mark silent HTTPS-tier gateways offline, write
    ``last_seen`` of the gateways whose WebSocket link this process holds, and now and then
    fold old health reports into hourly averages."""
    rounds = 0
    seen_due = time.monotonic() + state.settings.last_seen_interval
    while True:
        await asyncio.sleep(min(SWEEP_INTERVAL, state.settings.last_seen_interval))
        rounds += 1
        if rounds % 120 == 1:
            try:
                await state.health.store.downsample(
                    now=datetime.now(UTC),
                    raw_retention=state.settings.health_raw_retention,
                    hourly_retention=state.settings.health_retention,
                )
            except Exception:  # logged; the next round tries again
                log.exception("health downsampling failed")
        try:
            expired = await state.store.expire_due_commands(now=datetime.now(UTC))
        except Exception:  # a store hiccup must not stop the sweeper; it is logged
            log.exception("command sweep failed")
            continue
        if expired:
            log.info("expired %d commands", len(expired))
        if time.monotonic() >= seen_due:
            seen_due = time.monotonic() + state.settings.last_seen_interval
            try:
                await state.links.seen(state.hub.gateway_ids(), at=datetime.now(UTC))
            except Exception:  # logged; the next round tries again
                log.exception("writing last_seen of the held links failed")
        with contextlib.suppress(Exception):
            await state.links.mark_stale(
                now=datetime.now(UTC),
                long_poll_grace=poll.MAX_WAIT * 2 + 30,
                poll_grace=POLL_GRACE,
            )


async def _on_notify(state: CloudState, payload: str) -> None:
    if payload == MISSED:
        await _catch_up(state)
    elif payload.startswith("revoke:"):
        await state.hub.close(payload[7:], CloseCode.REVOKED, "gateway revoked")
    else:
        await state.hub.wake(payload)


async def _catch_up(state: CloudState) -> None:
    """Wake-ups may have been lost (the LISTEN connection was down): close the links of
    gateways revoked meanwhile, and offer every other linked gateway what waits for it."""
    held = state.hub.gateway_ids()
    try:
        revoked = await state.store.revoked_among(held)
    except Exception:  # logged; the links' own checks and the next wake-ups still apply
        log.exception("catching up after lost wake-ups failed")
        return
    for gateway_id in revoked:
        await state.hub.close(gateway_id, CloseCode.REVOKED, "gateway revoked")
    log.info("caught up after lost wake-ups: %d links, %d of them revoked", len(held), len(revoked))
    rest = [g for g in held if g not in revoked]
    for start in range(0, len(rest), CATCH_UP_CHUNK):  # links ask together, a chunk at a time
        await asyncio.gather(
            *(state.hub.wake(g) for g in rest[start : start + CATCH_UP_CHUNK]),
            return_exceptions=True,
        )


def build_app(settings: CloudSettings) -> web.Application:
    app = web.Application(client_max_size=2 * settings.max_frame, middlewares=[api.json_errors])
    app[SETTINGS_KEY] = settings
    app.on_response_prepare.append(_server_header)
    app[PROBE_SLOTS_KEY] = ProbeSlots(per_source=PROBES_PER_SOURCE, in_all=PROBES_IN_ALL)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = CertificateAuthority.load_or_create(settings.pki_dir)
        store = await Store.open(
            settings.database, connections=connections_per_worker(settings, settings.workers)
        )
        await _bootstrap_admin(settings, store)
        hub = LinkHub()
        service = GatewayService(store)
        telemetry = TelemetryStore(store.engine)
        ingest = IngestPipeline(telemetry, max_queued_rows=settings.ingest_queue_observations)
        service.register(TelemetryBatch, ingest.on_batch)
        service.telemetry_gate = ingest
        service.register(Discovery, ingest.on_discovery)
        service.register(DropReport, ingest.on_drop_report)
        ingest.start()
        health = HealthService(HealthStore(store.engine))
        service.register(HealthReport, health.on_health)
        service.register(LogBatch, health.on_logs)
        service.register(NetcheckReport, health.on_netcheck)
        state = CloudState(
            settings=settings,
            store=store,
            ca=ca,
            hub=hub,
            service=service,
            telemetry=telemetry,
            ingest=ingest,
            links=LinkStore(store.engine),
            health=health,
        )
        app[STATE_KEY] = state
        sweeper = asyncio.get_running_loop().create_task(_sweep(state))

        async def notified(payload: str) -> None:
            await _on_notify(state, payload)

        async with store.listen_commands(notified):
            yield
        await cancel_and_wait(sweeper)
        await hub.close_all(CloseCode.GOING_AWAY, "cloud shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.links.drain(), 5.0)
        await ingest.stop()
        await store.close()

    app.cleanup_ctx.append(lifespan)
    app.router.add_routes(est.routes())
    app.router.add_routes(api.api_routes())
    app.router.add_get("/.well-known/tether/hello", hello)
    app.router.add_routes(
        _manifest_routes(
            own_manifest(settings, CertificateAuthority.load_or_create(settings.pki_dir))
        )
    )
    app.router.add_get("/link", link)
    app.router.add_get("/link/poll", long_poll_probe)
    app.router.add_routes(poll.routes())
    registry = CollectorRegistry(auto_describe=True)
    collector = FleetCollector()
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        principal = await api.authenticate(request, state)
        if principal.role not in api.PERMISSIONS["read"]:
            raise web.HTTPForbidden(text="role may not read metrics\n")
        return await metrics_handler(request, state, collector, registry)

    app.router.add_get("/metrics", metrics)
    console.setup(app)  # after the lifespan above: the console's starts once the state exists
    return app


class MalformedRequestLog(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR, with a traceback quoting the offending
    bytes: a bearer token or a session cookie in a malformed header line would be written to
    the log as it is, and anyone may send such requests by the thousand. This says it in one
    warning line naming the error's kind, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: malformed request ({type(exc).__name__}), 400"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


_MALFORMED_REQUEST_LOG = MalformedRequestLog()


def _raise_fd_limit() -> None:
    """One descriptor per link: lift the soft limit (often 1,024) to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


#: Allocations (net of frees) between two young-generation collections; CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names the product, not the Python and aiohttp versions behind it."""
    response.headers["Server"] = "tether"


def tune_collector() -> None:
    """Set the garbage collector for a long-running server, once it has started.

    What start-up made (modules, the app, the store's metadata) lives as long as the process:
    frozen, it is never traversed again. The link and ingest paths make a few short-lived
    objects per message, thousands of times a second; with the default young threshold most of
    them are still alive at each collection and get promoted, so the older generations, which
    hold every link's objects, fill and are collected over and over. A larger young
    generation lets them die young instead.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def prepare(settings: CloudSettings) -> None:
    """First-start work done once before worker processes start: the CA and server
    credentials, the schema migrations, the bootstrap admin token."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(settings.pki_dir)
    server_context(settings, ca)
    store = await Store.open(settings.database)
    try:
        await _bootstrap_admin(settings, store)
        await Accounts(store).bootstrap_admin(settings.data_dir)  # the console's first user
    finally:
        await store.close()


async def run(
    settings: CloudSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    own_process: bool = False,
) -> None:
    """Serve until *stop* is set (or forever). *own_process*: the process serves nothing else,
    so process-wide settings (the garbage collector's) may be tuned for the cloud."""
    _raise_fd_limit()
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUEST_LOG)  # once per process
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(settings.pki_dir)
    ctx = server_context(settings, ca)
    app = build_app(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    site = FrontDoorSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        ssl_context=ctx,
        reuse_port=reuse_port,
        backlog=4096,
    )
    await site.start()
    log.info(
        "tether cloud %s listening on %s (%s)",
        __version__,
        settings.public_url,
        settings.database.split("://")[0],
    )
    if own_process:
        tune_collector()
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
