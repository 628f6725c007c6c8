"""The console's login form cannot be used to hold a connection with a slow or large body."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.cloudproc import Cloud, running_cloud
from tests.support.console import console_client, set_cookie

from tether.cloud.console import LOGIN_COOKIE, LOGIN_FORM_MAX

#: A bound on how long an answer may take before the test fails (not a sleep: an answer
#: that comes ends the wait at once).
ANSWER_BOUND = 15.0


async def _post_head_only(cloud: Cloud, cookie: str | None, length: int) -> bytes:
    """Send a login POST's head declaring *length* body bytes, send none, read the answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cloud.port, ssl=cloud.ssl_context(), server_hostname="localhost"
    )
    try:
        head = (
            "POST /console/login HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{cloud.port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {length}\r\n"
            + (f"Cookie: {LOGIN_COOKIE}={cookie}\r\n" if cookie else "")
            + "\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(ANSWER_BOUND):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_a_login_post_without_our_form_is_answered_before_its_body(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        answer = await _post_head_only(cloud, None, 2_000_000)
        assert answer.startswith(b"HTTP/1.1 403"), answer


async def test_a_login_form_too_large_is_refused_unread(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, console_client(cloud) as client:
        page = await client.get("/console/login")
        assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
        cookie = set_cookie(page, LOGIN_COOKIE)
        assert cookie is not None
        answer = await _post_head_only(cloud, cookie[0], LOGIN_FORM_MAX + 1)
        assert answer.startswith(b"HTTP/1.1 413"), answer
