"""Console forms and pages as a person meets them when something is off: input a form would not
send, an action that came too late, an address that leads nowhere, a role that may not, and
names and messages from gateways that carry markup.

A real cloud over TLS; gateways, logs and points are stored the way the cloud stores what
agents send, then the console is used through a logged-in session.
"""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from markupsafe import escape
from tests.support.cloudproc import Cloud, running_cloud
from tests.support.console import (
    LOGIN_COOKIE,
    ConsoleSession,
    console_client,
    console_login,
    create_user,
    set_cookie,
)

from tether.cloud.store import Store
from tether.cloud.store.health import HealthStore
from tether.cloud.store.telemetry import TelemetryStore
from tether.protocol.telemetry import DeviceInfo, PointInfo

HOSTILE = '<img src=x onerror="alert(1)">&<script>alert(2)</script>'


async def _admin(client: httpx.AsyncClient, cloud: Cloud) -> ConsoleSession:
    password = (cloud.data_dir / "admin.password").read_text().strip()
    return await console_login(client, "admin", password)


async def _gateway(cloud: Cloud, gateway_id: str, name: str) -> Store:
    store = await Store.open(cloud.database)
    await store.create_gateway(gateway_id=gateway_id, name=name, now=datetime.now(UTC))
    return store


async def test_refused_input_is_said_in_words_and_nothing_is_made(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as api,
        console_client(cloud) as client,
    ):
        store = await _gateway(cloud, "gw-f1", "forms")
        await store.close()
        admin = await _admin(client, cloud)
        post = admin.cookies

        for ttl in ("nan", "inf", "soon"):
            sent = await client.post(
                "/console/gateways/gw-f1/commands",
                data=admin.form(kind="ping", args="{}", ttl=ttl),
                headers=post,
            )
            assert sent.status_code == 400, ttl
            assert "Expires after: a number of seconds." in sent.text
        assert (await api.get("/api/v1/commands", params={"gateway": "gw-f1"})).json() == []

        for hours in ("0.001", "nan", "721"):
            made = await client.post(
                "/console/tokens", data=admin.form(name="short", hours=hours), headers=post
            )
            assert made.status_code == 400, hours
            assert "Valid for: 1 to 720 hours." in made.text
        assert "short" not in (await api.get("/api/v1/tokens")).text

        for days in ("inf", "1e400", "nan", "-5", "many"):
            token = await client.post(
                "/console/account/token", data=admin.form(label=f"d{days}", days=days), headers=post
            )
            assert token.status_code == 400, days
            assert "Valid for: a number of days." in token.text
        account = await client.get("/console/account", headers=post)
        assert "dinf" not in account.text
        assert "d1e400" not in account.text


async def test_a_cancel_that_came_too_late_says_so(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as api,
        console_client(cloud) as client,
    ):
        store = await _gateway(cloud, "gw-c1", "cancels")
        await store.close()
        admin = await _admin(client, cloud)
        queued = await api.post("/api/v1/gateways/gw-c1/commands", json={"kind": "ping"})
        assert queued.status_code == 201, queued.text
        command_id = queued.json()["id"]

        first = await client.post(
            f"/console/commands/{command_id}/cancel", data=admin.form(), headers=admin.cookies
        )
        assert first.status_code == 303
        again = await client.post(
            f"/console/commands/{command_id}/cancel", data=admin.form(), headers=admin.cookies
        )
        assert again.status_code == 409
        assert "ping was not cancelled: it is already cancelled" in again.text
        assert 'role="alert"' in again.text

        nowhere = await client.post(
            "/console/commands/no-such-command/cancel", data=admin.form(), headers=admin.cookies
        )
        assert nowhere.status_code == 404
        assert "<h1>Not found</h1>" in nowhere.text
        assert 'class="mainnav"' in nowhere.text  # the console's page, with its menu


async def test_unknown_addresses_and_refused_roles_get_the_console_page(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as api,
        console_client(cloud) as client,
    ):
        await create_user(api, "val", "viewer", "viewer passphrase")
        viewer = await console_login(client, "val", "viewer passphrase")
        admin = await _admin(client, cloud)

        for path in ("/console/no/such/page", "/console/network/document.exe"):
            page = await client.get(path, headers=admin.cookies)
            assert page.status_code == 404, path
            assert page.headers["content-type"].startswith("text/html")
            assert "<h1>Not found</h1>" in page.text
            assert "Log out" in page.text
            assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
        wrong_action = await client.post(
            "/console/users/val/frobnicate", data=admin.form(), headers=admin.cookies
        )
        assert wrong_action.status_code == 404
        assert "<h1>Not found</h1>" in wrong_action.text

        anonymous = await client.get("/console/no/such/page")
        assert anonymous.status_code == 404
        assert "<h1>Not found</h1>" in anonymous.text
        assert "Log out" not in anonymous.text

        refused = await client.get("/console/users", headers=viewer.cookies)
        assert refused.status_code == 403
        assert "Your role (viewer) may not manage users and their tokens." in refused.text
        assert 'class="mainnav"' in refused.text
        assert ">Users<" not in refused.text  # the menu is the viewer's own


async def test_names_and_messages_from_gateways_are_shown_as_text(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, console_client(cloud) as client:
        store = await _gateway(cloud, "gw-x1", HOSTILE)
        try:
            health = HealthStore(store.engine)
            await health.add_logs(
                "gw-x1",
                [
                    {
                        "ts": time.time(),
                        "level": "error",
                        "source": HOSTILE,
                        "message": f"reading {HOSTILE} failed",
                        "customer_data": False,
                        "fields": None,
                    }
                ],
            )
            device = DeviceInfo(device_id="d1", name=HOSTILE, kind="meter", location=HOSTILE)
            point = PointInfo(point_id="d1/p1", device_id="d1", name=HOSTILE, unit=HOSTILE)
            await TelemetryStore(store.engine).record_discovery("gw-x1", "sim", [device], [point])
        finally:
            await store.close()
        admin = await _admin(client, cloud)
        pages = {
            "fleet": (await client.get("/console/", headers=admin.cookies)).text,
            "gateway": (await client.get("/console/gateways/gw-x1", headers=admin.cookies)).text,
        }
        live = await client.get(
            "/console/gateways/gw-x1/live",
            params={"regions": "gw-logs,gw-points"},
            headers={**admin.cookies, "X-Tether-Live": "1"},
        )
        for name, region in live.json()["regions"].items():
            pages[f"live {name}"] = region
        for name, text in pages.items():
            assert "<script>alert" not in text, name
            assert "<img src=x" not in text, name
        escaped = str(escape(HOSTILE))  # as the templates escape it
        assert escaped in pages["gateway"]  # shown, as text
        assert escaped in pages["fleet"]
        assert f"reading {escaped} failed" in pages["live gw-logs"]


async def test_a_mistyped_password_keeps_the_username_and_where_the_person_was_going(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, console_client(cloud) as client:
        target = "/console/gateways/gw-1?sent=c1"
        form_page = await client.get("/console/login", params={"next": target})
        client.cookies.clear()
        login_token = re.search(r'name="login_token" value="([^"]+)"', form_page.text)
        login_cookie = set_cookie(form_page, LOGIN_COOKIE)
        assert login_token is not None
        assert login_cookie is not None
        cookie = {"Cookie": f"{LOGIN_COOKIE}={login_cookie[0]}"}
        hidden_next = re.search(r'name="next" value="([^"]+)"', form_page.text)
        assert hidden_next is not None
        fields = {"login_token": login_token.group(1), "next": html.unescape(hidden_next.group(1))}

        refused = await client.post(
            "/console/login",
            data={**fields, "username": "admin", "password": "not the password"},
            headers=cookie,
        )
        client.cookies.clear()
        assert refused.status_code == 401
        assert 'id="username"' in refused.text
        assert 'value="admin"' in refused.text  # typed once
        assert re.search(r'id="password"[^>]*autofocus', refused.text)  # the field to fill
        again = re.search(r'name="next" value="([^"]+)"', refused.text)
        assert again is not None
        assert html.unescape(again.group(1)) == target

        token = re.search(r'name="login_token" value="([^"]+)"', refused.text)
        cookie_again = set_cookie(refused, LOGIN_COOKIE)
        assert token is not None
        assert cookie_again is not None
        password = (cloud.data_dir / "admin.password").read_text().strip()
        logged_in = await client.post(
            "/console/login",
            data={
                "login_token": token.group(1),
                "next": html.unescape(again.group(1)),
                "username": "admin",
                "password": password,
            },
            headers={"Cookie": f"{LOGIN_COOKIE}={cookie_again[0]}"},
        )
        client.cookies.clear()
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == target
