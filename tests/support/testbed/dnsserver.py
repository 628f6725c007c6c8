"""A small UDP DNS server answering from a table: the test bed's only source of names.

Names in ``records`` get A/AAAA answers, names in ``nxdomain`` (and any unknown name) get
NXDOMAIN, names in ``silent`` get no answer at all (a resolver that drops the query).
A suffix entry written ``*.example.test`` covers every name below ``example.test``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _match(table: Mapping[str, object] | set[str], name: str) -> str | None:
    name = name.rstrip(".").lower()
    for key in table:
        key_l = key.lower()
        if key_l == name or (key_l.startswith("*.") and name.endswith(key_l[1:])):
            return key
    return None


@dataclass
class DNSServer:
    """Answer DNS queries from a table, in a background thread, until ``stop()``."""

    records: dict[str, list[str]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    host: str = "127.0.0.1"
    port: int = 0
    queries: list[tuple[str, str]] = field(default_factory=list)  # (name, type) seen

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((self.host, self.port))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        """``IP:PORT`` as the ``--resolver`` option takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> DNSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), rdtype))
        if _match(self.silent, name) is not None:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        key = _match(self.records, name)
        if key is None or _match(self.nxdomain, name) is not None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return bytes(response.to_wire())
        wanted = {"A": 4, "AAAA": 6}.get(rdtype)
        addresses = [a for a in self.records[key] if ipaddress.ip_address(a).version == wanted]
        if addresses:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 30, dns.rdataclass.IN, rdtype, addresses)
            )
        return bytes(response.to_wire())


@contextmanager
def dns_server(
    records: Mapping[str, Sequence[str]],
    *,
    nxdomain: Sequence[str] = (),
    silent: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[DNSServer]:
    server = DNSServer(
        records={k: list(v) for k, v in records.items()},
        nxdomain=set(nxdomain),
        silent=set(silent),
        host=host,
        port=port,
    ).start()
    try:
        yield server
    finally:
        server.stop()
