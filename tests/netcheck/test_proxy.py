"""Proxy settings (HTTPS_PROXY / NO_PROXY semantics, redaction) and CONNECT through real squid."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiohttp.helpers import get_env_proxy_for_url
from tests.support.testbed.squid import Squid
from yarl import URL

from tether.netcheck.proxy import (
    ProxyAuthRequired,
    ProxyProtocolError,
    ProxyRefused,
    ProxySettings,
    ProxyUpstreamFailed,
    ProxyURL,
    connect_tunnel,
    parse_proxy_url,
)


def test_parse_full_url() -> None:
    url = parse_proxy_url("http://alice:s%40cret@proxy.site.test:3128")
    assert url == ProxyURL("proxy.site.test", 3128, "http", "alice", "s@cret")


def test_parse_without_scheme_defaults_to_http_port_80() -> None:
    assert parse_proxy_url("proxy.site.test") == ProxyURL("proxy.site.test", 80)
    assert parse_proxy_url("10.0.0.1:8080").port == 8080


def test_parse_rejects_socks_and_garbage() -> None:
    with pytest.raises(ValueError, match="unsupported proxy scheme"):
        parse_proxy_url("socks5://proxy:1080")
    with pytest.raises(ValueError, match="port"):
        parse_proxy_url("http://proxy:notaport")


def test_password_never_appears_in_text() -> None:
    url = parse_proxy_url("http://alice:hunter2@proxy:3128")
    assert url.redacted() == "http://alice:***@proxy:3128"
    assert "hunter2" not in str(url)
    assert "hunter2" not in repr(url)
    assert "hunter2" not in f"{url}"
    assert url.authorization == "Basic YWxpY2U6aHVudGVyMg=="


def test_environment_precedence() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}
    assert ProxySettings.from_environ(env).https_proxy == ProxyURL("lower", 2)
    assert ProxySettings.from_environ({}).https_proxy is None
    # The agent's client takes neither ALL_PROXY nor http_proxy for its https:// URLs.
    assert ProxySettings.from_environ({"ALL_PROXY": "http://x:3"}).https_proxy is None
    assert ProxySettings.from_environ({"http_proxy": "http://p:1"}).https_proxy is None
    # An empty lowercase variable removes the uppercase one, as urllib reads them.
    assert ProxySettings.from_environ({"HTTPS_PROXY": "http://u:1", "https_proxy": ""}) == (
        ProxySettings()
    )


def test_a_proxy_the_agent_cannot_use_is_an_error_or_ignored() -> None:
    with pytest.raises(ValueError, match="no scheme"):
        ProxySettings.from_environ({"HTTPS_PROXY": "proxy.site.test:3128"})
    ignored = ProxySettings.from_environ({"HTTPS_PROXY": "https://bob:pw@proxy.site.test:3128"})
    assert ignored.https_proxy is None
    assert "connects directly" in ignored.ignored
    assert "pw" not in ignored.ignored


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypass"),
    [
        ("example.com", "example.com", True),
        ("example.com", "api.example.com", True),
        ("example.com", "badexample.com", False),
        (".example.com", "example.com", True),
        # The agent's client compares entries with the host name as they are written:
        ("*.example.com", "a.b.example.com", False),
        ("*.localhost", "localhost", False),
        ("localhost:28443", "localhost", False),
        ("10.0.0.0/8", "10.1.2.3", False),
        ("::1", "::1", True),
        ("*", "anything.test", True),
        ("a.test, b.test,c.test", "c.test", True),
        ("EXAMPLE.COM", "Api.Example.Com", True),
        ("", "example.com", False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, bypass: bool) -> None:
    settings = ProxySettings(https_proxy=ProxyURL("proxy", 3128), no_proxy=no_proxy)
    assert settings.bypasses(host, 443) is bypass
    assert (settings.proxy_for(host, 443) is None) is bypass


def test_no_proxy_lowercase_wins() -> None:
    env = {"https_proxy": "http://p:1", "no_proxy": "a.test", "NO_PROXY": "b.test"}
    settings = ProxySettings.from_environ(env)
    assert settings.bypasses("a.test", 443)
    assert not settings.bypasses("b.test", 443)


ENVIRONMENTS = [
    {"HTTPS_PROXY": "http://proxy.test:3128"},
    {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "*.localhost"},
    {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "localhost:28443"},
    {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "localhost"},
    {"HTTPS_PROXY": "http://proxy.test:3128", "no_proxy": ".site.test, other.test"},
    {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "*"},
    {"https_proxy": "http://a.test:1", "HTTPS_PROXY": "http://b.test:2"},
    {"HTTPS_PROXY": "https://proxy.test:3128"},
    {"ALL_PROXY": "http://proxy.test:3128"},
    {"HTTP_PROXY": "http://proxy.test:3128"},
    {},
]


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("host", ["localhost", "tether.site.test", "other.test", "a.other.test"])
def test_decisions_match_the_agents_http_client(
    env: dict[str, str], host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What aiohttp (the agent, trust_env) picks for https://host/ is what the check picks."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        url, _ = get_env_proxy_for_url(URL(f"https://{host}:28443/link"))
        agent: str | None = f"{url.host}:{url.port}"
    except LookupError:
        agent = None
    settings = ProxySettings.from_environ(env)
    ours = settings.proxy_for(host, 28443)
    assert (f"{ours.host}:{ours.port}" if ours else None) == agent


async def _connect(proxy: ProxyURL, host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        async with asyncio.timeout(10):
            await connect_tunnel(reader, writer, proxy, host, port)
    finally:
        writer.close()


async def test_connect_through_squid(squid_factory: Callable[..., Squid]) -> None:
    # A listener squid can tunnel to: squid itself (its own port is open on loopback).
    helper = squid_factory()
    proxy = squid_factory(
        hosts={"open.site.test": "127.0.0.1", "down.site.test": "127.0.0.1"},
        credentials=("alice", "s3cret"),
        denied_domains=[".blocked.site.test"],
    )
    good = parse_proxy_url(proxy.url)
    await _connect(good, "open.site.test", helper.port)

    anonymous = parse_proxy_url(proxy.url_without_credentials)
    with pytest.raises(ProxyAuthRequired) as auth:
        await _connect(anonymous, "open.site.test", helper.port)
    assert auth.value.status == 407
    assert "tether-test-proxy" in str(auth.value)

    wrong = ProxyURL(proxy.host, proxy.port, username="alice", password="wrong")
    with pytest.raises(ProxyAuthRequired):
        await _connect(wrong, "open.site.test", helper.port)

    with pytest.raises(ProxyRefused) as refused:
        await _connect(good, "api.blocked.site.test", 443)
    assert refused.value.status == 403

    closed_port = helper.port + 1 if helper.port < 65535 else helper.port - 1
    with pytest.raises(ProxyUpstreamFailed) as upstream:
        await _connect(good, "down.site.test", closed_port)
    assert upstream.value.status in (502, 503)


async def test_connect_to_something_that_is_not_a_proxy() -> None:
    async def not_a_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_a_proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(ProxyProtocolError):
            await _connect(ProxyURL("127.0.0.1", port), "x.test", 443)
