"""Proxy settings (HTTPS_PROXY / NO_PROXY semantics, redaction) and CONNECT through real squid."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from tests.support.testbed.squid import Squid

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
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "ALL_PROXY": "x:3"}
    assert ProxySettings.from_environ(env).https_proxy == ProxyURL("lower", 2)
    assert ProxySettings.from_environ({"ALL_PROXY": "x:3"}).https_proxy == ProxyURL("x", 3)
    assert ProxySettings.from_environ({}).https_proxy is None
    # http_proxy is for plain HTTP and must not be used for HTTPS targets
    assert ProxySettings.from_environ({"http_proxy": "http://p:1"}).https_proxy is None


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("example.com:8443", "example.com", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("10.0.0.0/8", "ten.example", 443, False),
        ("::1", "::1", 443, True),
        ("[::1]:443", "::1", 443, True),
        ("*", "anything.test", 443, True),
        ("a.test, b.test  c.test", "c.test", 443, True),
        ("EXAMPLE.COM", "Api.Example.Com", 443, True),
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    settings = ProxySettings(https_proxy=ProxyURL("proxy", 3128), no_proxy=no_proxy)
    assert settings.bypasses(host, port) is bypass
    assert (settings.proxy_for(host, port) is None) is bypass


def test_no_proxy_lowercase_wins() -> None:
    env = {"https_proxy": "p:1", "no_proxy": "a.test", "NO_PROXY": "b.test"}
    settings = ProxySettings.from_environ(env)
    assert settings.bypasses("a.test", 443)
    assert not settings.bypasses("b.test", 443)


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
