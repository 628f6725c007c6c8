"""Time: SNTP queries, the HTTPS ``Date`` fallback, and whether the clock can be trusted.

Certificate checks need a roughly right clock. The gateway takes time from NTP servers DHCP
advertised (option 42), then from the manifest's fallback pool, and when UDP 123 is blocked
from the ``Date`` header of its own cloud's HTTPS answers. A clock earlier than the software's
build time (:data:`tether.BUILD_TIME`) is certainly wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import struct
import time
from dataclasses import dataclass

__all__ = [
    "MAX_OFFSET",
    "NtpAnswer",
    "NtpError",
    "parse_http_date",
    "sntp_query",
]

NTP_EPOCH_OFFSET = 2_208_988_800  # 1900-01-01 → 1970-01-01
MAX_OFFSET = 60.0  # seconds: beyond this the clock is called wrong


class NtpError(Exception):
    """No usable NTP answer; ``kind`` is refused, timeout or bad."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class NtpAnswer:
    server: str
    offset: float  # seconds to add to the local clock
    delay: float  # round trip
    stratum: int


def _to_ntp(unix: float) -> bytes:
    seconds = int(unix) + NTP_EPOCH_OFFSET
    fraction = int((unix - int(unix)) * 2**32)
    return struct.pack("!II", seconds & 0xFFFFFFFF, fraction & 0xFFFFFFFF)


def _from_ntp(data: bytes) -> float:
    seconds, fraction = struct.unpack("!II", data)
    return float(seconds - NTP_EPOCH_OFFSET + fraction / 2**32)


class _SntpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[tuple[bytes, float]] = loop.create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.answer.done():
            self.answer.set_result((data, time.time()))

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def sntp_query(address: str, port: int = 123) -> NtpAnswer:
    """One SNTPv4 request/response (RFC 4330). Bound it with ``asyncio.timeout``."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _SntpProtocol, remote_addr=(address, port)
    )
    try:
        # The transmit timestamp is random-salted so a stale or spoofed reply cannot match.
        sent = time.time()
        stamp = _to_ntp(sent)[:4] + os.urandom(4)
        transport.sendto(b"\x23" + b"\x00" * 39 + stamp)
        try:
            data, received = await protocol.answer
        except ConnectionRefusedError:
            raise NtpError("refused", "port unreachable: nothing answers on UDP 123") from None
        except OSError as exc:
            raise NtpError("refused", exc.strerror or str(exc)) from None
    finally:
        transport.close()
    if len(data) < 48:
        raise NtpError("bad", f"short NTP reply ({len(data)} bytes)")
    mode = data[0] & 0x7
    stratum = data[1]
    if mode != 4 or data[24:32] != stamp:
        raise NtpError("bad", "reply does not answer our request")
    if stratum == 0:
        raise NtpError("bad", f"kiss-o'-death {data[12:16].decode('ascii', 'replace')!r}")
    t2 = _from_ntp(data[32:40])
    t3 = _from_ntp(data[40:48])
    offset = ((t2 - sent) + (t3 - received)) / 2
    delay = (received - sent) - (t3 - t2)
    return NtpAnswer(server=f"{address}:{port}", offset=offset, delay=delay, stratum=stratum)


def parse_http_date(value: str | None) -> dt.datetime | None:
    """An HTTP ``Date`` header as an aware UTC datetime, or None."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)
