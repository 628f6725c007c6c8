"""The cloud's log under attack, against a real cloud on loopback: what a gateway sends cannot
forge log lines, and no secret (API token, enrollment token, password) is ever logged."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import aiohttp
import httpx
import pytest
from tests.support.cloudproc import Cloud, RawLink, create_token, enroll_gateway

from tether.cloud.accounts import ADMIN_PASSWORD_FILE
from tether.pki.estclient import client_ssl_context
from tether.protocol.codec import FrameDecoder, encode_frames
from tether.protocol.enrollment import decode_code
from tether.protocol.messages import (
    CloseCode,
    CommandUpdate,
    ConfigAck,
    ErrorReport,
    Hello,
    Message,
    NetcheckReport,
)
from tether.protocol.session import LinkSession, Role

FORGED = "2026-01-01 00:00:00,000 INFO    tether.cloud.app: FORGED"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("tether")]


async def _exchange(cloud: Cloud, credentials: Path, messages: list[Message]) -> list[Message]:
    context = client_ssl_context(cloud.ca_path, credentials, credentials)
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(
            f"{cloud.url}/link/exchange?tier=poll", data=encode_frames(messages), ssl=context
        ) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return FrameDecoder(max_frame=1 << 20).feed(await answer.read())


async def test_what_a_gateway_sends_cannot_forge_a_log_line(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = (await create_token(api, name="site-liar"))["enrollment_code"]
    identity = await enroll_gateway(code, tmp_path / "gw")
    credentials = identity.credentials_path
    caplog.set_level(logging.INFO, logger="tether")
    lie = "x\n" + FORGED

    answers = await _exchange(
        cloud,
        credentials,
        [
            Hello(protocol_versions=[1], agent_version="1", max_frame=1 << 20, boot_id="b"),
            ConfigAck(section="connectors\n" + FORGED, version=1, ok=False, error=lie),
            CommandUpdate(command_id="c", state="running"),  # unknown: refused, not logged
            NetcheckReport(ts=1.0, report={"status": lie}),
        ],
    )
    assert any(isinstance(m, ErrorReport) for m in answers)

    link = RawLink(cloud.url, client_ssl_context(cloud.ca_path, credentials, credentials))
    link.session = LinkSession(Role.CLIENT, now=0.0, agent_version=lie, boot_id="raw")
    async with link:
        link.session.close(CloseCode.NORMAL, lie)

    lines = _lines(caplog)
    assert any("refused" in line and "FORGED" in line for line in lines)  # it was logged...
    assert any("linked (agent" in line and "FORGED" in line for line in lines)
    assert any("ran its preflight" in line and "FORGED" in line for line in lines)
    forged = [line for line in lines if "\n" in line or "\r" in line]
    assert forged == []  # ...as one line


async def test_no_secret_reaches_the_log(
    cloud: Cloud, api: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await create_token(api, name="site-quiet")
    code = token["enrollment_code"]
    await enroll_gateway(code, tmp_path / "gw")
    async with cloud.api() as again:  # a spent code, refused: the refusal names no secret
        refused = await again.post(
            "/.well-known/est/simpleenroll",
            content=b"x",
            headers={"Authorization": f"Bearer {decode_code(code).secret}"},
        )
    assert refused.status_code in (400, 401)
    async with cloud.api(token="tt_not-a-real-token-but-a-guess") as wrong:
        assert (await wrong.get("/api/v1/whoami")).status_code == 401
    created = await api.post("/api/v1/me/tokens", json={"label": "mine"})
    assert created.status_code == 201
    async with cloud.api(token=created.json()["secret"]) as mine:
        assert (await mine.get("/api/v1/whoami")).status_code == 200

    secrets = {
        "admin token": cloud.admin_token,
        "admin password": (cloud.data_dir / ADMIN_PASSWORD_FILE).read_text().strip(),
        "enrollment code": code,
        "enrollment secret": decode_code(code).secret,
        "user token": created.json()["secret"],
        "guessed token": "tt_not-a-real-token-but-a-guess",
    }
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert re.search(r"enroll", text)  # the log did record the enrollment
    leaked = [name for name, secret in secrets.items() if secret in text]
    assert leaked == []


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer {token}\x01",
        "Authorization : Bearer {token}",
        "Cookie: __Host-tether-session={token}\x7f",
        "Authorization: Bearer {token}" + "A" * 9000,
    ],
    ids=["control-character", "space-before-colon", "cookie", "too-long"],
)
async def test_a_malformed_request_is_logged_in_one_line_without_its_bytes(
    cloud: Cloud, caplog: pytest.LogCaptureFixture, header: str
) -> None:
    caplog.set_level(logging.DEBUG)
    token = cloud.admin_token
    reader, writer = await asyncio.open_connection("127.0.0.1", cloud.port, ssl=cloud.ssl_context())
    try:
        line = header.format(token=token)
        writer.write(f"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    refused = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].levelno == logging.WARNING
    assert refused[0].exc_info is None
    assert token not in caplog.text
    assert all(token not in r.getMessage() for r in caplog.records)
