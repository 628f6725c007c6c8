"""The web console: server-rendered pages for people, on the cloud's one TLS port.

``setup(app)`` adds the console to the cloud's application: its lifespan (the account service,
the first admin user, a sweeper of ended sessions), the login and logout forms, static assets
shipped in the package (no CDN) and the pages of :data:`tether.cloud.console.views.ROUTES`.

    /                         → /console/
    /console/login            the login form (GET, POST)
    /console/static/…         stylesheet, script, icon (served from the package)
    /console/…                the pages; each names its permission in the route table
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Final

from aiohttp import web

from tether.aio import cancel_and_wait
from tether.cloud.accounts import (
    ACCOUNTS_KEY,
    SESSION_COOKIE,
    Accounts,
    LoginRefused,
    LoginThrottled,
)
from tether.cloud.console.pages import (
    PREFIX,
    error_page,
    html,
    is_tls,
    optional_session,
    render,
    safe_next,
    same_secret,
    secure_headers,
    wrap,
)
from tether.cloud.console.views import ROUTES
from tether.cloud.state import STATE_KEY

__all__ = ["ROUTES", "routes", "setup"]

log = logging.getLogger(__name__)

LOGIN_COOKIE: Final = "__Host-tether-login"
SWEEP_INTERVAL: Final = 600.0
_STATIC_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_STATIC = resources.files("tether.cloud.console").joinpath("static")


async def _sweep(accounts: Accounts) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            removed = await accounts.sweep()
        except Exception:  # a store hiccup must not stop the sweeper; it is logged
            log.exception("session sweep failed")
            continue
        if removed:
            log.info("forgot %d ended console sessions", removed)


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    accounts = Accounts(state.store)
    app[ACCOUNTS_KEY] = accounts
    await accounts.bootstrap_admin(state.settings.data_dir)
    sweeper = asyncio.get_running_loop().create_task(_sweep(accounts))
    yield
    await cancel_and_wait(sweeper)


def _login_form(
    request: web.Request,
    *,
    error: str | None = None,
    status: int = 200,
    form: Mapping[str, object] | None = None,
) -> web.Response:
    """The form; after a refused attempt (*form*: what was posted) it keeps the username and
    where the person was going, so only the password is typed again."""
    token = secrets.token_urlsafe(24)
    posted = {k: v for k, v in (form or {}).items() if isinstance(v, str)}
    message = None
    if request.query.get("expired"):
        message = "Your session ended. Log in again."
    elif request.query.get("bye"):
        message = "You are logged out."
    response = html(
        render(
            "login.html",
            user=None,
            nav="",
            title="Log in",
            login_token=token,
            next=safe_next(posted.get("next", request.query.get("next"))),
            error=error,
            message=message,
            username=posted.get("username", request.query.get("username", ""))[:64],
        ),
        status=status,
    )
    response.set_cookie(
        LOGIN_COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict", max_age=3600
    )
    return response


async def login_get(request: web.Request) -> web.StreamResponse:
    if not is_tls(request):
        return error_page(request, 403, "TLS only", "The console is served over TLS only.")
    secret = request.cookies.get(SESSION_COOKIE)
    if secret and await request.app[ACCOUNTS_KEY].session(secret) is not None:
        raise web.HTTPSeeOther(location=safe_next(request.query.get("next")))
    return _login_form(request)


#: A login form's size and the time it may take to arrive: an unauthenticated client may not
#: hold a connection with a slow, large body.
LOGIN_FORM_MAX: Final = 16 * 1024
LOGIN_FORM_SECONDS: Final = 30.0


async def login_post(request: web.Request) -> web.StreamResponse:
    if not is_tls(request):
        return error_page(request, 403, "TLS only", "The console is served over TLS only.")
    if request.cookies.get(LOGIN_COOKIE) is None:  # no form of ours: nothing worth reading
        return _login_form(request, error="The login form expired. Please try again.", status=403)
    if request.content_length is None or request.content_length > LOGIN_FORM_MAX:
        return error_page(
            request, 413, "Login refused", f"A login form is at most {LOGIN_FORM_MAX} bytes."
        )
    try:
        async with asyncio.timeout(LOGIN_FORM_SECONDS):
            form = await request.post()
    except TimeoutError:
        return error_page(request, 408, "Login refused", "The login form came too slowly.")
    username = form.get("username")
    password = form.get("password")
    token = form.get("login_token")
    if not same_secret(
        request.cookies.get(LOGIN_COOKIE), token if isinstance(token, str) else None
    ):
        return _login_form(
            request, error="The login form expired. Please try again.", status=403, form=form
        )
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        return _login_form(request, error="Enter a username and a password.", status=400, form=form)
    accounts = request.app[ACCOUNTS_KEY]
    try:
        secret, _session = await accounts.login(username, password, source=request.remote)
    except LoginThrottled as exc:
        response = _login_form(request, error=str(exc), status=429, form=form)
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    except LoginRefused as exc:
        return _login_form(request, error=str(exc), status=401, form=form)
    target = form.get("next")
    response = web.HTTPSeeOther(location=safe_next(target if isinstance(target, str) else None))
    response.set_cookie(
        SESSION_COOKIE, secret, path="/", secure=True, httponly=True, samesite="Strict"
    )
    response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    secure_headers(response)
    raise response


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
        raise web.HTTPNotFound()
    resource = _STATIC.joinpath(name)
    if not resource.is_file():
        raise web.HTTPNotFound()
    response = web.Response(body=resource.read_bytes(), content_type=None)
    response.headers["Content-Type"] = _STATIC_TYPES[suffix]
    response.headers["Cache-Control"] = "public, max-age=3600"
    secure_headers(response, cache=True)
    return response


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(location=PREFIX + "/")


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any other console address: the console's own page, with the menu when logged in."""
    session = await optional_session(request) if is_tls(request) else None
    return error_page(
        request, 404, "Not found", "There is nothing at this address.", session=session
    )


def routes() -> list[web.RouteDef]:
    defs = [
        web.get("/", root),
        web.get(PREFIX, root),
        web.get(f"{PREFIX}/login", login_get),
        web.post(f"{PREFIX}/login", login_post),
        web.get(f"{PREFIX}/static/{{name}}", static),
    ]
    defs += [web.route(r.method, r.path, wrap(r)) for r in ROUTES]
    defs.append(web.route("*", f"{PREFIX}/{{tail:.*}}", not_found))  # last: only what is left
    return defs


def setup(app: web.Application) -> None:
    """Add the console (and the account service the operator API also uses) to *app*.

    Call after the cloud's own lifespan is registered: the console's starts after it.
    """
    app.cleanup_ctx.append(_lifespan)
    app.router.add_routes(routes())
