"""The tether application endpoints over real TLS, served by aiohttp in a background thread.

Serves what ``tether.netcheck.http`` probes: ``GET /.well-known/tether/hello`` (JSON with
``"service": "tether"``), the WebSocket upgrade at ``/link``, the long-poll at ``/link/poll`` and
the EST CA distribution ``/.well-known/est/cacerts`` (RFC 7030, base64 PKCS#7 of the CA).
With ``tether=False`` the same server answers 404 everywhere (some other web server). With
``portal`` set it is a captive portal: every request is redirected there, except the RFC 8908
captive-portal API at ``/captive-portal/api``, which says ``"captive": true``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from tests.support.testbed.certs import TestCA

_MAX_POLL_WAIT = 10.0


CAPTIVE_API_PATH = "/captive-portal/api"


def _portal_app(portal: str) -> web.Application:
    app = web.Application()

    async def api(request: web.Request) -> web.Response:
        return web.json_response(
            {"captive": True, "user-portal-url": portal},
            content_type="application/captive+json",
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(portal)

    app.router.add_get(CAPTIVE_API_PATH, api)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def _build_app(*, tether: bool, cacerts: bytes) -> web.Application:
    app = web.Application()

    async def est_cacerts(request: web.Request) -> web.Response:
        return web.Response(
            body=cacerts,
            content_type="application/pkcs7-mime",
            headers={"Content-Transfer-Encoding": "base64"},
        )

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"service": "tether", "version": "test"})

    async def link(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": "websocket upgrade expected"}, status=426)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def poll(request: web.Request) -> web.Response:
        try:
            wait = min(float(request.query.get("wait", "0")), _MAX_POLL_WAIT)
        except ValueError:
            return web.Response(status=400)
        await asyncio.sleep(max(wait, 0.0))
        return web.Response(status=204)

    async def generic(request: web.Request) -> web.Response:
        return web.Response(status=404, text="not found")

    if tether:
        app.router.add_get("/.well-known/tether/hello", hello)
        app.router.add_get("/link", link)
        app.router.add_get("/link/poll", poll)
        app.router.add_get("/.well-known/est/cacerts", est_cacerts)
    app.router.add_route("*", "/{tail:.*}", generic)
    return app


@dataclass
class AppServer:
    """A TLS server answering as the tether cloud on ``host:port`` (port 0 picks one)."""

    ssl_context: ssl.SSLContext
    host: str = "127.0.0.1"
    port: int = 0
    tether: bool = True
    cacerts: bytes = b""  # base64 PKCS#7 served at /.well-known/est/cacerts
    portal: str | None = None  # be a captive portal redirecting here
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def start(self) -> AppServer:
        self._thread = threading.Thread(target=self._run, name="test-app", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=15):
            raise TimeoutError("test application server did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = (
            _portal_app(self.portal)
            if self.portal
            else _build_app(tether=self.tether, cacerts=self.cacerts)
        )
        runner = web.AppRunner(app, access_log=None)
        try:
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            self._loop.run_until_complete(site.start())
            server = site._server
            if isinstance(server, asyncio.Server) and server.sockets:
                self.port = int(server.sockets[0].getsockname()[1])
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._error is None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)


def est_cacerts_body(ca: TestCA) -> bytes:
    """The CA as an EST ``cacerts`` answer: base64 of a certs-only PKCS#7."""
    der = pkcs7.serialize_certificates([ca.cert], serialization.Encoding.DER)
    return base64.encodebytes(der)


def server_context(ca: TestCA, names: list[str], directory: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting a certificate from ``ca`` for ``names``."""
    cert_path, key_path = ca.issue_server(names).write(directory, stem="app-" + names[0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


@contextmanager
def app_server(
    ca: TestCA,
    names: list[str],
    directory: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tether: bool = True,
) -> Iterator[AppServer]:
    server = AppServer(
        ssl_context=server_context(ca, names, directory),
        host=host,
        port=port,
        tether=tether,
        cacerts=est_cacerts_body(ca),
    ).start()
    try:
        yield server
    finally:
        server.stop()
