"""Every route of the operator API and of the console, called by every role: a generated matrix.

The cases come from the route tables themselves (:data:`tether.cloud.api.ROUTES` and
:data:`tether.cloud.console.views.ROUTES`) and the permission table
(:data:`tether.cloud.api.PERMISSIONS`): a role the permission names must get the route's
success status, any other role 403, no credentials 401 (the API) or the login form (the
console). Path parameters are made fresh per call (a new gateway, command, user or token) so
no call depends on what an earlier one changed; each gateway made here comes with a support
grant for the support role's user, whose diagnostic commands need one. A new route whose request
type or console handler has no example here fails the test until one is added.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from tests.support.cloudproc import Cloud, running_cloud
from tests.support.console import (
    ConsoleSession,
    console_client,
    console_login,
    create_user,
    user_token,
)

from tether.cloud import accounts as acc
from tether.cloud import api
from tether.cloud.app import own_manifest
from tether.cloud.console.views import ROUTES as CONSOLE_ROUTES
from tether.cloud.store import ROLES, Store
from tether.netreq.render import build_rules
from tether.pki.ca import CertificateAuthority

PASSWORD = "matrix passphrase"
SUPPORT_USER = "as-support"
_serial = itertools.count(1)


def _fresh(prefix: str) -> str:
    return f"{prefix}{next(_serial)}"


@dataclass
class World:
    """The running cloud, its store, an admin API client, and one user per role."""

    cloud: Cloud
    store: Store
    admin: httpx.AsyncClient
    tokens: dict[str, str]  # role -> API token of that role's user
    sessions: dict[str, ConsoleSession]  # role -> console session of that role's user
    shared: dict[str, str] = field(default_factory=dict)  # objects for calls that are refused

    async def gateway(self, *, granted: bool = True) -> str:
        """A new gateway; *granted*: with a support grant for the support role's user."""
        gateway_id = _fresh("gw-matrix-")
        await self.store.create_gateway(gateway_id=gateway_id, name=gateway_id, now=_now())
        if granted:
            await self.grant_support(gateway_id)
        return gateway_id

    async def grant_support(self, gateway_id: str) -> str:
        record = await self.store.create_support_grant(
            gateway_id=gateway_id,
            username=SUPPORT_USER,
            scope="diagnose",
            reason="matrix",
            created_by="matrix",
            now=_now(),
            expires_at=_now() + timedelta(hours=1),
        )
        return record.grant_id

    async def grant(self) -> str:
        """A support grant that still counts, on a gateway of its own."""
        return await self.grant_support(await self.gateway(granted=False))

    async def command(self) -> str:
        record = await self.store.create_command(
            gateway_id=await self.gateway(),
            kind="ping",
            args={},
            expires_at=_now() + timedelta(hours=1),
            created_by="matrix",
            now=_now(),
        )
        return record.command_id

    async def enrollment_token(self) -> str:
        record, _secret = await self.store.create_enrollment_token(
            gateway_name=_fresh("site-"), ttl=timedelta(hours=1), created_by="matrix", now=_now()
        )
        return record.token_id

    async def user(self) -> str:
        username = _fresh("target")
        await create_user(self.admin, username, "viewer", PASSWORD)
        return username

    async def own_token(self, role: str) -> str:
        """A token owned by *role*'s user (so /me/tokens/{id} is theirs to revoke)."""
        async with self.cloud.api(self.tokens[role]) as client:
            answer = await client.post("/api/v1/me/tokens", json={"label": "matrix"})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"]["token_id"])


def _now() -> datetime:
    return datetime.now(UTC)


async def _path(
    world: World, route_path: str, role: str | None, values: dict[str, str], *, fresh: bool
) -> str:
    """The route's path with every parameter filled (or taken from *values*): by a fresh
    object when the call will reach the handler, else by one shared object of that kind."""
    makers: dict[str, Callable[[], Awaitable[str]]] = {
        "gateway_id": world.gateway,
        "command_id": world.command,
        "username": world.user,
        "token_id": lambda: world.own_token(role or "admin"),
        "enrollment_token_id": world.enrollment_token,
        "grant_id": world.grant,
    }
    path = route_path
    while "{" in path:
        name = path[path.index("{") + 1 : path.index("}")]
        if name in values:
            value = values[name]
        elif name in makers and fresh:
            value = await makers[name]()
        elif name in makers:
            if name not in world.shared:
                world.shared[name] = await makers[name]()
            value = world.shared[name]
        else:
            raise AssertionError(f"no example value for path parameter {{{name}}} ({route_path})")
        path = path.replace("{" + name + "}", value, 1)
    return path


def _api_body(request_type: Any) -> Any:
    """An example body of each request type the API uses."""
    examples: dict[Any, Callable[[], Any]] = {
        api.CommandIn: lambda: {"kind": "ping"},
        api.TokenIn: lambda: {"name": _fresh("matrix-")},
        dict[str, Any]: lambda: {"health_interval": 60},  # a configuration section
        acc.UserIn: lambda: {"username": _fresh("new"), "role": "viewer"},
        acc.RoleIn: lambda: {"role": "support"},
        acc.PasswordIn: lambda: {},
        acc.OwnPasswordIn: lambda: {"current_password": PASSWORD, "new_password": PASSWORD},
        acc.UserTokenIn: lambda: {"label": "matrix"},
        api.SupportGrantIn: lambda: {"user": SUPPORT_USER, "hours": 1, "reason": "matrix"},
    }
    if request_type is None:
        return None
    if request_type not in examples:
        raise AssertionError(f"add an example body for {request_type!r} to the role matrix")
    return examples[request_type]()


async def _world(cloud: Cloud, admin: httpx.AsyncClient, client: httpx.AsyncClient) -> World:
    tokens: dict[str, str] = {}
    sessions: dict[str, ConsoleSession] = {}
    for role in ROLES:
        username = f"as-{role}"
        await create_user(admin, username, role, PASSWORD)
        tokens[role] = await user_token(admin, username)
        sessions[role] = await console_login(client, username, PASSWORD)
    store = await Store.open(cloud.database)
    return World(cloud=cloud, store=store, admin=admin, tokens=tokens, sessions=sessions)


async def test_every_api_route_answers_each_role_as_its_permission_says(tmp_path: Path) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as admin,
        console_client(cloud) as client,
    ):
        world = await _world(cloud, admin, client)
        try:
            wrong: list[str] = []
            cases = 0
            for route in api.ROUTES:
                allowed = api.PERMISSIONS[route.permission]
                for role in (*ROLES, None):
                    path = await _path(
                        world, route.path, role, {"section": "agent"}, fresh=role in allowed
                    )
                    body = _api_body(route.request)
                    headers = {"Authorization": f"Bearer {world.tokens[role]}"} if role else {}
                    answer = await client.request(route.method, path, json=body, headers=headers)
                    expected = 401 if role is None else route.status if role in allowed else 403
                    cases += 1
                    if answer.status_code != expected:
                        wrong.append(
                            f"{route.method} {route.path} as {role or 'nobody'}: "
                            f"{answer.status_code}, expected {expected} ({answer.text[:120]})"
                        )
            assert cases == len(api.ROUTES) * (len(ROLES) + 1)
            assert not wrong, "\n".join(wrong)
        finally:
            await world.store.close()


async def test_the_api_through_a_console_session_honours_the_same_roles(tmp_path: Path) -> None:
    """The console's session cookie (with its CSRF header) is a credential like a token."""
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as admin,
        console_client(cloud) as client,
    ):
        world = await _world(cloud, admin, client)
        try:
            wrong: list[str] = []
            for route in api.ROUTES:
                if route.path.startswith("/api/v1/me/password"):
                    continue  # would end the other sessions of the user (tested elsewhere)
                for role in ROLES:
                    allowed = role in api.PERMISSIONS[route.permission]
                    path = await _path(world, route.path, role, {"section": "agent"}, fresh=allowed)
                    answer = await client.request(
                        route.method,
                        path,
                        json=_api_body(route.request),
                        headers=world.sessions[role].api_headers(),
                    )
                    expected = route.status if allowed else 403
                    if answer.status_code != expected:
                        wrong.append(
                            f"{route.method} {route.path} as {role} (session): "
                            f"{answer.status_code}, expected {expected} ({answer.text[:120]})"
                        )
            assert not wrong, "\n".join(wrong)
        finally:
            await world.store.close()


@dataclass(frozen=True)
class ConsoleCase:
    values: dict[str, str]  # path parameters that are not fresh objects
    form: Callable[[], dict[str, str]]
    status: int  # what an allowed role gets


def _console_cases(cloud: Cloud) -> dict[str, ConsoleCase]:
    """An example per console handler (named by function)."""
    ca = CertificateAuthority.load_or_create(cloud.settings.pki_dir)
    rules = build_rules(own_manifest(cloud.settings, ca), "fortigate")
    none: Callable[[], dict[str, str]] = dict
    return {
        "fleet_page": ConsoleCase({}, none, 200),
        "fleet_live": ConsoleCase({}, none, 200),
        "gateway_page": ConsoleCase({}, none, 200),
        "gateway_live": ConsoleCase({}, none, 200),
        "send_command": ConsoleCase({}, lambda: {"kind": "ping", "args": "{}", "ttl": "600"}, 303),
        "cancel_command": ConsoleCase({}, none, 303),
        "revoke_gateway": ConsoleCase({}, none, 303),
        "grant_support": ConsoleCase(
            {}, lambda: {"user": SUPPORT_USER, "hours": "1", "reason": "matrix"}, 303
        ),
        "revoke_support_grant": ConsoleCase({}, none, 303),
        "network_page": ConsoleCase({}, none, 200),
        "network_document": ConsoleCase({"fmt": "md"}, none, 200),
        "network_rules": ConsoleCase({"fmt": "fortigate", "name": rules.files[0][0]}, none, 200),
        "tokens_page": ConsoleCase({}, none, 200),
        "create_token": ConsoleCase({}, lambda: {"name": _fresh("matrix-"), "hours": "1"}, 200),
        "revoke_token": ConsoleCase({}, none, 303),
        "audit_page": ConsoleCase({}, none, 200),
        "users_page": ConsoleCase({}, none, 200),
        "create_user": ConsoleCase({}, lambda: {"username": _fresh("form"), "role": "viewer"}, 201),
        "user_action": ConsoleCase({"action": "enable"}, none, 200),
        "account_page": ConsoleCase({}, none, 200),
        "account_action": ConsoleCase(
            {"action": "token"}, lambda: {"label": "matrix", "days": "30"}, 200
        ),
        "logout": ConsoleCase({}, none, 303),
    }


async def test_every_console_route_answers_each_role_as_its_permission_says(
    tmp_path: Path,
) -> None:
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as admin,
        console_client(cloud) as client,
    ):
        world = await _world(cloud, admin, client)
        cases = _console_cases(cloud)
        # logging out ends the session the other cases use: it goes last
        routes = sorted(CONSOLE_ROUTES, key=lambda r: r.handler.__name__ == "logout")
        try:
            wrong: list[str] = []
            for route in routes:
                name = route.handler.__name__
                assert name in cases, f"add a console case for {name} ({route.path})"
                case = cases[name]
                allowed = api.PERMISSIONS[route.permission]
                for role in (*ROLES, None):
                    path = await _path(world, route.path, role, case.values, fresh=role in allowed)
                    session = world.sessions[role] if role else None
                    headers = session.cookies if session else {}
                    form = case.form()
                    if route.method == "POST" and session is not None:
                        form = session.form(**form)
                    answer = await client.request(
                        route.method,
                        path,
                        data=form if route.method == "POST" else None,
                        headers=headers,
                    )
                    if role is None:
                        ok = answer.status_code == 303 and answer.headers["location"].startswith(
                            "/console/login"
                        )
                        expected: object = "303 to the login form"
                    else:
                        expected = case.status if role in allowed else 403
                        ok = answer.status_code == expected
                    if not ok:
                        wrong.append(
                            f"{route.method} {route.path} as {role or 'nobody'}: "
                            f"{answer.status_code}, expected {expected}"
                        )
            assert not wrong, "\n".join(wrong)
        finally:
            await world.store.close()


async def test_the_command_form_offers_each_role_what_it_may_send(tmp_path: Path) -> None:
    """A viewer gets no form; support gets it, for the diagnostic kinds alone (a reboot is
    refused in words), once it holds a support grant for the gateway, and a note saying who
    gives one before; operator and admin get every kind."""
    async with (
        running_cloud(tmp_path / "cloud") as cloud,
        cloud.api() as admin,
        console_client(cloud) as client,
    ):
        world = await _world(cloud, admin, client)
        try:
            gateway_id = await world.gateway(granted=False)
            support = world.sessions["support"]
            page = await client.get(f"/console/gateways/{gateway_id}", headers=support.cookies)
            assert page.status_code == 200
            assert 'id="send-command"' not in page.text
            assert "only under a support grant for this gateway" in page.text
            assert "You hold no support grant for this gateway" in page.text
            hidden = "Devices, points and their values are the customer's data"
            assert hidden in page.text
            refused = await client.post(
                f"/console/gateways/{gateway_id}/commands",
                data=support.form(kind="ping", args="{}", ttl="600"),
                headers=support.cookies,
            )
            assert refused.status_code == 403
            assert f"needs a support grant for gateway {gateway_id}" in refused.text
            await world.grant_support(gateway_id)
            for role in ROLES:
                session = world.sessions[role]
                page = await client.get(f"/console/gateways/{gateway_id}", headers=session.cookies)
                assert page.status_code == 200
                has_form = 'id="send-command"' in page.text
                assert has_form == (role in api.PERMISSIONS["diagnose"]), role
                holds = "You hold a support grant for this gateway until" in page.text
                assert holds == (role == "support"), role
                assert hidden not in page.text, role
                offers_reboot = '<option value="reboot">' in page.text
                assert offers_reboot == (role in api.PERMISSIONS["command"]), role
                sent = await client.post(
                    f"/console/gateways/{gateway_id}/commands",
                    data=session.form(kind="ping", args="{}", ttl="600"),
                    headers=session.cookies,
                )
                assert sent.status_code == (303 if has_form else 403), role
                reboot = await client.post(
                    f"/console/gateways/{gateway_id}/commands",
                    data=session.form(kind="reboot", args="{}", ttl="600"),
                    headers=session.cookies,
                )
                if role in api.PERMISSIONS["command"]:
                    assert reboot.status_code == 303, role
                elif has_form:
                    assert reboot.status_code == 403, role
                    assert "only diagnostic commands" in reboot.text, role
            # Support may end its own access early, from the same card.
            page = await client.get(f"/console/gateways/{gateway_id}", headers=support.cookies)
            found = re.search(r'action="/console/support-grants/([^/"]+)/revoke"', page.text)
            assert found is not None
            assert 'id="end-my-grant"' in page.text
            ended = await client.post(
                f"/console/support-grants/{found.group(1)}/revoke",
                data=support.form(),
                headers=support.cookies,
            )
            assert ended.status_code == 303, ended.text
            page = await client.get(f"/console/gateways/{gateway_id}", headers=support.cookies)
            assert "You hold no support grant for this gateway" in page.text
            commands = (await admin.get("/api/v1/commands", params={"gateway": gateway_id})).json()
            assert sorted((c["created_by"], c["kind"]) for c in commands) == sorted(
                [(f"as-{r} ({r})", "ping") for r in ROLES if r in api.PERMISSIONS["diagnose"]]
                + [(f"as-{r} ({r})", "reboot") for r in ROLES if r in api.PERMISSIONS["command"]]
            )
        finally:
            await world.store.close()
