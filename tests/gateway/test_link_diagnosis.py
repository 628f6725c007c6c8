"""What the agent's link errors say: a wrong host clock, revoked refusals, object addresses,
proxies, and the preflight's summary.

The clock tests hold a real TLS server on loopback whose certificate (from a CA the client pins)
starts 400 days from now and whose ``Date`` says what its clock reads: exactly what an agent
whose clock is 400 days behind sees, or an agent facing a cloud with a certificate not valid yet.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tests.support.cloudproc import free_port

from tether.gateway.httptier import HttpTier
from tether.gateway.link import (
    ClockWrong,
    LinkRefused,
    WebSocketTier,
    clean_error,
    proxy_error,
)
from tether.gateway.preflight import summary
from tether.netcheck.report import Check, CheckReport, CheckResult, Status
from tether.pki.ca import CertificateAuthority
from tether.pki.tlscontext import pinned_client_context
from tether.protocol.messages import Message, Welcome

DAY = 86400.0


class _Core:
    def __init__(self) -> None:
        self.opened = 0

    def on_link_open(
        self, send: Callable[[Message], None], tier: str, *, welcome: Welcome, round_trip: float
    ) -> None:
        self.opened += 1

    async def on_message(self, message: Message) -> None:
        pass

    def on_link_closed(self) -> None:
        pass


@asynccontextmanager
async def _cloud_from_the_future(tmp_path: Path, clock_offset: float) -> AsyncIterator[str]:
    """A TLS server whose certificate starts in 400 days; its Date is now + *clock_offset*."""
    now = datetime.now(UTC)
    ca = CertificateAuthority.generate(now=now - timedelta(days=1), lifetime=timedelta(days=3650))
    key_pem, cert_pem = ca.issue_server(
        ["127.0.0.1"], lifetime=timedelta(days=365), now=now + timedelta(days=400)
    )
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    (tmp_path / "server.pem").write_bytes(cert_pem + key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.pem")

    async def hello(request: web.Request) -> web.Response:
        date = formatdate(time.time() + clock_offset, usegmt=True)
        return web.Response(text="tether", headers={"Date": date})

    app = web.Application()
    app.router.add_get("/.well-known/tether/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _ws_tier(url: str, ca: Path) -> WebSocketTier:
    return WebSocketTier(
        url=url,
        ssl_context=pinned_client_context(ca),
        core=_Core(),
        boot_id="b",
        max_frame=1 << 20,
        proxy=None,
        trust_env=False,
    )


def _http_tier(url: str, ca: Path) -> HttpTier:
    return HttpTier(
        mode="long-poll",
        url=url,
        ssl_context=pinned_client_context(ca),
        core=_Core(),
        boot_id="b",
        max_frame=1 << 20,
        proxy=None,
        trust_env=False,
    )


@pytest.mark.parametrize("make_tier", [_ws_tier, _http_tier], ids=["ws", "https"])
async def test_a_clock_400_days_behind_is_named_with_its_offset_and_the_fix(
    tmp_path: Path, make_tier: Callable[[str, Path], WebSocketTier | HttpTier]
) -> None:
    async with _cloud_from_the_future(tmp_path, clock_offset=400 * DAY) as url:
        with pytest.raises(ClockWrong) as caught:
            await make_tier(url, tmp_path / "ca.pem").run_once()
    message = str(caught.value)
    assert message.startswith("the host clock is wrong"), message
    assert "400 days behind the cloud's" in message
    assert "NTP" in message
    assert "TLS-inspecting" not in message
    assert caught.value.offset is not None
    assert abs(caught.value.offset - 400 * DAY) < 60


async def test_a_right_clock_blames_the_clouds_certificate(tmp_path: Path) -> None:
    async with _cloud_from_the_future(tmp_path, clock_offset=0.0) as url:
        with pytest.raises(ClockWrong) as caught:
            await _ws_tier(url, tmp_path / "ca.pem").run_once()
    message = str(caught.value)
    assert "the cloud's certificate is not valid yet" in message
    assert "must be renewed" in message
    assert "host clock is wrong" not in message


def test_only_a_revoked_refusal_by_the_cloud_is_final() -> None:
    assert LinkRefused(403, "gateway or certificate has been revoked").revoked
    assert not LinkRefused(403, "client certificate is not known to this cloud").revoked
    assert not LinkRefused(403, "revoked", by="proxy").revoked
    assert not LinkRefused(407, "the proxy requires authentication", by="proxy").revoked


def test_object_addresses_are_stripped_from_error_texts() -> None:
    raw = (
        "Cannot connect to host localhost:9 ssl:<ssl.SSLContext object at 0x7f861ff61490> "
        "[Connect call failed ('127.0.0.1', 9)]"
    )
    assert (
        clean_error(raw)
        == "Cannot connect to host localhost:9 [Connect call failed ('127.0.0.1', 9)]"
    )
    assert clean_error("a <foo.Bar object at 0xdeadbeef> b") == "a <foo.Bar> b"


def test_a_proxy_answer_names_the_proxy_without_credentials() -> None:
    class _Info:
        real_url = "http://proxy.site:3128"

    error = aiohttp.ClientHttpProxyError(_Info(), (), status=502, message="Bad Gateway")  # type: ignore[arg-type]
    said = str(proxy_error(error, "http://proxy.site:3128"))
    assert said == "the proxy (proxy http://proxy.site:3128) answered 502 to CONNECT: Bad Gateway"


def test_the_preflight_summary_names_the_failing_checks() -> None:
    now = datetime.now(UTC)
    report = CheckReport(
        manifest_product="tether",
        manifest_version="1",
        manifest_publisher="tether",
        started_at=now,
        finished_at=now,
        results=(
            CheckResult(check=Check.TCP, target="cloud:443", status=Status.FAIL, finding="refused"),
            CheckResult(check=Check.NTP, target="pool", status=Status.WARN, finding="no answer"),
            CheckResult(check=Check.TLS, target="cloud:443", status=Status.PASS, finding="ok"),
        ),
    )
    line = summary(report)
    assert line.startswith("fail (")
    assert "failed: tcp cloud:443: refused" in line
    assert "warned: ntp pool: no answer" in line
    assert "tls" not in line.split(")", 1)[1]
