"""The link behind real proxies: nginx terminating TLS in front of the cloud, squid with auth.

nginx (Debian's nginx-light) plays a deployment's load balancer: it presents a certificate from
the platform CA, verifies the gateway's client certificate, and passes it to the cloud in the
``X-Tether-Client-Cert`` header, which the cloud honours only from its trusted proxies. Without
WebSocket upgrade forwarding the agent settles on HTTPS long-poll and comes back to the WebSocket
by itself once nginx forwards upgrades. squid plays a site's forward proxy requiring basic
authentication.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.support.cloudproc import (
    Cloud,
    StartAgent,
    create_token,
    enroll_gateway,
    run_command,
    running_cloud,
    wait_for,
    wait_gateway,
)
from tests.support.testbed import nginx, squid
from tests.support.testbed.certs import ServerCert
from tests.support.testbed.nginx import LoadBalancer

from tether.gateway.agent import Agent
from tether.pki.ca import CertificateAuthority
from tether.protocol.codec import encode_frames
from tether.protocol.messages import Hello

pytestmark = [pytest.mark.slow]

#: The name nginx verifies the cloud's certificate against (nginx checks DNS names only).
UPSTREAM_NAME = "cloud.tether.test"
HEADER = "X-Tether-Client-Cert"
#: Small agent intervals, so tier changes happen in seconds.
QUICK = {"probe_interval": 1.0, "unstable_after": 3.0, "longpoll_wait": 5.0, "poll_interval": 1.0}


@pytest.fixture
async def proxied_cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud that takes the client certificate header from 127.0.0.1 (where nginx is)."""
    async with running_cloud(
        tmp_path / "cloud",
        trusted_proxies=("127.0.0.1",),
        extra_hostnames=("127.0.0.1", "::1", UPSTREAM_NAME),
    ) as running:
        yield running


@pytest.fixture
async def api(proxied_cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    async with proxied_cloud.api() as client:
        yield client


def platform_server_cert(cloud: Cloud, names: list[str]) -> ServerCert:
    ca = CertificateAuthority.load_or_create(cloud.settings.pki_dir)
    key_pem, chain_pem = ca.issue_server(names, lifetime=timedelta(days=1), now=datetime.now(UTC))
    return ServerCert(cert_pem=chain_pem, key_pem=key_pem, chain_pem=chain_pem)


@pytest.fixture
def load_balancer(proxied_cloud: Cloud) -> Iterator[LoadBalancer]:
    if not nginx.available():
        pytest.skip("nginx is not installed (scripts/sysdeps.sh)")
    lb = LoadBalancer(
        upstream=f"https://127.0.0.1:{proxied_cloud.port}",
        server_cert=platform_server_cert(proxied_cloud, ["127.0.0.1"]),
        ca_path=proxied_cloud.ca_path,
        upstream_name=UPSTREAM_NAME,
        client_cert_header=HEADER,
    )
    try:
        yield lb
    finally:
        lb.stop()


def _on_tier(agent: Agent, tier: str) -> bool:
    return agent.linked.is_set() and agent.status.tier == tier


async def test_behind_nginx_without_upgrades_long_poll_then_websocket_when_it_passes(
    api: httpx.AsyncClient, start_agent: StartAgent, load_balancer: LoadBalancer
) -> None:
    load_balancer.start(websocket=False)
    gw = await start_agent("behind-lb", cloud_url=load_balancer.url, **QUICK)
    agent = gw.agent
    await wait_for(lambda: _on_tier(agent, "long-poll"), what="the agent on long-poll")
    assert "WebSocket upgrade failed (400)" in (agent.status.last_error or "")
    # Its upward probes fail while nginx strips the upgrade: it stays on long-poll.
    probes = agent.status.probes
    await wait_for(lambda: agent.status.probes >= probes + 2, what="two upward probes")
    assert agent.status.tier == "long-poll"
    assert not any("better tier answered" in line for _, line in agent.status.history)
    done = await run_command(api, gw.gateway_id, "ping")
    assert done["state"] == "succeeded", done
    detail = (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()
    assert detail["gateway"]["tier"] == "long-poll"
    assert detail["gateway"]["peer"] == "127.0.0.1"  # nginx, which the cloud trusts
    assert "WebSocket upgrade failed" in detail["tier_reason"]

    load_balancer.start(websocket=True)  # same port, now forwarding upgrades
    await wait_for(lambda: _on_tier(agent, "ws"), what="the agent back on the WebSocket")
    gateway = await wait_gateway(
        api, gw.gateway_id, lambda g: g["linked"] and g["tier"] == "ws", what="tier ws"
    )
    assert gateway["peer"] == "127.0.0.1"
    done = await run_command(api, gw.gateway_id, "ping")
    assert done["state"] == "succeeded", done
    history = [
        h["tier"]
        for h in (await api.get(f"/api/v1/gateways/{gw.gateway_id}")).json()["tier_history"]
    ]
    assert history[-2:] == ["long-poll", "ws"], history
    assert any("a better tier answered the probe" in line for _, line in agent.status.history)


def _bound_client(cloud: Cloud, source: str, ctx: ssl.SSLContext) -> httpx.AsyncClient:
    """A client whose connections leave from *source* (another loopback address)."""
    transport = httpx.AsyncHTTPTransport(verify=ctx, local_address=source)
    return httpx.AsyncClient(base_url=cloud.url, transport=transport, trust_env=False, timeout=20.0)


async def _forge(client: httpx.AsyncClient, pem: str) -> list[httpx.Response]:
    """An exchange and a WebSocket upgrade, each carrying *pem* in the header."""
    forged = {HEADER: quote(pem, safe="")}
    hello = Hello(protocol_versions=[1], agent_version="forger", max_frame=65536, boot_id="f")
    exchange = await client.post(
        "/link/exchange",
        params={"tier": "long-poll"},
        content=encode_frames([hello]),
        headers={**forged, "Content-Type": "application/x-tether-frames"},
    )
    upgrade = await client.get(
        "/link",
        headers={
            **forged,
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    return [exchange, upgrade]


async def test_client_certificate_header_refused_from_anyone_but_a_trusted_proxy(
    tmp_path: Path, proxied_cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    victim = await start_agent("victim")
    pem = victim.agent.identity.certificate.public_bytes(Encoding.PEM).decode()
    attacker = await enroll_gateway(
        (await create_token(api, name="attacker"))["enrollment_code"], tmp_path / "attacker"
    )
    responses: list[httpx.Response] = []
    # From 127.0.0.2 (not a trusted proxy): without a client certificate, and with another
    # gateway's valid one; the header is refused before any certificate counts.
    for ctx in (proxied_cloud.ssl_context(), attacker.ssl_context()):
        async with _bound_client(proxied_cloud, "127.0.0.2", ctx) as client:
            responses += await _forge(client, pem)
    for response in responses:
        assert response.status_code == 400, response.text
        reason = f"header {HEADER} is accepted only from a trusted proxy, not from 127.0.0.2"
        assert reason in response.text
        assert response.headers["X-Tether-Error"] == reason
    detail = (await api.get(f"/api/v1/gateways/{victim.gateway_id}")).json()
    assert detail["gateway"]["peer"] == "127.0.0.1"  # the victim's own link, untouched
    assert [h["tier"] for h in detail["tier_history"]] == ["ws"]
    attacker_detail = (await api.get(f"/api/v1/gateways/{attacker.gateway_id}")).json()
    assert attacker_detail["gateway"]["linked"] is False


async def test_behind_nginx_that_does_not_pass_the_certificate_the_gateway_is_refused(
    start_agent: StartAgent, load_balancer: LoadBalancer
) -> None:
    # The control for the tests above: nginx verifies the client certificate but does not pass
    # it on, so the cloud sees a request without a gateway identity.
    load_balancer.start(websocket=True, pass_certificate=False)
    gw = await start_agent("unnamed", linked=False, cloud_url=load_balancer.url, **QUICK)
    await wait_for(lambda: gw.agent.status.last_error, what="the refusal")
    assert gw.agent.status.last_error == (
        "cloud refused the link (401): a gateway client certificate is required"
    )
    assert not gw.agent.linked.is_set()


# --- squid with basic authentication ----------------------------------------------------------

CREDENTIALS = ("site-gateway", "c0rrect-horse")


@pytest.fixture
def auth_proxy() -> Iterator[squid.Squid]:
    if not squid.available():
        pytest.skip("squid is not installed (scripts/sysdeps.sh)")
    with squid.squid_proxy(credentials=CREDENTIALS) as proxy:
        yield proxy


def _access_log(proxy: squid.Squid) -> list[str]:
    try:
        return (proxy.directory / "access.log").read_text().splitlines()
    except FileNotFoundError:
        return []


async def test_proxy_credentials_from_https_proxy_link_through_squid(
    monkeypatch: pytest.MonkeyPatch,
    api: httpx.AsyncClient,
    start_agent: StartAgent,
    auth_proxy: squid.Squid,
) -> None:
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", auth_proxy.url)  # http://user:password@127.0.0.1:port
    gw = await start_agent("proxied", trust_env=True, **QUICK)
    assert gw.agent.status.tier == "ws"
    done = await run_command(api, gw.gateway_id, "ping")
    assert done["state"] == "succeeded", done
    await gw.stop()  # squid logs a tunnel when it ends

    def tunnels() -> list[str]:
        return [line for line in _access_log(auth_proxy) if " CONNECT " in line]

    logged = await wait_for(tunnels, what="squid to log the agent's tunnel")
    assert all(CREDENTIALS[0] in line for line in logged), logged
    assert any("TCP_TUNNEL/200" in line for line in logged), logged


async def test_wrong_proxy_password_is_named_and_retried_slowly(
    start_agent: StartAgent, auth_proxy: squid.Squid
) -> None:
    wrong = f"http://{CREDENTIALS[0]}:wrong@{auth_proxy.host}:{auth_proxy.port}"
    gw = await start_agent("locked-out", linked=False, proxy=wrong, **QUICK)

    def refusals() -> int:
        return sum("TCP_DENIED/407" in line for line in _access_log(auth_proxy))

    await wait_for(lambda: gw.agent.status.last_error, what="the proxy's refusal")
    error = gw.agent.status.last_error or ""
    assert error.startswith("proxy refused the link (407): the proxy requires authentication")
    assert "HTTPS_PROXY" in error
    assert "wrong" not in error  # the password is never repeated
    await wait_for(refusals, what="squid to log the 407")
    # Watch a window in which a retry loop at the agent's ordinary reconnect cap (1 s here)
    # would knock several times: after a 407 the agent waits tens of seconds instead.
    window = asyncio.get_running_loop().create_task(asyncio.sleep(5.0))
    await asyncio.wait({window, gw.task}, return_when=asyncio.FIRST_COMPLETED)
    assert not gw.task.done(), "the agent stopped"
    assert gw.agent.status.state == "waiting"
    assert 1 <= refusals() <= 3, _access_log(auth_proxy)
    assert not gw.agent.linked.is_set()
