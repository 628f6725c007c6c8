"""MQTT: the application answer of an MQTT-over-TLS endpoint (CONNECT → CONNACK, MQTT 3.1.1).

Any CONNACK proves a broker answered, even one refusing our anonymous client: the path works.
"""

from __future__ import annotations

import asyncio
import struct

__all__ = ["CONNACK_CODES", "MqttError", "connect_packet", "mqtt_connect"]

CONNACK_CODES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttError(Exception):
    """The peer did not answer like an MQTT broker."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str = "tether-preflight", keepalive: int = 30) -> bytes:
    ident = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    payload = struct.pack("!H", len(ident)) + ident
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


async def mqtt_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Send CONNECT and return the CONNACK return code. Bound it with ``asyncio.timeout``."""
    writer.write(connect_packet())
    await writer.drain()
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        raise MqttError(f"connection closed after {len(exc.partial)} bytes, no CONNACK") from None
    if header[0] != 0x20 or header[1] != 0x02:
        raise MqttError(f"not a CONNACK: {header.hex()}")
    return header[3]
