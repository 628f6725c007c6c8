"""An SNTP responder (RFC 4330) and a "blocked" NTP port that swallows every request."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def _ntp_timestamp(unix: float) -> bytes:
    seconds = int(unix) + NTP_EPOCH_OFFSET
    fraction = int((unix % 1) * 2**32)
    return struct.pack("!II", seconds & 0xFFFFFFFF, fraction & 0xFFFFFFFF)


@dataclass
class NTPServer:
    """Answer SNTP client requests with this host's clock plus ``offset`` seconds.

    With ``answer=False`` it binds the port but never replies: a firewall that drops UDP 123.
    """

    host: str = "127.0.0.1"
    port: int = 0
    offset: float = 0.0
    answer: bool = True
    requests: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((self.host, self.port))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="test-ntp", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> NTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            if not self.answer or len(data) < 48:
                continue
            now = time.time() + self.offset
            version = (data[0] >> 3) & 0x7
            header = struct.pack(
                "!BBbbII4s",
                (0 << 6) | (version << 3) | 4,  # no leap warning, server mode
                2,  # stratum
                data[2],  # poll, echoed
                -20,  # precision
                0,
                0,
                b"TEST",
            )
            reply = header + _ntp_timestamp(now) + data[40:48] + _ntp_timestamp(now)
            reply += _ntp_timestamp(time.time() + self.offset)
            self._sock.sendto(reply, peer)


@contextmanager
def ntp_server(
    *, host: str = "127.0.0.1", offset: float = 0.0, answer: bool = True
) -> Iterator[NTPServer]:
    server = NTPServer(host=host, offset=offset, answer=answer).start()
    try:
        yield server
    finally:
        server.stop()
