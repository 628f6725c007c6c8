"""The MQTT application answer against a real broker (Debian's mosquitto)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from tests.support.testbed.proc import free_port, is_listening, start_process, stop_process

from tether.netcheck.mqtt import MqttError, connect_packet, mqtt_connect

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def test_connect_packet_layout() -> None:
    packet = connect_packet("c")
    assert packet[0] == 0x10
    assert packet[1] == len(packet) - 2
    assert packet[2:8] == b"\x00\x04MQTT"
    assert packet[8] == 4  # protocol level 3.1.1


async def test_connack_from_mosquitto(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (scripts/sysdeps.sh installs it)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n")
    process = start_process(
        [MOSQUITTO, "-c", str(conf)],
        log=tmp_path / "mosquitto.log",
        ready=lambda: is_listening("127.0.0.1", port),
        what="mosquitto",
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(5):
                code = await mqtt_connect(reader, writer)
        finally:
            writer.close()
        assert code == 5  # not authorized: still a broker answering
    finally:
        stop_process(process)


async def test_not_a_broker() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(MqttError, match="not a CONNACK"):
            async with asyncio.timeout(5):
                await mqtt_connect(reader, writer)
        writer.close()
