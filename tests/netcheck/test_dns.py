"""Resolution through a specific resolver, against the test bed's DNS server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from tests.support.testbed.dnsserver import DNSServer

from tether.netcheck.dns import (
    Outcome,
    Resolver,
    dedupe,
    hosts_file_addresses,
    parse_resolver,
    resolve,
    system_resolvers,
)


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("192.0.2.1", "192.0.2.1", 53),
        ("192.0.2.1:5353", "192.0.2.1", 5353),
        ("::1", "::1", 53),
        ("[::1]:5353", "::1", 5353),
        ("[2001:db8::1]", "2001:db8::1", 53),
    ],
)
def test_parse_resolver(text: str, address: str, port: int) -> None:
    resolver = parse_resolver(text)
    assert (resolver.address, resolver.port) == (address, port)


@pytest.mark.parametrize("text", ["resolver.test", "192.0.2.1:x", "[::1]x", "192.0.2.1:70000"])
def test_parse_resolver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad resolver"):
        parse_resolver(text)


def test_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch site.test\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
        "nameserver bogus\noptions edns0\n"
    )
    assert [(r.address, r.source) for r in system_resolvers(conf)] == [
        ("192.0.2.53", "system"),
        ("fe80::1", "system"),
    ]
    assert system_resolvers(tmp_path / "missing") == []


def test_dedupe_merges_sources() -> None:
    merged = dedupe([Resolver("192.0.2.1", 53, "system"), Resolver("192.0.2.1", 53, "dhcp eth0")])
    assert merged == [Resolver("192.0.2.1", 53, "system, dhcp eth0")]


async def test_resolve_outcomes(dns_factory: Callable[..., DNSServer]) -> None:
    server = dns_factory(
        {
            "api.site.test": ["127.0.0.1", "::1"],
            "v4only.site.test": ["127.0.0.2"],
            "*.wild.site.test": ["127.0.0.3"],
        },
        nxdomain=["gone.site.test"],
        silent=["slow.site.test"],
    )
    resolver = Resolver("127.0.0.1", server.port)

    ok = await resolve("api.site.test", resolver)
    assert ok.outcome is Outcome.OK
    assert ok.ipv4 == ("127.0.0.1",)
    assert ok.ipv6 == ("::1",)
    assert (await resolve("x.wild.site.test", resolver)).addresses == ("127.0.0.3",)
    assert (await resolve("gone.site.test", resolver)).outcome is Outcome.NXDOMAIN
    assert (await resolve("v4only.site.test", resolver)).ipv6 == ()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await resolve("slow.site.test", resolver)
    assert ("slow.site.test", "A") in server.queries


async def test_resolver_port_closed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens: the query goes unanswered, which the caller's bound turns into a timeout.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await resolve("api.site.test", Resolver("127.0.0.1", port))


class _RefusesAAAA(DNSServer):
    """Answers A, refuses AAAA: some filtering resolvers do exactly that."""

    def _answer(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        if query.question and query.question[0].rdtype == dns.rdatatype.AAAA:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED)
            return bytes(response.to_wire())
        return super()._answer(data)


async def test_an_a_answer_is_kept_when_aaaa_is_refused() -> None:
    server = _RefusesAAAA(
        records={"tether.site.test": ["127.0.0.1"]}, nxdomain=set(), silent=set()
    ).start()
    try:
        async with asyncio.timeout(10):
            answer = await resolve("tether.site.test", Resolver("127.0.0.1", server.port))
    finally:
        server.stop()
    assert answer.outcome is Outcome.OK
    assert answer.addresses == ("127.0.0.1",)
    assert "AAAA query: REFUSED" in answer.detail


def test_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost # loopback\n"
        "10.0.0.5 Tether.Site.Test tether\n# 10.9.9.9 commented.test\nbogus line.test\n"
    )
    assert hosts_file_addresses("localhost", hosts) == ("127.0.0.1", "::1")
    assert hosts_file_addresses("tether.site.test", hosts) == ("10.0.0.5",)
    assert hosts_file_addresses("commented.test", hosts) == ()
    assert hosts_file_addresses("line.test", hosts) == ()
    assert hosts_file_addresses("x.test", tmp_path / "missing") == ()


def test_hosts_file_names_each_address_once_without_its_zone(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "fe80::1%eth0 router.test\n10.0.0.7 router.test.\n"
        '10.0.0.7 router.test\n"10.0.0.8" router.test\n'
    )
    assert hosts_file_addresses("router.test", hosts) == ("fe80::1", "10.0.0.7")
