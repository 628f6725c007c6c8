"""Console and account helpers for tests: users through the API, logins through the real form.

    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "operator")
        async with console_client(cloud) as client:
            session = await console_login(client, "olga", password)
            page = await client.get("/console/")

The session cookie is read from the login answer and sent by hand (``session.cookies``), so a
test decides exactly which cookie and which CSRF token each request carries.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import httpx

from tether.cloud.accounts import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE

from .cloudproc import DEFAULT_TIMEOUT, Cloud

__all__ = [
    "LOGIN_COOKIE",
    "ConsoleSession",
    "console_client",
    "console_login",
    "create_user",
    "set_cookie",
    "user_token",
]

LOGIN_COOKIE = "__Host-tether-login"
_META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def set_cookie(response: httpx.Response, name: str) -> tuple[str, dict[str, str]] | None:
    """The value and attributes of cookie *name* set by *response* (None if not set)."""
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar:
            morsel = jar[name]
            attributes = {k.lower(): str(v) for k, v in morsel.items() if v not in ("", False)}
            for flag in ("secure", "httponly"):
                if re.search(rf";\s*{flag}\b", header, re.IGNORECASE):
                    attributes[flag] = "true"
            return morsel.value, attributes
    return None


@dataclass
class ConsoleSession:
    username: str
    secret: str  # the session cookie's value
    csrf: str

    @property
    def cookies(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.secret}"}

    def form(self, **fields: str) -> dict[str, str]:
        """Form fields with the session's CSRF token."""
        return {CSRF_FIELD: self.csrf, **fields}

    def api_headers(self) -> dict[str, str]:
        """Headers for an API request made with the session (cookie and CSRF header)."""
        return {**self.cookies, CSRF_HEADER: self.csrf}


@asynccontextmanager
async def console_client(cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the cloud's TLS port, verifying it against the platform CA, no cookie jar
    use (tests pass cookies explicitly), redirects not followed."""
    async with httpx.AsyncClient(
        base_url=cloud.url,
        verify=cloud.ssl_context(),
        trust_env=False,
        timeout=DEFAULT_TIMEOUT,
        follow_redirects=False,
    ) as client:
        yield client


async def console_login(
    client: httpx.AsyncClient, username: str, password: str, *, expect: int = 303
) -> ConsoleSession:
    """Log in through the form (GET then POST, as a browser does)."""
    form_page = await client.get("/console/login")
    client.cookies.clear()
    assert form_page.status_code == 200, form_page.text
    login_cookie = set_cookie(form_page, LOGIN_COOKIE)
    token = _LOGIN_TOKEN.search(form_page.text)
    assert login_cookie is not None
    assert token is not None
    answer = await client.post(
        "/console/login",
        data={"username": username, "password": password, "login_token": token.group(1)},
        headers={"Cookie": f"{LOGIN_COOKIE}={login_cookie[0]}"},
    )
    client.cookies.clear()
    assert answer.status_code == expect, answer.text
    if expect != 303:
        return ConsoleSession(username=username, secret="", csrf="")
    session_cookie = set_cookie(answer, SESSION_COOKIE)
    assert session_cookie is not None
    session = ConsoleSession(username=username, secret=session_cookie[0], csrf="")
    page = await client.get("/console/account", headers=session.cookies)
    client.cookies.clear()
    assert page.status_code == 200, page.text
    csrf = _META_CSRF.search(page.text)
    assert csrf is not None
    session.csrf = csrf.group(1)
    return session


async def create_user(
    api: httpx.AsyncClient, username: str, role: str, password: str | None = None
) -> str:
    """Create a user through the API (admin token); returns their password."""
    answer = await api.post(
        "/api/v1/users", json={"username": username, "role": role, "password": password}
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return password or str(body["password"])


async def user_token(api: httpx.AsyncClient, username: str, label: str = "test") -> str:
    """An API token for a user, with their role (admin token)."""
    answer = await api.post(f"/api/v1/users/{username}/tokens", json={"label": label})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["secret"])
