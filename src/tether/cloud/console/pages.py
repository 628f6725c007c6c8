"""The console's plumbing: a declarative page table, sessions, roles, CSRF, headers, templates.

Every console route is a :class:`ConsoleRoute` naming its permission (a key of
:data:`tether.cloud.api.PERMISSIONS`, the same table the operator API uses). The wrapper, in
order: refuses anything not carried by TLS, finds the session (no session: a page redirects to
the login form, a background refresh answers 401), checks the role (403), checks the CSRF token
on every POST (403), runs the handler and adds the security headers.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, cast
from urllib.parse import quote

import jinja2
import msgspec
from aiohttp import web
from markupsafe import Markup
from multidict import MultiDict, MultiDictProxy

from tether import __version__
from tether.cloud.accounts import (
    ACCOUNTS_KEY,
    CSRF_FIELD,
    CSRF_HEADER,
    LIVE_HEADER,
    SESSION_COOKIE,
    SESSION_PRINCIPAL,
    Accounts,
    csrf_matches,
)
from tether.cloud.api import PERMISSION_WORDS, PERMISSIONS, Principal
from tether.cloud.state import STATE_KEY, CloudState
from tether.cloud.store.accounts import SessionRecord, UserRecord

__all__ = [
    "PREFIX",
    "ApiRefused",
    "ConsoleRoute",
    "Ctx",
    "call_api",
    "html",
    "is_tls",
    "json_response",
    "optional_session",
    "secure_headers",
    "wrap",
]

log = logging.getLogger(__name__)

PREFIX: Final = "/console"
DASH: Final = "\u2013"  # shown for a missing value

_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def secure_headers(response: web.StreamResponse, *, cache: bool = False) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    # The console is served over TLS only: browsers are told to keep it that way for a year.
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if not cache:
        response.headers["Cache-Control"] = "no-store"


def is_tls(request: web.Request) -> bool:
    """Whether the request reached us over TLS (directly, or from a trusted TLS proxy)."""
    transport = request.transport
    if transport is not None and transport.get_extra_info("sslcontext") is not None:
        return True
    settings = request.app[STATE_KEY].settings
    return (
        request.remote in settings.trusted_proxies
        and request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    )


# --- templates ------------------------------------------------------------------------------


def _ago(value: datetime | float | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    then = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)} {unit}"
            break
    else:
        text = f"{int(seconds)} s"
    return f"in {text}" if future else f"{text} ago"


def _when(value: datetime | float | None) -> str:
    if value is None:
        return ""
    then = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return then.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | float | None) -> str:
    if value is None:
        return ""
    then = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return then.astimezone(UTC).isoformat()


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)


def _number(value: float | str | None, digits: int = 2) -> str:
    if value is None:
        return DASH
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return DASH
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tether.cloud.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(
    ago=_ago,
    when=_when,
    iso=_iso,
    pretty=_pretty,
    compact=_compact,
    number=_number,
    bytes=_bytes,
    urlquote=lambda s: quote(str(s), safe=""),
)
ENV.globals.update(version=__version__, prefix=PREFIX, csrf_field=CSRF_FIELD)


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


def render_markup(template: str, **context: Any) -> Markup:
    return Markup(render(template, **context))  # noqa: S704 (autoescaped template output)


def html(text: str, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=headers
    )
    secure_headers(response)
    return response


def json_response(data: Any, *, status: int = 200) -> web.Response:
    response = web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )
    secure_headers(response)
    return response


# --- request context ------------------------------------------------------------------------


@dataclass(slots=True)
class Ctx:
    """One console request: who asks (their session) and what the cloud holds."""

    request: web.Request
    state: CloudState
    accounts: Accounts
    session: SessionRecord

    @property
    def user(self) -> UserRecord:
        return self.session.user

    @property
    def principal(self) -> Principal:
        return Principal(name=self.user.username, role=self.user.role, token_id=SESSION_PRINCIPAL)

    @property
    def actor(self) -> str:
        return self.principal.actor

    @property
    def source(self) -> str | None:
        return self.request.remote

    def can(self, permission: str) -> bool:
        return self.user.role in PERMISSIONS[permission]

    @property
    def live(self) -> bool:
        return self.request.headers.get(LIVE_HEADER) == "1"

    def _context(self, context: dict[str, Any]) -> dict[str, Any]:
        base: dict[str, Any] = {
            "user": self.user,
            "csrf": self.session.csrf_token,
            "can": self.can,
            "now": datetime.now(UTC),
        }
        base.update(context)
        return base

    def page(
        self, template: str, *, code: int = 200, nav: str = "", **context: Any
    ) -> web.Response:
        """A full page in the console layout, answered with HTTP status *code*."""
        return html(render(template, **self._context({"nav": nav, **context})), status=code)

    def fragment(self, template: str, **context: Any) -> str:
        """One live region of a page, rendered as the page renders it."""
        return render(template, **self._context(context))


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


class ConsoleRoute(NamedTuple):
    method: str
    path: str
    handler: Handler
    permission: str
    summary: str


def _wants_json(request: web.Request) -> bool:
    return request.headers.get(LIVE_HEADER) == "1" or "application/json" in request.headers.get(
        "Accept", ""
    )


def _login_redirect(request: web.Request, *, expired: bool) -> web.HTTPException:
    target = request.path_qs if request.method == "GET" else PREFIX + "/"
    location = f"{PREFIX}/login?next={quote(target, safe='')}"
    if expired:
        location += "&expired=1"
    return web.HTTPSeeOther(location=location)


def error_page(
    request: web.Request,
    status: int,
    title: str,
    message: str,
    *,
    session: SessionRecord | None = None,
) -> web.Response:
    """The console's error page (JSON for a background refresh); with *session*, in the layout
    of that person's pages (their menu, their logout button)."""
    if _wants_json(request):
        return json_response({"error": message}, status=status)
    context: dict[str, Any] = {"user": None}
    if session is not None:
        role = session.user.role
        context = {
            "user": session.user,
            "csrf": session.csrf_token,
            "can": lambda permission: role in PERMISSIONS[permission],
            "now": datetime.now(UTC),
        }
    return html(
        render("error.html", title=title, message=message, status=status, nav="", **context),
        status=status,
    )


async def optional_session(request: web.Request) -> SessionRecord | None:
    """The session the request carries, if any and still valid (not touched: no use made)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    return await request.app[ACCOUNTS_KEY].session(secret, touch=False)


async def _csrf_token_of(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def wrap(route: ConsoleRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not is_tls(request):
            return error_page(request, 403, "TLS only", "The console is served over TLS only.")
        accounts = request.app[ACCOUNTS_KEY]
        secret = request.cookies.get(SESSION_COOKIE)
        session = None
        if secret:
            session = await accounts.session(secret, touch=request.headers.get(LIVE_HEADER) != "1")
        if session is None:
            if _wants_json(request):
                return json_response({"error": "the session ended; log in again"}, status=401)
            raise _login_redirect(request, expired=bool(secret))
        if session.user.role not in PERMISSIONS[route.permission]:
            words = PERMISSION_WORDS.get(route.permission, route.permission)
            return error_page(
                request,
                403,
                "Not allowed",
                f"Your role ({session.user.role}) may not {words}.",
                session=session,
            )
        if request.method == "POST" and not csrf_matches(await _csrf_token_of(request), session):
            return error_page(
                request,
                403,
                "Form expired",
                "The form's security token is missing or wrong. Reload the page and try again.",
                session=session,
            )
        ctx = Ctx(request=request, state=request.app[STATE_KEY], accounts=accounts, session=session)
        try:
            response = await route.handler(ctx)
        except web.HTTPNotFound:
            return error_page(
                request, 404, "Not found", "There is nothing at this address.", session=session
            )
        except web.HTTPException:
            raise  # redirects
        except Exception:  # a bug: logged with its traceback, the person gets the console's page
            log.exception("console %s %s failed", request.method, request.path)
            return error_page(
                request,
                500,
                "Something went wrong",
                "The cloud could not answer this page; its log has the details. Try again later.",
                session=session,
            )
        secure_headers(response)
        return response

    return handler


# --- calling the operator API's handlers from console forms -----------------------------------


class ApiRefused(Exception):
    """An operator-API handler refused a console action; the message is its error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ApiCall:
    """What an API handler reads from a request, with the console form's values as JSON.

    Console actions run the operator API's own handlers, so validation, auditing and side
    effects are the API's, whatever the door a person came through.
    """

    def __init__(self, request: web.Request, body: Any, match_info: Mapping[str, str]) -> None:
        self.app = request.app
        self.remote = request.remote
        self.headers = request.headers
        self.cookies = request.cookies
        self.method = "POST"
        self.match_info = dict(match_info)
        self.query: MultiDictProxy[str] = MultiDictProxy(MultiDict())
        self._body = msgspec.json.encode(body)

    async def read(self) -> bytes:
        return self._body


async def call_api(
    ctx: Ctx,
    handler: Callable[[web.Request, CloudState, Principal], Awaitable[Any]],
    body: Any = None,
    **match_info: str,
) -> Any:
    """Run an operator-API handler as the console's user; raises ApiRefused on refusal."""
    call = cast(web.Request, _ApiCall(ctx.request, body if body is not None else {}, match_info))
    try:
        return await handler(call, ctx.state, ctx.principal)
    except web.HTTPException as exc:
        message = exc.text or exc.reason
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(exc.text or "")["error"]
        raise ApiRefused(exc.status, str(message)) from None


def safe_next(value: str | None) -> str:
    """A post-login target inside the console only (no open redirect)."""
    if (
        value
        and value.startswith(PREFIX + "/")
        and not value.startswith("//")
        and not any(ch in value for ch in "\\\r\n")
    ):
        return value
    return PREFIX + "/"


def same_secret(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
