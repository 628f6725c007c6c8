"""The operator REST API: a declarative route table, bearer-token roles, audited changes.

Each route names its permission, its request and response types; the OpenAPI document is built
from the same table and the same msgspec types the handlers decode and encode, so the two cannot
drift apart.

A bearer token the store accepted is believed for :data:`TOKEN_CACHE_SECONDS` without asking the
store again (each check is a write: it stamps ``last_used_at``). A token revoked, its user
disabled or its role changed through this API is checked afresh at once (a change to users or
tokens empties the cache); a change made elsewhere (the console, another cloud process or node)
takes effect within :data:`TOKEN_CACHE_SECONDS`.

Every answer carries a ``Server-Timing`` header (W3C Server Timing) with the time its steps took
in this process: ``auth``, then the route's own steps, then ``total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import shlex
import time
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from aiohttp import web

from tether import __version__
from tether.cloud import accounts
from tether.cloud.configcheck import check_section
from tether.cloud.state import STATE_KEY, CloudState
from tether.cloud.storable import has_nul, holds_nul
from tether.cloud.store import ROLES, Store
from tether.cloud.store.errors import (
    CommandNotFound,
    GatewayRevoked,
    GatewayUnknown,
    TokenUnknown,
)
from tether.cloud.store.grants import (
    GRANT_HOURS_MAX,
    GrantEnded,
    GrantInvalid,
    GrantUnknown,
    check_reason,
    check_scope,
)
from tether.cloud.store.health import LOG_LEVELS
from tether.cloud.store.records import (
    ApiTokenRecord,
    CommandRecord,
    EnrollmentTokenRecord,
    GatewayRecord,
    SupportGrantRecord,
)
from tether.cloud.store.store import AUDIT_FILTER_FIELDS, AuditFilter, AuditFilterInvalid
from tether.protocol.commands import (
    COMMAND_KINDS,
    DIAGNOSTIC_COMMAND_KINDS,
    CommandEvent,
    CommandState,
    IllegalTransition,
)
from tether.protocol.config import ConfigInvalid
from tether.protocol.enrollment import encode_code
from tether.protocol.messages import CloseCode

__all__ = [
    "PERMISSIONS",
    "ROUTES",
    "TOKEN_CACHE_SECONDS",
    "ApiRoute",
    "Principal",
    "api_routes",
    "openapi_document",
]

# --- roles ----------------------------------------------------------------------------------

log = logging.getLogger(__name__)

#: What each permission lets a role do, as an error message says it ("may not ...").
PERMISSION_WORDS: Final[dict[str, str]] = {
    "read": "read the fleet",
    "command": "send or cancel commands and change configuration",
    "diagnose": "send or cancel diagnostic commands",
    "grant": "give or revoke support grants",
    "enroll": "create or revoke enrollment tokens",
    "revoke": "revoke gateways",
    "audit": "read the audit log",
    "users": "manage users and their tokens",
}

PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"admin", "operator", "viewer", "support"}),
    "command": frozenset({"admin", "operator"}),
    #: Diagnostic commands (DIAGNOSTIC_COMMAND_KINDS: they change nothing on the gateway); a
    #: role without "command" (support) sends them only under a support grant for the gateway.
    "diagnose": frozenset({"admin", "operator", "support"}),
    #: Support grants: the customer's side gives support access to a gateway, and ends it.
    "grant": frozenset({"admin", "operator"}),
    "enroll": frozenset({"admin", "operator"}),
    "revoke": frozenset({"admin"}),
    "audit": frozenset({"admin"}),
    "users": frozenset({"admin"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    token_id: str

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.role})"


# --- wire types -----------------------------------------------------------------------------


class ErrorOut(msgspec.Struct):
    error: str


class GatewayOut(msgspec.Struct):
    id: str
    name: str
    created_at: datetime
    revoked: bool
    linked: bool
    tier: str | None
    last_seen: datetime | None
    link_since: datetime | None
    agent_version: str | None
    peer: str | None
    cert_not_after: datetime | None


class TierChange(msgspec.Struct):
    at: str
    tier: str
    reason: str


class GatewayDetail(msgspec.Struct):
    gateway: GatewayOut
    tier_reason: str | None
    tier_since: datetime | None
    tier_history: list[TierChange]
    preflight: dict[str, Any] | None = None


class CommandIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    args: dict[str, Any] = {}
    ttl_seconds: float | None = None


class CommandOut(msgspec.Struct):
    id: str
    gateway_id: str
    kind: str
    args: dict[str, Any]
    state: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    delivered_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None


class TokenIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    ttl_seconds: float | None = None


class TokenOut(msgspec.Struct):
    token_id: str
    name: str | None
    expires_at: datetime
    enrollment_code: str


class TokenInfo(msgspec.Struct):
    token_id: str
    name: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None
    source: str | None


class ConfigOut(msgspec.Struct):
    section: str
    version: int
    data: dict[str, Any]
    updated_at: datetime
    updated_by: str
    applied_version: int | None
    applied_error: str | None
    applied_at: datetime | None


class PointOut(msgspec.Struct):
    point_id: str
    device_id: str
    name: str
    kind: str
    unit: str
    writable: bool
    last_ts: float | None
    last_value: float | str | None


class DeviceOut(msgspec.Struct):
    device_id: str
    connector: str
    name: str
    kind: str
    vendor: str
    model: str
    location: str


class ObservationOut(msgspec.Struct, array_like=False):
    point_id: str
    ts: float
    value: float | str | None
    quality: str


class StreamOut(msgspec.Struct):
    stream: str
    last_seq: int
    accepted: int
    duplicates: int
    gaps: int
    dropped_on_gateway: int


class HealthOut(msgspec.Struct):
    latest: dict[str, Any] | None
    series: list[dict[str, Any]]


class LogOut(msgspec.Struct):
    ts: float
    level: str
    source: str
    message: str
    customer_data: bool
    fields: dict[str, Any] | None


class SupportGrantIn(msgspec.Struct, forbid_unknown_fields=True):
    user: str  # a support user's username
    hours: float  # how long it lasts: more than 0, at most GRANT_HOURS_MAX
    reason: str  # why support needs the gateway (one line, at most REASON_MAX characters)
    scope: str = "diagnose"


class SupportGrantOut(msgspec.Struct):
    id: str
    gateway_id: str
    user: str
    scope: str
    reason: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    status: str  # active, expired or revoked, when answered


class WhoAmI(msgspec.Struct):
    name: str
    role: str
    version: str


def _gateway_out(g: GatewayRecord) -> GatewayOut:
    return GatewayOut(
        id=g.gateway_id,
        name=g.name,
        created_at=g.created_at,
        revoked=g.revoked,
        linked=g.linked,
        tier=g.tier,
        last_seen=g.last_seen,
        link_since=g.link_since,
        agent_version=g.agent_version,
        peer=g.peer,
        cert_not_after=g.cert_not_after,
    )


def _grant_out(g: SupportGrantRecord, now: datetime) -> SupportGrantOut:
    return SupportGrantOut(
        id=g.grant_id,
        gateway_id=g.gateway_id,
        user=g.username,
        scope=g.scope,
        reason=g.reason,
        created_at=g.created_at,
        created_by=g.created_by,
        expires_at=g.expires_at,
        revoked_at=g.revoked_at,
        revoked_by=g.revoked_by,
        status=g.status(now),
    )


def _command_out(c: CommandRecord) -> CommandOut:
    return CommandOut(
        id=c.command_id,
        gateway_id=c.gateway_id,
        kind=c.kind,
        args=dict(c.args),
        state=c.state.value,
        created_at=c.created_at,
        created_by=c.created_by,
        expires_at=c.expires_at,
        delivered_at=c.delivered_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        result=c.result,
        error=c.error,
    )


# --- plumbing -------------------------------------------------------------------------------

Handler = Callable[[web.Request, CloudState, Principal], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    permission: str
    summary: str
    request: type | None = None
    response: Any = None
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()  # (name, description)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.HTTPException:
    cls = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }[status]
    return cls(
        text=msgspec.json.encode(ErrorOut(error=message)).decode(),
        content_type="application/json",
    )


#: How deeply a request body may nest arrays and objects (command arguments, configuration).
BODY_DEPTH_MAX = 32


async def _decode(request: web.Request, kind: type[Any]) -> Any:
    body = await request.read()
    try:
        value = msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.DecodeError as exc:
        raise _error(400, f"invalid request body: {exc}") from None
    except RecursionError:
        value = None
    if value is None or _depth(value) > BODY_DEPTH_MAX:
        raise _error(400, f"invalid request body: nested more than {BODY_DEPTH_MAX} levels deep")
    if holds_nul(value):
        raise _error(400, "invalid request body: a string holds a NUL character (\\u0000)")
    return value


def _depth(value: Any) -> int:
    """How deeply *value* nests lists and dicts (structs count by their fields), without
    recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, msgspec.Struct):
            children: Any = [getattr(item, name) for name in item.__struct_fields__]
        elif isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > BODY_DEPTH_MAX:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _plain_error(request: web.Request, exc: web.HTTPException) -> str:
    """What an error aiohttp raised by itself (no route, wrong method, body too large) says,
    in the words of this API."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    if isinstance(exc, web.HTTPNotFound):
        return f"no such API path: {request.path} (see /api/v1/openapi.json)"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        state: CloudState | None = request.app.get(STATE_KEY)
        limit = f" (at most {2 * state.settings.max_frame} bytes)" if state is not None else ""
        return f"request body too large{limit}"
    return exc.reason


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Under ``/api/``, every error answer is ``{"error": ...}``: the ones aiohttp raises by
    itself too, and a failure of a handler (logged with its traceback, answered 500).

    Anywhere, a path or query holding a NUL character is refused (400) before any handler
    would take it to a store that cannot keep it."""
    if has_nul(request.path, *request.query.values()):
        if not request.path.startswith("/api/"):
            raise web.HTTPBadRequest(text="a NUL character in the path or query")
        raise _error(400, "a path or query parameter holds a NUL character (\\u0000)")
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        response = web.Response(
            body=msgspec.json.encode(ErrorOut(error=_plain_error(request, exc))),
            status=exc.status,
            content_type="application/json",
        )
        for name in ("Allow", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("API %s %s failed", request.method, request.path)
        return web.Response(
            body=msgspec.json.encode(ErrorOut(error="internal error; the cloud's log has details")),
            status=500,
            content_type="application/json",
        )


#: How long an accepted API token is believed without asking the store (see the module doc).
TOKEN_CACHE_SECONDS: Final = 1.0
_TOKEN_CACHE_SIZE: Final = 4096


class _TokenCache:
    """Tokens the store accepted, by the SHA-256 of their secret, with when it said so."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, ApiTokenRecord]] = {}

    @staticmethod
    def key(secret: str) -> str:
        return hashlib.sha256(secret.encode("utf-8")).hexdigest()

    def get(self, key: str, *, now: datetime) -> ApiTokenRecord | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        checked, record = entry
        if time.monotonic() - checked >= TOKEN_CACHE_SECONDS or (
            record.expires_at is not None and record.expires_at <= now
        ):
            del self._entries[key]
            return None
        return record

    def put(self, key: str, record: ApiTokenRecord) -> None:
        if len(self._entries) >= _TOKEN_CACHE_SIZE:
            self._entries.clear()  # rare (thousands of live tokens): start over, stay bounded
        self._entries[key] = (time.monotonic(), record)

    def clear(self) -> None:
        self._entries.clear()


# One cache per store (several clouds may run in one process, e.g. in tests).
_token_caches: weakref.WeakKeyDictionary[Store, _TokenCache] = weakref.WeakKeyDictionary()


def _token_cache(store: Store) -> _TokenCache:
    cache = _token_caches.get(store)
    if cache is None:
        cache = _token_caches[store] = _TokenCache()
    return cache


#: Routes whose success may change what a token may do (users, their roles and tokens).
_ACCOUNT_HANDLERS: Final = frozenset(spec.handler for spec in accounts.API_ROUTES)

# ``Server-Timing`` steps of the API request being handled: (name, milliseconds). A context
# variable, not a request key: the console runs these handlers with a stand-in request.
_timing: ContextVar[list[tuple[str, float]] | None] = ContextVar("server_timing", default=None)


def _step(name: str, started: float) -> float:
    """Record the step *name* as having run from *started* (perf_counter) until now."""
    now = time.perf_counter()
    steps = _timing.get()
    if steps is not None:
        steps.append((name, (now - started) * 1e3))
    return now


async def authenticate(request: web.Request, state: CloudState) -> Principal:
    session = await accounts.api_session(request)  # the console's cookie, when no bearer token
    if session is not None:
        user = session.user
        return Principal(name=user.username, role=user.role, token_id=accounts.SESSION_PRINCIPAL)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise web.HTTPUnauthorized(
            text=msgspec.json.encode(ErrorOut(error="an API token is required (Bearer)")).decode(),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="tether"'},
        )
    secret = secret.strip()
    now = datetime.now(UTC)
    cache = _token_cache(state.store)
    key = cache.key(secret)
    record = cache.get(key, now=now)
    if record is None:
        record = await state.store.authenticate_api_token(secret, now=now)
        if record is None:
            raise _error(401, "API token unknown, expired or revoked")
        cache.put(key, record)
    return Principal(name=record.name, role=record.role, token_id=record.token_id)


def _wrap(route: ApiRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    account_change = route.handler in _ACCOUNT_HANDLERS and route.method != "GET"

    async def handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        state: CloudState = request.app[STATE_KEY]
        status = 500
        try:
            response = await answer(request, state, started)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first
            raise
        finally:
            state.api_stats.record(route.method, route.path, status, time.perf_counter() - started)

    async def answer(request: web.Request, state: CloudState, started: float) -> web.StreamResponse:
        steps: list[tuple[str, float]] = []
        _timing.set(steps)  # this request's task has its own context
        principal = await authenticate(request, state)
        if principal.role not in PERMISSIONS[route.permission]:
            words = PERMISSION_WORDS.get(route.permission, route.permission)
            raise _error(403, f"role {principal.role!r} may not {words}")
        _step("auth", started)
        if has_nul(*request.match_info.values(), *request.query.values()):
            raise _error(400, "a path or query parameter holds a NUL character (\\u0000)")
        try:
            result = await route.handler(request, state, principal)
        finally:
            if account_change:
                _token_cache(state.store).clear()
        response = result if isinstance(result, web.StreamResponse) else _json(result, route.status)
        if not response.prepared:
            _step("total", started)
            response.headers["Server-Timing"] = ", ".join(
                f"{name};dur={ms:.3f}" for name, ms in steps
            )
        return response

    return handler


async def _audit(
    request: web.Request,
    state: CloudState,
    principal: Principal,
    action: str,
    target: str | None,
    detail: dict[str, Any] | None = None,
) -> None:
    await state.store.audit(
        actor=principal.actor,
        action=action,
        target=target,
        detail=detail,
        source=request.remote,
        now=datetime.now(UTC),
    )


# --- handlers -------------------------------------------------------------------------------

_KIND = re.compile(r"[a-z][a-z0-9-]{0,63}")


async def whoami(request: web.Request, state: CloudState, p: Principal) -> WhoAmI:
    return WhoAmI(name=p.name, role=p.role, version=__version__)


async def list_gateways(request: web.Request, state: CloudState, p: Principal) -> list[GatewayOut]:
    return [_gateway_out(g) for g in await state.store.list_gateways()]


async def _gateway(state: CloudState, gateway_id: str) -> GatewayRecord:
    record = await state.store.get_gateway(gateway_id)
    if record is None:
        raise _error(404, f"no gateway {gateway_id!r}")
    return record


async def get_gateway(request: web.Request, state: CloudState, p: Principal) -> GatewayDetail:
    gateway = await _gateway(state, request.match_info["gateway_id"])
    link = await state.links.get(gateway.gateway_id)
    return GatewayDetail(
        gateway=_gateway_out(gateway),
        tier_reason=link.reason if link else None,
        tier_since=link.since if link else None,
        tier_history=[TierChange(**h) for h in link.history] if link else [],
        preflight=await state.health.store.preflight(gateway.gateway_id),
    )


async def revoke_gateway(request: web.Request, state: CloudState, p: Principal) -> GatewayOut:
    gateway_id = request.match_info["gateway_id"]
    before = await _gateway(state, gateway_id)
    if before.revoked_at is not None:
        at = _iso(before.revoked_at)
        raise _error(409, f"gateway {gateway_id!r} was already revoked at {at}")
    try:
        record = await state.store.revoke_gateway(gateway_id, now=datetime.now(UTC))
    except GatewayUnknown:
        raise _error(404, f"no gateway {gateway_id!r}") from None
    await state.hub.close(gateway_id, CloseCode.REVOKED, "gateway revoked by an operator")
    await state.store.notify_command(f"revoke:{gateway_id}")
    await _audit(request, state, p, "gateway.revoke", gateway_id)
    return _gateway_out(record)


async def send_command(request: web.Request, state: CloudState, p: Principal) -> CommandOut:
    """Queue the command and its audit entry in one transaction, then push it to the
    gateway's link if this process holds it (from memory, no second read), then tell the
    other processes; answer once its delivery, if any, is recorded.

    Server-Timing steps: ``queue`` (the transaction, from the ``created_at`` stamp to the
    commit), ``push`` (the wake-up: the CommandRequest handed to the link's socket), ``mark``
    (waiting for the grouped write that records it delivered)."""
    gateway_id = request.match_info["gateway_id"]
    body: CommandIn = await _decode(request, CommandIn)
    if not _KIND.fullmatch(body.kind):
        raise _error(400, f"command kind {body.kind!r} is not a valid name")
    if body.kind not in COMMAND_KINDS and body.kind not in state.settings.extra_command_kinds:
        known = ", ".join(sorted({*COMMAND_KINDS, *state.settings.extra_command_kinds}))
        raise _error(400, f"unknown command kind {body.kind!r} (known: {known})")
    grant = await _may_send(state, p, gateway_id, body.kind)
    ttl = state.settings.command_ttl
    if body.ttl_seconds is not None:
        if not 0 < body.ttl_seconds <= 30 * 86400:
            raise _error(400, "ttl_seconds must be within (0, 2592000]")
        ttl = timedelta(seconds=body.ttl_seconds)
    now = datetime.now(UTC)
    started = time.perf_counter()
    try:
        record = await state.store.create_command(
            gateway_id=gateway_id,
            kind=body.kind,
            args=body.args,
            expires_at=now + ttl,
            created_by=p.actor,
            now=now,
            source=request.remote,
            grant_id=None if grant is None else grant.grant_id,
        )
    except GatewayUnknown:
        raise _error(404, f"no gateway {gateway_id!r}") from None
    except GatewayRevoked:
        raise _error(409, f"gateway {gateway_id!r} is revoked") from None
    started = _step("queue", started)
    state.service.offer(record)
    try:
        await state.hub.wake(gateway_id)
    finally:
        state.service.withdraw(gateway_id, record.command_id)  # no link here took it
    started = _step("push", started)
    await state.store.notify_command(gateway_id)
    delivered_at = await state.service.delivery_marked(record.command_id)
    if delivered_at is not None:
        record = replace(
            record, state=CommandState.DELIVERED, delivered_at=delivered_at, updated_at=delivered_at
        )
    else:  # not sent from memory here (no link here, or a read of what waits sent it)
        record = await state.store.get_command(record.command_id) or record
    _step("mark", started)
    return _command_out(record)


async def list_commands(request: web.Request, state: CloudState, p: Principal) -> list[CommandOut]:
    gateway = request.query.get("gateway")
    state_name = request.query.get("state")
    limit = _int_param(request, "limit", 100)
    try:
        command_state = CommandState(state_name) if state_name else None
    except ValueError:
        states = ", ".join(s.value for s in CommandState)
        raise _error(400, f"state must be one of {states}") from None
    if not 1 <= limit <= 1000:
        raise _error(400, "limit must be within 1..1000")
    records = await state.store.list_commands(gateway_id=gateway, state=command_state, limit=limit)
    return [_command_out(c) for c in records]


async def get_command(request: web.Request, state: CloudState, p: Principal) -> CommandOut:
    record = await state.store.get_command(request.match_info["command_id"])
    if record is None:
        raise _error(404, "no such command")
    return _command_out(record)


#: The grant scope a role without "command" needs to send or cancel a diagnostic command.
DIAGNOSE_SCOPE: Final = check_scope("diagnose")


def needs_grant(role: str) -> bool:
    """Whether *role* reaches a gateway only under a support grant (support)."""
    return role in PERMISSIONS["diagnose"] and role not in PERMISSIONS["command"]


async def _may_send(
    state: CloudState, p: Principal, gateway_id: str, kind: str
) -> SupportGrantRecord | None:
    """The support grant *p* sends or cancels a command of *kind* on the gateway under: None
    for a role that may send any command. A role that needs a grant is refused (403, saying
    what it lacks) any kind but a diagnostic one, and without a grant for that gateway."""
    if p.role in PERMISSIONS["command"]:
        return None
    if kind not in DIAGNOSTIC_COMMAND_KINDS:
        diagnostic = ", ".join(sorted(DIAGNOSTIC_COMMAND_KINDS))
        raise _error(
            403, f"role {p.role!r} may send or cancel only diagnostic commands ({diagnostic})"
        )
    now = datetime.now(UTC)
    grant = await state.store.active_support_grant(
        gateway_id=gateway_id, username=p.name, scope=DIAGNOSE_SCOPE, now=now
    )
    if grant is None:
        raise _error(403, await _no_grant(state, p, gateway_id, now))
    return grant


async def _customer_data(state: CloudState, p: Principal, gateway_id: str) -> None:
    """A gateway's devices, points and observations are the customer's building data: a role
    that needs a support grant reads them only under one for that gateway (403 otherwise)."""
    if not needs_grant(p.role):
        return
    now = datetime.now(UTC)
    grant = await state.store.active_support_grant(
        gateway_id=gateway_id, username=p.name, scope=DIAGNOSE_SCOPE, now=now
    )
    if grant is None:
        said = await _no_grant(state, p, gateway_id, now)
        raise _error(403, f"a gateway's devices, points and observations: {said}")


async def _no_grant(state: CloudState, p: Principal, gateway_id: str, now: datetime) -> str:
    """Why *p* may not reach the gateway, and who can change that."""
    said = f"role {p.role!r} needs a support grant for gateway {gateway_id}"
    last = await state.store.list_support_grants(
        gateway_id=gateway_id, username=p.name, scope=DIAGNOSE_SCOPE, limit=1
    )
    if last and last[0].revoked_at is not None:
        said += f": {p.name}'s last one was revoked at {_iso(last[0].revoked_at)}"
    elif last and last[0].expires_at <= now:
        said += f": {p.name}'s last one expired at {_iso(last[0].expires_at)}"
    example = f"tether support grant {shlex.quote(gateway_id)} --user {shlex.quote(p.name)}"
    return f"{said} (an operator gives one: {example} --hours 4 --reason TEXT)"


async def cancel_command(request: web.Request, state: CloudState, p: Principal) -> CommandOut:
    command_id = request.match_info["command_id"]
    grant = None
    if p.role not in PERMISSIONS["command"]:
        found = await state.store.get_command(command_id)
        if found is None:
            raise _error(404, f"no command {command_id!r}")
        grant = await _may_send(state, p, found.gateway_id, found.kind)
    try:
        record = await state.store.apply_command_event(
            command_id, CommandEvent.CANCEL, now=datetime.now(UTC)
        )
    except IllegalTransition as exc:
        raise _error(409, str(exc)) from None
    except (CommandNotFound, LookupError):
        raise _error(404, f"no command {command_id!r}") from None
    detail = None if grant is None else {"gateway": record.gateway_id, "grant": grant.grant_id}
    await _audit(request, state, p, "command.cancel", command_id, detail)
    return _command_out(record)


# --- support grants -------------------------------------------------------------------------


def _grant_detail(g: SupportGrantRecord) -> dict[str, Any]:
    """What the audit log keeps of a grant."""
    hours = (g.expires_at - g.created_at).total_seconds() / 3600
    return {
        "gateway": g.gateway_id,
        "user": g.username,
        "scope": g.scope,
        "hours": round(hours, 4),
        "until": _iso(g.expires_at),
        "reason": g.reason,
    }


async def create_support_grant(
    request: web.Request, state: CloudState, p: Principal
) -> SupportGrantOut:
    """Give a support user the scope on one gateway for some hours, then no longer."""
    gateway_id = request.match_info["gateway_id"]
    body: SupportGrantIn = await _decode(request, SupportGrantIn)
    if not math.isfinite(body.hours) or not 0 < body.hours <= GRANT_HOURS_MAX:
        raise _error(400, f"hours must be more than 0 and at most {GRANT_HOURS_MAX} (a week)")
    try:
        scope = check_scope(body.scope)
        reason = check_reason(body.reason)
        username = accounts.normalize_username(body.user)
    except (GrantInvalid, accounts.InvalidUsername) as exc:
        raise _error(400, str(exc)) from None
    gateway = await _gateway(state, gateway_id)
    if gateway.revoked_at is not None:
        raise _error(409, f"gateway {gateway_id!r} is revoked: support cannot reach it")
    user = await request.app[accounts.ACCOUNTS_KEY].users.get_user(username)
    if user is None:
        raise _error(404, f"no user named {username!r}")
    if not needs_grant(user.role):
        needing = " or ".join(repr(role) for role in ROLES if needs_grant(role))
        raise _error(
            409,
            f"user {username!r} has the role {user.role!r}, which needs no grant: a support "
            f"grant is for a user with the role {needing}",
        )
    if user.disabled:
        raise _error(409, f"user {username!r} is disabled")
    now = datetime.now(UTC)
    try:
        grant = await state.store.create_support_grant(
            gateway_id=gateway_id,
            username=username,
            scope=scope,
            reason=reason,
            created_by=p.actor,
            now=now,
            expires_at=now + timedelta(hours=body.hours),
        )
    except GatewayUnknown:
        raise _error(404, f"no gateway {gateway_id!r}") from None
    except GatewayRevoked:
        raise _error(409, f"gateway {gateway_id!r} is revoked: support cannot reach it") from None
    except GrantInvalid as exc:
        raise _error(400, str(exc)) from None
    await _audit(request, state, p, "support.grant", grant.grant_id, _grant_detail(grant))
    return _grant_out(grant, now)


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise _error(400, f"{name} must be true or false, not {raw[:40]!r}")


async def list_support_grants(
    request: web.Request, state: CloudState, p: Principal
) -> list[SupportGrantOut]:
    """Grants, newest first; a support user's own alone."""
    user = request.query.get("user") or None
    if needs_grant(p.role):
        if user is not None and user != p.name:
            raise _error(403, f"role {p.role!r} may read only its own support grants")
        user = p.name
    limit = _int_param(request, "limit", 200)
    if not 1 <= limit <= 1000:
        raise _error(400, "limit must be within 1..1000")
    now = datetime.now(UTC)
    grants = await state.store.list_support_grants(
        gateway_id=request.query.get("gateway") or None,
        username=user,
        active_at=now if _bool_param(request, "active") else None,
        limit=limit,
    )
    return [_grant_out(g, now) for g in grants]


async def revoke_support_grant(
    request: web.Request, state: CloudState, p: Principal
) -> SupportGrantOut:
    """End a grant before its time: any grant (admin, operator), or one's own (support)."""
    grant_id = request.match_info["grant_id"]
    now = datetime.now(UTC)
    if p.role not in PERMISSIONS["grant"]:
        found = await state.store.get_support_grant(grant_id)
        if found is None:
            raise _error(404, f"no support grant {grant_id!r}")
        if found.username != p.name:
            raise _error(403, f"role {p.role!r} may end only its own support grants")
    try:
        grant = await state.store.revoke_support_grant(grant_id, revoked_by=p.actor, now=now)
    except GrantUnknown:
        raise _error(404, f"no support grant {grant_id!r}") from None
    except GrantEnded as exc:
        raise _error(409, str(exc)) from None
    await _audit(request, state, p, "support.revoke", grant.grant_id, _grant_detail(grant))
    return _grant_out(grant, now)


#: A gateway name: printable, no control characters, at most this long.
NAME_MAX = 128


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.strip()
    if not name:
        raise _error(400, "name must not be empty (leave it out for a generated one)")
    if len(name) > NAME_MAX:
        raise _error(400, f"name must be at most {NAME_MAX} characters, not {len(name)}")
    if not name.isprintable():
        raise _error(400, "name must not contain control characters or line breaks")
    return name


async def create_token(request: web.Request, state: CloudState, p: Principal) -> TokenOut:
    body: TokenIn = await _decode(request, TokenIn)
    body.name = _check_name(body.name)
    if body.name is not None:
        holder = await state.store.name_in_use(body.name, now=datetime.now(UTC))
        if holder is not None:
            raise _error(
                409,
                f"the name {body.name!r} is taken by {holder}: choose another, "
                "or revoke that one first",
            )
    ttl = state.settings.enrollment_token_ttl
    if body.ttl_seconds is not None:
        if not 0 < body.ttl_seconds <= 30 * 86400:
            raise _error(400, "ttl_seconds must be within (0, 2592000]")
        ttl = timedelta(seconds=body.ttl_seconds)
    record, secret = await state.store.create_enrollment_token(
        gateway_name=body.name, ttl=ttl, created_by=p.actor, now=datetime.now(UTC)
    )
    await _audit(request, state, p, "token.create", record.token_id, {"name": body.name})
    code = encode_code(
        url=state.settings.public_url, secret=secret, ca_fingerprint=state.ca.fingerprint()
    )
    return TokenOut(
        token_id=record.token_id,
        name=record.gateway_name,
        expires_at=record.expires_at,
        enrollment_code=code,
    )


def _token_info(t: EnrollmentTokenRecord) -> TokenInfo:
    return TokenInfo(
        token_id=t.token_id,
        name=t.gateway_name,
        created_at=t.created_at,
        created_by=t.created_by,
        expires_at=t.expires_at,
        used_at=t.used_at,
        revoked_at=t.revoked_at,
    )


async def list_tokens(request: web.Request, state: CloudState, p: Principal) -> list[TokenInfo]:
    return [_token_info(t) for t in await state.store.list_enrollment_tokens()]


async def revoke_token(request: web.Request, state: CloudState, p: Principal) -> TokenInfo:
    """Withdraw an enrollment token that was not used: no gateway can enroll with it after."""
    token_id = request.match_info["enrollment_token_id"]
    found = {t.token_id: t for t in await state.store.list_enrollment_tokens()}.get(token_id)
    if found is None:
        raise _error(404, f"no enrollment token {token_id!r}")
    if found.revoked_at is not None:
        at = _iso(found.revoked_at)
        raise _error(409, f"enrollment token {token_id} was already revoked at {at}")
    if found.used_at is not None:
        # The enrollment it was spent on is in the audit log, under the token as its actor.
        enrolled = await state.store.list_audit(
            actor=f"token:{token_id}", action="gateway.enroll", limit=1
        )
        gateway = enrolled[0].target if enrolled and enrolled[0].target else None
        instead = (
            f"revoke the gateway it enrolled instead: tether gateway revoke {shlex.quote(gateway)}"
            if gateway
            else "revoke the gateway it enrolled instead"
        )
        raise _error(
            409, f"enrollment token {token_id} was already used at {_iso(found.used_at)}; {instead}"
        )
    try:
        record = await state.store.revoke_enrollment_token(token_id, now=datetime.now(UTC))
    except TokenUnknown:
        raise _error(404, f"no enrollment token {token_id!r}") from None
    await _audit(request, state, p, "token.revoke", token_id, {"name": record.gateway_name})
    return _token_info(record)


def audit_filter(request: web.Request) -> AuditFilter:
    """The audit filter a request's query names (``actor``, ``action``, ``target``, ``since``,
    ``until``), or a 400 answer saying what is wrong with it."""
    try:
        return AuditFilter.from_query(request.query)
    except AuditFilterInvalid as exc:
        raise _error(400, str(exc)) from None


async def list_audit(request: web.Request, state: CloudState, p: Principal) -> list[AuditOut]:
    """A page of the audit log, newest first; the next page is ``before`` the last id."""
    limit = _int_param(request, "limit", 200)
    if not 1 <= limit <= 10_000:
        raise _error(400, "limit must be within 1..10000")
    before = _int_param(request, "before", 0) if request.query.get("before") else None
    if before is not None and before < 1:
        raise _error(400, "before must be an entry's id (1 or more)")
    where = audit_filter(request)
    records = await state.store.list_audit(
        actor=where.actor,
        action=where.action,
        target=where.target,
        since=where.since,
        until=where.until,
        before_id=before,
        limit=limit,
    )
    return [
        AuditOut(
            id=a.audit_id,
            at=a.at,
            actor=a.actor,
            action=a.action,
            target=a.target,
            detail=a.detail,
            source=a.source,
        )
        for a in records
    ]


_SECTION = re.compile(r"[a-z][a-z0-9-]{0,63}")


async def put_config(request: web.Request, state: CloudState, p: Principal) -> ConfigOut:
    gateway_id = request.match_info["gateway_id"]
    section = request.match_info["section"]
    if not _SECTION.fullmatch(section):
        raise _error(400, f"configuration section {section!r} is not a valid name")
    gateway = await _gateway(state, gateway_id)
    if gateway.revoked_at is not None:
        raise _error(409, f"gateway {gateway_id!r} is revoked")
    body = await _decode(request, dict[str, Any])
    try:
        check_section(section, body)
    except ConfigInvalid as exc:
        raise _error(400, str(exc)) from None
    record = await state.service.config.put(gateway_id, section, body, by=p.actor)
    await _audit(
        request, state, p, "config.set", gateway_id, {"section": section, "version": record.version}
    )
    await state.hub.wake(gateway_id)
    await state.store.notify_command(gateway_id)
    return _config_out(await state.service.config.get(gateway_id, section) or record)


def _config_out(c: Any) -> ConfigOut:
    return ConfigOut(
        section=c.section,
        version=c.version,
        data=c.data,
        updated_at=c.updated_at,
        updated_by=c.updated_by,
        applied_version=c.applied_version,
        applied_error=c.applied_error,
        applied_at=c.applied_at,
    )


async def get_config(request: web.Request, state: CloudState, p: Principal) -> list[ConfigOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    return [_config_out(c) for c in await state.service.config.all_for(gateway_id)]


async def list_points(request: web.Request, state: CloudState, p: Principal) -> list[PointOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    await _customer_data(state, p, gateway_id)
    return [
        PointOut(
            point_id=r.point_id,
            device_id=r.device_id,
            name=r.name,
            kind=r.kind,
            unit=r.unit,
            writable=r.writable,
            last_ts=r.last_ts,
            last_value=r.last_value,
        )
        for r in await state.telemetry.list_points(gateway_id)
    ]


async def list_devices(request: web.Request, state: CloudState, p: Principal) -> list[DeviceOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    await _customer_data(state, p, gateway_id)
    return [
        DeviceOut(
            device_id=d["device_id"],
            connector=d["connector"],
            name=d["name"],
            kind=d["kind"],
            vendor=d["vendor"],
            model=d["model"],
            location=d["location"],
        )
        for d in await state.telemetry.list_devices(gateway_id)
    ]


def _iso(at: datetime) -> str:
    """A time as this API writes it: ISO 8601 in UTC, to the second."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _error(400, f"{name} must be a whole number, not {raw[:40]!r}") from None


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise _error(400, f"{name} must be a Unix time or an ISO 8601 time") from None


async def query_observations(
    request: web.Request, state: CloudState, p: Principal
) -> list[ObservationOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    await _customer_data(state, p, gateway_id)
    limit = _int_param(request, "limit", 10_000)
    if not 1 <= limit <= 100_000:
        raise _error(400, "limit must be within 1..100000")
    rows = await state.telemetry.query(
        gateway_id,
        point_id=request.query.get("point") or None,
        since=_float_param(request, "since"),
        until=_float_param(request, "until"),
        after=_float_param(request, "after"),
        limit=limit,
    )
    return [
        ObservationOut(point_id=r.point_id, ts=r.ts, value=r.value, quality=r.quality) for r in rows
    ]


async def list_streams(request: web.Request, state: CloudState, p: Principal) -> list[StreamOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    return [
        StreamOut(
            stream=r.stream,
            last_seq=r.hwm,
            accepted=r.accepted,
            duplicates=r.duplicates,
            gaps=r.gaps,
            dropped_on_gateway=r.dropped_reported,
        )
        for r in await state.telemetry.streams(gateway_id)
    ]


async def get_health(request: web.Request, state: CloudState, p: Principal) -> HealthOut:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    since = _float_param(request, "since")
    if since is None:
        since = datetime.now(UTC).timestamp() - 86400
    series = await state.health.store.series(gateway_id, since=since)
    return HealthOut(
        latest=await state.health.store.latest(gateway_id),
        series=[{"ts": point.ts, **point.figures} for point in series],
    )


async def get_logs(request: web.Request, state: CloudState, p: Principal) -> list[LogOut]:
    gateway_id = request.match_info["gateway_id"]
    await _gateway(state, gateway_id)
    limit = _int_param(request, "limit", 200)
    if not 1 <= limit <= 5000:
        raise _error(400, "limit must be within 1..5000")
    level = request.query.get("level") or None
    if level is not None:
        level = level.lower()
        if level not in LOG_LEVELS:
            raise _error(400, f"level must be one of {', '.join(LOG_LEVELS)}")
    rows = await state.health.store.logs(
        gateway_id,
        after=_float_param(request, "after"),
        level=level,
        limit=limit,
        include_customer_data=p.role != "support",
    )
    return [
        LogOut(
            ts=r.ts,
            level=r.level,
            source=r.source,
            message=r.message,
            customer_data=r.customer_data,
            fields=r.fields,
        )
        for r in rows
    ]


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/whoami", whoami, "read", "Who the token belongs to", None, WhoAmI),
    ApiRoute(
        "GET", "/api/v1/gateways", list_gateways, "read", "List gateways", None, list[GatewayOut]
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}",
        get_gateway,
        "read",
        "One gateway with its link tier, the reason and recent tier changes",
        None,
        GatewayDetail,
    ),
    ApiRoute(
        "POST",
        "/api/v1/gateways/{gateway_id}/revoke",
        revoke_gateway,
        "revoke",
        "Revoke a gateway: its link closes and its certificates are refused",
        None,
        GatewayOut,
    ),
    ApiRoute(
        "POST",
        "/api/v1/gateways/{gateway_id}/commands",
        send_command,
        "diagnose",
        "Queue a command for a gateway (a support role: only diagnostic kinds, ping and "
        "metrics, under a support grant for that gateway)",
        CommandIn,
        CommandOut,
        201,
    ),
    ApiRoute(
        "GET",
        "/api/v1/commands",
        list_commands,
        "read",
        "List commands, newest first",
        None,
        list[CommandOut],
        query=(
            ("gateway", "only this gateway's"),
            ("state", "only in this state"),
            ("limit", "at most this many (1..1000)"),
        ),
    ),
    ApiRoute(
        "GET", "/api/v1/commands/{command_id}", get_command, "read", "One command", None, CommandOut
    ),
    ApiRoute(
        "POST",
        "/api/v1/commands/{command_id}/cancel",
        cancel_command,
        "diagnose",
        "Cancel a command that has not started (a support role: only a diagnostic one, under "
        "a support grant for its gateway)",
        None,
        CommandOut,
    ),
    ApiRoute(
        "POST",
        "/api/v1/enrollment-tokens",
        create_token,
        "enroll",
        "Create a one-time enrollment token",
        TokenIn,
        TokenOut,
        201,
    ),
    ApiRoute(
        "POST",
        "/api/v1/enrollment-tokens/{enrollment_token_id}/revoke",
        revoke_token,
        "enroll",
        "Revoke an enrollment token that was not used",
        None,
        TokenInfo,
    ),
    ApiRoute(
        "GET",
        "/api/v1/enrollment-tokens",
        list_tokens,
        "enroll",
        "List enrollment tokens",
        None,
        list[TokenInfo],
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/config",
        get_config,
        "read",
        "A gateway's configuration sections and what it applied",
        None,
        list[ConfigOut],
    ),
    ApiRoute(
        "PUT",
        "/api/v1/gateways/{gateway_id}/config/{section}",
        put_config,
        "command",
        "Set a configuration section (e.g. connectors); pushed to the gateway",
        dict[str, Any],
        ConfigOut,
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/devices",
        list_devices,
        "read",
        "Devices the gateway discovered",
        None,
        list[DeviceOut],
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/points",
        list_points,
        "read",
        "Points the gateway discovered, with their latest value",
        None,
        list[PointOut],
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/observations",
        query_observations,
        "read",
        "Observations, oldest first",
        None,
        list[ObservationOut],
        query=(
            ("point", "only this point"),
            ("since", "from (Unix or ISO 8601)"),
            ("until", "before (Unix or ISO 8601)"),
            ("after", "strictly after this time (a live tail's cursor)"),
            ("limit", "at most this many (1..100000)"),
        ),
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/streams",
        list_streams,
        "read",
        "Telemetry streams: last sequence, counts, gaps and drops",
        None,
        list[StreamOut],
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/health",
        get_health,
        "read",
        "Latest health report and figures over time (hourly averages when old)",
        None,
        HealthOut,
        query=(("since", "from (Unix or ISO 8601); default a day ago"),),
    ),
    ApiRoute(
        "GET",
        "/api/v1/gateways/{gateway_id}/logs",
        get_logs,
        "read",
        "Gateway logs (records that may carry customer data are hidden from support)",
        None,
        list[LogOut],
        query=(
            ("after", "strictly after this time (follow cursor)"),
            ("level", "this level and above"),
            ("limit", "at most this many"),
        ),
    ),
    ApiRoute(
        "POST",
        "/api/v1/gateways/{gateway_id}/support-grants",
        create_support_grant,
        "grant",
        "Give a support user access to a gateway (scope diagnose: its diagnostic commands) "
        f"for some hours (at most {GRANT_HOURS_MAX})",
        SupportGrantIn,
        SupportGrantOut,
        201,
    ),
    ApiRoute(
        "GET",
        "/api/v1/support-grants",
        list_support_grants,
        "read",
        "Support grants, newest first (a support user: their own alone)",
        None,
        list[SupportGrantOut],
        query=(
            ("gateway", "only this gateway's"),
            ("user", "only this support user's"),
            ("active", "true: only those that count now (not expired, not revoked)"),
            ("limit", "at most this many (1..1000; default 200)"),
        ),
    ),
    ApiRoute(
        "POST",
        "/api/v1/support-grants/{grant_id}/revoke",
        revoke_support_grant,
        "diagnose",
        "End a support grant before its time (a support user: only its own)",
        None,
        SupportGrantOut,
    ),
    ApiRoute(
        "GET",
        "/api/v1/audit",
        list_audit,
        "audit",
        "The audit log, newest first; filtered by actor, action, target and time",
        None,
        list[AuditOut],
        query=(
            *AUDIT_FILTER_FIELDS,
            ("before", "only entries with an id below this (the last id of the previous page)"),
            ("limit", "at most this many (1..10000; default 200)"),
        ),
    ),
    *(ApiRoute(*spec) for spec in accounts.API_ROUTES),  # users, their tokens, audit export
)


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 built from :data:`ROUTES` and their msgspec types."""
    types: list[Any] = [ErrorOut]
    for route in ROUTES:
        if route.request is not None:
            types.append(route.request)
        if route.response is not None:
            types.append(route.response)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(types, schemas, strict=True))
    error_ref = by_type[ErrorOut]
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        params += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": desc,
                "schema": {"type": "string"},
            }
            for name, desc in route.query
        ]
        changes = route.method != "GET"
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "security": [{"bearer": []}],
            "x-tether-permission": route.permission,
            "x-tether-roles": sorted(PERMISSIONS[route.permission]),
            "parameters": params,
            "responses": {
                str(route.status): {
                    "description": "OK",
                    "content": {"application/json": {"schema": by_type[route.response]}},
                },
                **{
                    code: {
                        "description": desc,
                        "content": {"application/json": {"schema": error_ref}},
                    }
                    for code, desc in (
                        ("400", "Bad request"),
                        ("401", "No valid token"),
                        ("403", "Role not allowed"),
                        ("404", "Not found"),
                        *([("409", "Conflicts with the current state")] if changes else []),
                        *([("413", "Request body too large")] if route.request else []),
                        ("500", "Internal error (the cloud's log has details)"),
                    )
                },
            },
        }
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[route.request]}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "tether operator API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


def api_routes() -> list[web.RouteDef]:
    defs = [web.route(r.method, r.path, _wrap(r)) for r in ROUTES]
    defs.append(web.get("/api/v1/openapi.json", openapi))
    return defs
