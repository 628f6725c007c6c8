"""Password guessing against a real cloud on loopback: attempts sent together are throttled as
if sent one by one, and a stolen token cannot guess its owner's password through the password
change."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from tests.support.cloudproc import Cloud
from tests.support.console import (
    LOGIN_COOKIE,
    console_client,
    console_login,
    create_user,
    set_cookie,
    user_token,
)

from tether.cloud.accounts import AccountPolicy

PASSWORD = "the right passphrase"
LIMIT = AccountPolicy().login_failures


async def test_login_attempts_sent_together_are_throttled_as_if_one_by_one(
    cloud: Cloud, api: httpx.AsyncClient
) -> None:
    await create_user(api, "target", "viewer", PASSWORD)
    async with console_client(cloud) as client:
        form = await client.get("/console/login")
        login_cookie = set_cookie(form, LOGIN_COOKIE)
        assert login_cookie is not None
        client.cookies.clear()

        async def attempt(password: str) -> int:
            answer = await client.post(
                "/console/login",
                data={"username": "target", "password": password, "login_token": login_cookie[0]},
                headers={"Cookie": f"{LOGIN_COOKIE}={login_cookie[0]}"},
            )
            return answer.status_code

        guesses = [f"guess number {i}" for i in range(3 * LIMIT)]
        statuses = await asyncio.gather(*(attempt(g) for g in guesses))
        assert Counter(statuses) == {401: LIMIT, 429: 2 * LIMIT}
        assert await attempt(PASSWORD) == 429  # the right one too, until the window passes


async def test_a_token_cannot_guess_its_owners_password_faster_than_the_login_form(
    cloud: Cloud, api: httpx.AsyncClient
) -> None:
    await create_user(api, "owner", "viewer", PASSWORD)
    stolen = await user_token(api, "owner")
    async with cloud.api(token=stolen) as thief:

        async def change(current: str) -> httpx.Response:
            return await thief.post(
                "/api/v1/me/password",
                json={"current_password": current, "new_password": "the thief's passphrase"},
            )

        statuses = [(await change(f"guess number {i}")).status_code for i in range(LIMIT)]
        assert statuses == [403] * LIMIT
        throttled = await change(PASSWORD)
        assert throttled.status_code == 429, throttled.text
        assert int(throttled.headers["Retry-After"]) >= 1
    # The guesses count as failed logins of the owner from that source: the form says so too.
    async with console_client(cloud) as client:
        await console_login(client, "owner", PASSWORD, expect=429)
    audit = (await api.get("/api/v1/audit")).json()
    failed = [a for a in audit if a["action"] == "session.login-failed" and a["target"] == "owner"]
    assert len(failed) == LIMIT
