"""pytest fixtures for the test bed: factories that start peers and stop them at teardown.

Import them into a ``conftest.py``::

    from tests.support.testbed.fixtures import *  # noqa: F403
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import mitm, nginx, squid
from tests.support.testbed.appserver import AppServer, est_cacerts_body, server_context
from tests.support.testbed.certs import TestCA
from tests.support.testbed.dnsserver import DNSServer
from tests.support.testbed.ntpserver import NTPServer

__all__ = [
    "app_factory",
    "ca_file",
    "dns_factory",
    "mitm_factory",
    "nginx_factory",
    "ntp_factory",
    "squid_factory",
    "test_ca",
]


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ca_file(tmp_path: Path, test_ca: TestCA) -> Path:
    return test_ca.write_cert(tmp_path / "test-ca.pem")


@pytest.fixture
def dns_factory() -> Iterator[Callable[..., DNSServer]]:
    """``dns_factory(records, nxdomain=(), silent=(), host="127.0.0.1", port=0)``."""
    started: list[DNSServer] = []

    def start(
        records: dict[str, list[str]],
        *,
        nxdomain: tuple[str, ...] | list[str] = (),
        silent: tuple[str, ...] | list[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> DNSServer:
        server = DNSServer(
            records=records, nxdomain=set(nxdomain), silent=set(silent), host=host, port=port
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ntp_factory() -> Iterator[Callable[..., NTPServer]]:
    """``ntp_factory(offset=0.0, answer=True, host="127.0.0.1", port=0)``."""
    started: list[NTPServer] = []

    def start(
        *, offset: float = 0.0, answer: bool = True, host: str = "127.0.0.1", port: int = 0
    ) -> NTPServer:
        server = NTPServer(host=host, port=port, offset=offset, answer=answer).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def app_factory(tmp_path: Path, test_ca: TestCA) -> Iterator[Callable[..., AppServer]]:
    """``app_factory(names, host=, port=, tether=True, portal=None)``: a TLS app server."""
    started: list[AppServer] = []

    def start(
        names: list[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tether: bool = True,
        portal: str | None = None,
    ) -> AppServer:
        context = server_context(test_ca, names, tmp_path)
        server = AppServer(
            ssl_context=context,
            host=host,
            port=port,
            tether=tether,
            cacerts=est_cacerts_body(test_ca),
            portal=portal,
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def squid_factory() -> Iterator[Callable[..., squid.Squid]]:
    """``squid_factory(**start_squid kwargs)``."""
    if not squid.available():
        pytest.skip("squid is not installed (scripts/sysdeps.sh installs it)")
    started: list[squid.Squid] = []

    def start(**kwargs: Any) -> squid.Squid:
        proxy = squid.start_squid(**kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def mitm_factory() -> Iterator[Callable[..., mitm.MitmProxy]]:
    """``mitm_factory(upstream=None, upstream_ca=None)``: mitmproxy intercepting TLS."""
    if not mitm.available():
        pytest.skip("mitmdump is not installed in the virtualenv (pip install mitmproxy)")
    started: list[mitm.MitmProxy] = []

    def start(**kwargs: Any) -> mitm.MitmProxy:
        proxy = mitm.start_mitmproxy(**kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def nginx_factory(test_ca: TestCA) -> Iterator[Callable[..., nginx.Nginx]]:
    """``nginx_factory(names, upstream, websocket=False, read_timeout=60)``."""
    if not nginx.available():
        pytest.skip("nginx is not installed (scripts/sysdeps.sh installs nginx-light)")
    started: list[nginx.Nginx] = []

    def start(names: list[str], upstream: str, **kwargs: Any) -> nginx.Nginx:
        proxy = nginx.start_nginx(ca=test_ca, names=names, upstream=upstream, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
