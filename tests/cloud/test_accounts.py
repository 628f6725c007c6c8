"""Operator accounts: passwords, sessions, throttling, roles, the console's security, the export.

The first half drives :class:`tether.cloud.accounts.Accounts` on a real store (SQLite and
PostgreSQL); the second half a real cloud over TLS on loopback, through the login form, the
console's forms and the operator API, as a browser or a script would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from tests.support.cloudproc import free_port, running_cloud
from tests.support.console import (
    LOGIN_COOKIE,
    console_client,
    console_login,
    create_user,
    set_cookie,
    user_token,
)
from tests.support.postgres import PostgresServer, postgres_server

from tether.cloud.accounts import (
    ADMIN_PASSWORD_FILE,
    SESSION_COOKIE,
    AccountPolicy,
    Accounts,
    InvalidUsername,
    LastAdmin,
    LoginRefused,
    LoginThrottled,
    WeakPassword,
    hash_session_secret,
)
from tether.cloud.store import Store
from tether.cloud.store.accounts import UserExists

__all__ = ["postgres_server"]  # the fixture, for the PostgreSQL runs

# The same algorithm with small parameters: these tests are about accounts, not argon2's cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
        opened = await Store.open(url)
        try:
            yield opened
        finally:
            await opened.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = await server.create_database()
    opened = await Store.open(url)
    try:
        yield opened
    finally:
        await opened.close()
        await server.drop_database(url)


def accounts_on(store: Store, clock: Clock | None = None, **policy: object) -> Accounts:
    return Accounts(
        store,
        policy=AccountPolicy(**policy),  # type: ignore[arg-type]
        hasher=FAST_HASHER,
        clock=clock or Clock(T0),
    )


async def _actions(store: Store) -> list[tuple[str, str | None, dict[str, object] | None]]:
    return [(a.action, a.target, a.detail) for a in reversed(await store.list_audit(limit=1000))]


# --- the service on a real store ------------------------------------------------------------


async def test_passwords_are_argon2id_hashes_and_only_the_right_one_opens_a_session(
    store: Store,
) -> None:
    accounts = accounts_on(store)
    user, generated = await accounts.create_user(
        "Olga", "operator", "correct horse battery", actor="t", source="192.0.2.9"
    )
    assert generated is None
    assert user.username == "olga"  # stored lowercase
    creds = await accounts.users.credentials("olga")
    assert creds is not None
    assert creds[1].startswith("$argon2id$")
    assert "correct horse" not in creds[1]
    with pytest.raises(LoginRefused):
        await accounts.login("olga", "wrong horse battery", source="192.0.2.9")
    secret, session = await accounts.login("OLGA", "correct horse battery", source="192.0.2.9")
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    assert session.session_hash == hash_session_secret(secret) != secret
    assert (await accounts.session(secret)) is not None
    actions = [a for a, _, _ in await _actions(store)]
    assert actions == ["user.create", "session.login-failed", "session.login"]


async def test_usernames_passwords_and_duplicates_are_checked(store: Store) -> None:
    accounts = accounts_on(store)
    with pytest.raises(InvalidUsername):
        await accounts.create_user("no spaces", "viewer", None, actor="t", source=None)
    with pytest.raises(WeakPassword):
        await accounts.create_user("short", "viewer", "123456789", actor="t", source=None)
    _, generated = await accounts.create_user("vera", "viewer", None, actor="t", source=None)
    assert generated is not None
    assert len(generated) >= 20
    with pytest.raises(UserExists):
        await accounts.create_user("VERA", "viewer", None, actor="t", source=None)


async def test_failed_logins_are_throttled_per_user_and_source_and_audited(store: Store) -> None:
    accounts = accounts_on(store, login_failures=3)
    await accounts.create_user("olga", "operator", "correct horse battery", actor="t", source=None)
    for _ in range(3):
        with pytest.raises(LoginRefused):
            await accounts.login("olga", "guess guess guess", source="198.51.100.7")
    with pytest.raises(LoginThrottled) as throttled:
        await accounts.login("olga", "correct horse battery", source="198.51.100.7")
    assert throttled.value.retry_after > 0
    # another source is not blocked by this one's failures
    await accounts.login("olga", "correct horse battery", source="198.51.100.8")
    actions = await _actions(store)
    failed = [d for a, _, d in actions if a == "session.login-failed"]
    assert [d["reason"] for d in failed if d] == ["wrong password"] * 3
    throttled_entries = [d for a, _, d in actions if a == "session.login-throttled"]
    assert len(throttled_entries) == 1
    assert throttled_entries[0] is not None
    assert throttled_entries[0]["reason"] == "throttled"


async def test_throttle_window_slides_and_a_success_starts_the_count_again(store: Store) -> None:
    clock = Clock(T0)
    accounts = accounts_on(store, clock, login_failures=2, source_failures=10)
    await accounts.create_user("olga", "operator", "correct horse battery", actor="t", source=None)
    src = "198.51.100.7"
    with pytest.raises(LoginRefused):
        await accounts.login("olga", "guess guess guess", source=src)
    clock.now = T0 + timedelta(seconds=30)
    with pytest.raises(LoginRefused):
        await accounts.login("olga", "guess guess guess", source=src)
    clock.now = T0 + timedelta(seconds=60)
    with pytest.raises(LoginThrottled) as throttled:
        await accounts.login("olga", "correct horse battery", source=src)
    # The oldest failure leaves the 15-minute window 14 minutes from now.
    assert throttled.value.retry_after == pytest.approx(14 * 60)
    clock.now = T0 + timedelta(minutes=15, seconds=1)  # the first failure left the window
    await accounts.login("olga", "correct horse battery", source=src)
    # The success starts the count again: the failure at 0:30, still in the window, is gone.
    with pytest.raises(LoginRefused):
        await accounts.login("olga", "guess guess guess", source=src)
    with pytest.raises(LoginRefused):
        await accounts.login("olga", "guess guess guess", source=src)
    with pytest.raises(LoginThrottled):
        await accounts.login("olga", "correct horse battery", source=src)


async def test_a_source_is_throttled_over_all_usernames(store: Store) -> None:
    accounts = accounts_on(store, login_failures=5, source_failures=4)
    await accounts.create_user("olga", "operator", "correct horse battery", actor="t", source=None)
    for name in ("anna", "bert", "carl", "dora"):
        with pytest.raises(LoginRefused):
            await accounts.login(name, "guess guess guess", source="203.0.113.5")
    with pytest.raises(LoginThrottled):
        await accounts.login("olga", "correct horse battery", source="203.0.113.5")
    await accounts.login("olga", "correct horse battery", source="203.0.113.6")


async def test_worker_processes_share_one_count(store: Store) -> None:
    """Each worker process has its own Accounts on the shared store: a guesser spreading its
    attempts over them meets the same limit as against one."""
    workers = [accounts_on(store, login_failures=3) for _ in range(3)]
    await workers[0].create_user(
        "olga", "operator", "correct horse battery", actor="t", source=None
    )
    for worker in workers:  # one failure on each
        with pytest.raises(LoginRefused):
            await worker.login("olga", "guess guess guess", source="198.51.100.7")
    for worker in workers:
        with pytest.raises(LoginThrottled):
            await worker.login("olga", "correct horse battery", source="198.51.100.7")


async def test_sessions_end_when_idle_or_too_old(store: Store) -> None:
    clock = Clock(T0)
    accounts = accounts_on(
        store,
        clock,
        session_idle=timedelta(minutes=30),
        session_lifetime=timedelta(hours=2),
        touch_every=timedelta(seconds=60),
    )
    await accounts.create_user("olga", "operator", "correct horse battery", actor="t", source=None)
    idle, _ = await accounts.login("olga", "correct horse battery", source=None)
    busy, _ = await accounts.login("olga", "correct horse battery", source=None)
    for _ in range(4):  # busy is used every 25 minutes, idle never again
        clock.now += timedelta(minutes=25)
        assert await accounts.session(busy) is not None
    assert await accounts.session(idle) is None
    assert await accounts.users.get_session(hash_session_secret(idle)) is None  # forgotten
    clock.now = T0 + timedelta(hours=2)
    assert await accounts.session(busy) is None  # absolute lifetime, however busy


async def test_background_reads_do_not_keep_a_session_alive(store: Store) -> None:
    clock = Clock(T0)
    accounts = accounts_on(store, clock, session_idle=timedelta(minutes=30))
    await accounts.create_user("olga", "operator", "correct horse battery", actor="t", source=None)
    secret, _ = await accounts.login("olga", "correct horse battery", source=None)
    for _ in range(4):
        clock.now += timedelta(minutes=10)
        live = await accounts.session(secret, touch=False)
        if clock.now - T0 < timedelta(minutes=30):
            assert live is not None
    assert await accounts.session(secret) is None


async def test_disabling_ends_sessions_and_revokes_tokens_and_roles_carry_to_tokens(
    store: Store,
) -> None:
    accounts = accounts_on(store)
    user, _ = await accounts.create_user(
        "olga", "operator", "correct horse battery", actor="t", source=None
    )
    token, secret = await accounts.create_token(user, "laptop", None, actor="t", source=None)
    assert token.role == "operator"
    session_secret, _ = await accounts.login("olga", "correct horse battery", source=None)
    await accounts.set_role("olga", "viewer", actor="t", source=None)
    record = await store.authenticate_api_token(secret, now=T0)
    assert record is not None
    assert record.role == "viewer"
    await accounts.disable("olga", actor="t", source=None)
    assert await store.authenticate_api_token(secret, now=T0) is None
    assert await accounts.session(session_secret) is None
    with pytest.raises(LoginRefused) as refused:
        await accounts.login("olga", "correct horse battery", source=None)
    assert refused.value.reason == "user disabled"
    await accounts.enable("olga", actor="t", source=None)
    await accounts.login("olga", "correct horse battery", source=None)
    assert await store.authenticate_api_token(secret, now=T0) is None  # stays revoked


async def test_the_last_enabled_admin_stays(store: Store) -> None:
    accounts = accounts_on(store)
    await accounts.create_user("root", "admin", "correct horse battery", actor="t", source=None)
    with pytest.raises(LastAdmin):
        await accounts.disable("root", actor="t", source=None)
    with pytest.raises(LastAdmin):
        await accounts.set_role("root", "viewer", actor="t", source=None)
    await accounts.create_user("deputy", "admin", "correct horse battery", actor="t", source=None)
    await accounts.set_role("root", "viewer", actor="t", source=None)
    with pytest.raises(LastAdmin):
        await accounts.disable("deputy", actor="t", source=None)


async def test_first_start_makes_one_admin_with_a_private_password_file(
    store: Store, tmp_path: Path
) -> None:
    accounts = accounts_on(store)
    path = await accounts.bootstrap_admin(tmp_path)
    assert path == tmp_path / ADMIN_PASSWORD_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    password = path.read_text().strip()
    _, session = await accounts.login("admin", password, source=None)
    assert session.user.role == "admin"
    assert await accounts.bootstrap_admin(tmp_path) is None  # only on the very first start
    assert [u.username for u in await accounts.users.list_users()] == ["admin"]


# --- a real cloud over TLS -------------------------------------------------------------------


async def test_login_sets_a_strict_host_only_session_cookie_and_pages_carry_safe_headers(
    tmp_path: Path,
) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, console_client(cloud) as client:
        password = (cloud.data_dir / ADMIN_PASSWORD_FILE).read_text().strip()
        form = await client.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        login_cookie = set_cookie(form, LOGIN_COOKIE)
        assert token is not None
        assert login_cookie is not None
        answer = await client.post(
            "/console/login",
            data={"username": "admin", "password": password, "login_token": token.group(1)},
            headers={"Cookie": f"{LOGIN_COOKIE}={login_cookie[0]}"},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/"
        cookie = set_cookie(answer, SESSION_COOKIE)
        assert cookie is not None
        value, attributes = cookie
        assert SESSION_COOKIE.startswith("__Host-")
        assert attributes.get("secure") == "true"
        assert attributes.get("httponly") == "true"
        assert attributes.get("samesite", "").lower() == "strict"
        assert attributes.get("path") == "/"
        assert "domain" not in attributes
        page = await client.get("/console/", headers={"Cookie": f"{SESSION_COOKIE}={value}"})
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        assert "<script src=" in page.text
        assert "https://" not in page.text


async def test_a_wrong_password_is_refused_generically_and_audited(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        await create_user(api, "olga", "operator", "correct horse battery")
        async with console_client(cloud) as client:
            await console_login(client, "olga", "not the password", expect=401)
            await console_login(client, "nobody", "not the password", expect=401)
            # A password typed into the username field is not kept in the audit log.
            await console_login(client, "correct horse battery", "x", expect=401)
            await console_login(client, "Correct-Horse.Battery9", "x", expect=401)
        entries = (await api.get("/api/v1/audit")).json()
        failed = [e for e in entries if e["action"] == "session.login-failed"]
        assert sorted(((e["target"] or ""), e["detail"]["reason"]) for e in failed) == [
            ("", "unknown user"),
            ("", "unknown user"),
            ("", "unknown user"),
            ("olga", "wrong password"),
        ]
        assert all(e["source"] == "127.0.0.1" for e in failed)
        assert "battery" not in json.dumps(entries).lower()


async def test_the_login_form_needs_its_own_token(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, console_client(cloud) as client:
        password = (cloud.data_dir / ADMIN_PASSWORD_FILE).read_text().strip()
        answer = await client.post(
            "/console/login",
            data={"username": "admin", "password": password, "login_token": "forged"},
            headers={"Cookie": f"{LOGIN_COOKIE}=other"},
        )
        assert answer.status_code == 403
        assert set_cookie(answer, SESSION_COOKIE) is None


async def test_state_changes_without_the_csrf_token_are_refused(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "admin", "correct horse battery")
        async with console_client(cloud) as client:
            session = await console_login(client, "olga", password)
            create = {"username": "mallory", "role": "admin"}
            for fields in ({}, {"csrf_token": "wrong"}, {"csrf_token": ""}):
                answer = await client.post(
                    "/console/users", data={**create, **fields}, headers=session.cookies
                )
                assert answer.status_code == 403, fields
            # the API through the session cookie: the token must come in the header
            no_header = await client.post("/api/v1/users", json=create, headers=session.cookies)
            wrong = await client.post(
                "/api/v1/users",
                json=create,
                headers={**session.cookies, "X-CSRF-Token": "wrong"},
            )
            assert (no_header.status_code, wrong.status_code) == (403, 403)
            users = (await api.get("/api/v1/users")).json()
            assert "mallory" not in {u["username"] for u in users}
            # with the token, the same requests work
            ok = await client.post(
                "/console/users", data=session.form(**create), headers=session.cookies
            )
            assert ok.status_code == 201
            via_api = await client.post(
                "/api/v1/users",
                json={"username": "trent", "role": "viewer"},
                headers=session.api_headers(),
            )
            assert via_api.status_code == 201
        actors = {e["target"]: e["actor"] for e in (await api.get("/api/v1/audit")).json()}
        assert actors["mallory"] == actors["trent"] == "olga (admin)"


async def test_an_ended_session_sends_pages_to_the_login_form(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "operator", "correct horse battery")
        store = await Store.open(cloud.database)
        try:
            async with console_client(cloud) as client:
                idle = await console_login(client, "olga", password)
                old = await console_login(client, "olga", password)
                assert (await client.get("/console/", headers=idle.cookies)).status_code == 200
                accounts = Accounts(store)
                policy = accounts.policy
                now = datetime.now(UTC)
                await accounts.users.set_session_times(
                    hash_session_secret(idle.secret),
                    last_seen=now - policy.session_idle - timedelta(seconds=1),
                    expires_at=now + timedelta(hours=1),
                )
                await accounts.users.set_session_times(
                    hash_session_secret(old.secret),
                    last_seen=now,
                    expires_at=now - timedelta(seconds=1),
                )
                for session in (idle, old):
                    page = await client.get("/console/gateways/x", headers=session.cookies)
                    assert page.status_code == 303
                    assert page.headers["location"].startswith("/console/login?next=")
                    assert "expired=1" in page.headers["location"]
                    live = await client.get(
                        "/console/live/fleet",
                        headers={**session.cookies, "X-Tether-Live": "1"},
                    )
                    assert live.status_code == 401
                    api_call = await client.get("/api/v1/gateways", headers=session.cookies)
                    assert api_call.status_code == 401
                login = await client.get(page.headers["location"])
                assert "Your session ended" in login.text
        finally:
            await store.close()


async def test_logging_out_ends_the_session(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "viewer", "correct horse battery")
        async with console_client(cloud) as client:
            session = await console_login(client, "olga", password)
            out = await client.post("/console/logout", data=session.form(), headers=session.cookies)
            assert out.status_code == 303
            cleared = set_cookie(out, SESSION_COOKIE)
            assert cleared is not None
            assert cleared[0] == ""
            again = await client.get("/console/", headers=session.cookies)
            assert again.status_code == 303
        actions = [e["action"] for e in (await api.get("/api/v1/audit")).json()]
        assert "session.logout" in actions


async def test_the_console_is_not_served_without_tls(tmp_path: Path) -> None:
    from aiohttp import web

    from tether.cloud.app import build_app
    from tether.cloud.settings import load_settings

    settings = load_settings(
        None,
        data_dir=tmp_path / "cloud",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'cloud' / 'tether.db'}",
        listen_host="127.0.0.1",
        listen_port=free_port(),
    )
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.listen_port)  # plain TCP, no TLS
    await site.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            base = f"http://127.0.0.1:{settings.listen_port}"
            login = await client.get(f"{base}/console/login")
            page = await client.get(f"{base}/console/")
        assert login.status_code == 403
        assert "TLS only" in login.text
        assert page.status_code == 403
        assert set_cookie(login, LOGIN_COOKIE) is None
    finally:
        await runner.cleanup()


async def test_audit_export_has_every_entry_in_jsonl_and_safe_csv(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        store = await Store.open(cloud.database)
        try:  # a value a spreadsheet would take for a formula
            await store.audit(
                actor="test",
                action="test.formula",
                target="=HYPERLINK(1)",
                detail=None,
                source=None,
                now=datetime.now(UTC),
            )
        finally:
            await store.close()
        async with console_client(cloud) as client:
            await console_login(client, "nobody", "not the password", expect=401)
        await create_user(api, "olga", "viewer", "correct horse battery")
        listed = (await api.get("/api/v1/audit", params={"limit": 1000})).json()
        jsonl = await api.get("/api/v1/audit/export", params={"format": "jsonl"})
        assert jsonl.status_code == 200
        assert "attachment" in jsonl.headers["content-disposition"]
        lines = [json.loads(line) for line in jsonl.text.splitlines()]
        assert [e["id"] for e in lines] == sorted(e["id"] for e in listed)
        assert {e["action"] for e in lines} >= {"user.create", "session.login-failed"}
        exported = await api.get("/api/v1/audit/export", params={"format": "csv"})
        rows = list(csv.reader(io.StringIO(exported.text)))
        assert rows[0] == ["id", "at", "actor", "action", "target", "source", "detail"]
        assert len(rows) == len(lines) + 1
        targets = [row[4] for row in rows[1:]]
        # Times are written alike in both formats.
        assert [row[1] for row in rows[1:]] == [e["at"] for e in lines]
        assert "'=HYPERLINK(1)" in targets  # a formula to a spreadsheet, defused
        assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)
        bad = await api.get("/api/v1/audit/export", params={"format": "xml"})
        assert bad.status_code == 400


async def test_changing_your_password_ends_your_other_sessions(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "viewer", "correct horse battery")
        async with console_client(cloud) as client:
            here = await console_login(client, "olga", password)
            elsewhere = await console_login(client, "olga", password)
            wrong = await client.post(
                "/console/account/password",
                data=here.form(
                    current_password="guess guess guess",
                    new_password="a better passphrase",
                    confirm_password="a better passphrase",
                ),
                headers=here.cookies,
            )
            assert wrong.status_code == 403
            changed = await client.post(
                "/console/account/password",
                data=here.form(
                    current_password=password,
                    new_password="a better passphrase",
                    confirm_password="a better passphrase",
                ),
                headers=here.cookies,
            )
            assert changed.status_code == 200, changed.text
            assert (await client.get("/console/", headers=here.cookies)).status_code == 200
            assert (await client.get("/console/", headers=elsewhere.cookies)).status_code == 303
            await console_login(client, "olga", password, expect=401)
            await console_login(client, "olga", "a better passphrase")


async def test_a_users_api_token_has_their_role_and_dies_with_the_account(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        await create_user(api, "olga", "viewer", "correct horse battery")
        token = await user_token(api, "olga")
        async with cloud.api(token) as olga:
            who = (await olga.get("/api/v1/whoami")).json()
            assert (who["name"], who["role"]) == ("olga", "viewer")
            mine = await olga.get("/api/v1/me/tokens")
            assert [t["username"] for t in mine.json()] == ["olga"]
            refused = await olga.post("/api/v1/enrollment-tokens", json={})
            assert refused.status_code == 403
            assert (await api.post("/api/v1/users/olga/disable")).status_code == 200
            assert (await olga.get("/api/v1/whoami")).status_code == 401
        # The first start's token (admin.token) is admin's, listed as such.
        mine = (await api.get("/api/v1/me/tokens")).json()
        assert [(t["username"], t["label"]) for t in mine] == [
            ("admin", "first start (admin.token)")
        ]
        who = (await api.get("/api/v1/whoami")).json()
        assert (who["name"], who["role"]) == ("bootstrap token", "admin")


async def test_login_throttling_answers_429_over_http(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        password = await create_user(api, "olga", "viewer", "correct horse battery")
        async with console_client(cloud) as client:
            for _ in range(AccountPolicy().login_failures):
                await console_login(client, "olga", "guess guess guess", expect=401)
            await console_login(client, "olga", password, expect=429)
        actions = [e["action"] for e in (await api.get("/api/v1/audit")).json()]
        assert actions.count("session.login-failed") == AccountPolicy().login_failures
        assert actions.count("session.login-throttled") == 1


async def test_a_nul_in_the_typed_username_is_an_unknown_user_on_every_store(
    store: Store,
) -> None:
    accounts = accounts_on(store)
    await accounts.create_user(
        "olga", "operator", "correct horse battery", actor="t", source="192.0.2.9"
    )
    for username, password in (("olga\x00", "correct horse battery"), ("olga", "a\x00b")):
        with pytest.raises(LoginRefused, match="wrong username or password"):
            await accounts.login(username, password, source="192.0.2.9")
    failed = [a for a in await _actions(store) if a[0] == "session.login-failed"]
    assert [(target, (detail or {}).get("reason")) for _, target, detail in failed] == [
        (None, "unknown user"),
        ("olga", "wrong password"),
    ]
