"""Operator accounts: argon2id passwords, console sessions, login throttling, and their API.

Roles are those of :data:`tether.cloud.store.ROLES`; what each role may do is
:data:`tether.cloud.api.PERMISSIONS`. A person logs in to the console with a username and a
password (hashed with argon2id); a session is a random 256-bit secret in a cookie that is
``Secure``, ``HttpOnly`` and ``SameSite=Strict``, stored hashed, with a CSRF token of its own
that every state-changing request must echo (form field or header). A session ends after
:attr:`AccountPolicy.session_idle` without use, and at the latest after
:attr:`AccountPolicy.session_lifetime`. Failed logins are audited (the username only when it
names a user: people type passwords into that field) and throttled per username and source,
counted in the audit log, which every worker process shares; a wrong current password given to
change one's own password counts as a failed login. A process checks the password attempts of
one source one at a time, so attempts sent together are counted as the ones before them were and
cannot all slip under the limit. People can also hold API tokens with their own role.

Errors::

    AccountError
     ├── InvalidUsername        not a valid username
     ├── WeakPassword           too short or too long
     ├── LoginRefused           wrong username or password, or the user is disabled
     ├── LoginThrottled         too many failures for this username and source: wait
     ├── LastAdmin              the change would leave no enabled admin user
     └── NotAUser               the caller is an API token that belongs to no user

:data:`API_ROUTES` are the operator-API routes for users, their tokens and the audit export;
:mod:`tether.cloud.api` adds them to its route table.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tether.cloud.state import CloudState
from tether.cloud.store import ROLES, ApiTokenRecord, ApiTokenUnknown, AuditRecord, Store
from tether.cloud.store.accounts import (
    LOGIN,
    LOGIN_FAILED,
    LOGIN_THROTTLED,
    AccountStore,
    OwnedToken,
    SessionRecord,
    UserExists,
    UserRecord,
    UserUnknown,
)
from tether.cloud.store.errors import UnknownRole
from tether.cloud.store.store import AUDIT_FILTER_FIELDS, AuditFilter, AuditFilterInvalid

if TYPE_CHECKING:
    from tether.cloud.api import Principal

__all__ = [
    "ACCOUNTS_KEY",
    "ADMIN_PASSWORD_FILE",
    "API_ROUTES",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LIVE_HEADER",
    "SESSION_COOKIE",
    "SESSION_PRINCIPAL",
    "AccountError",
    "AccountPolicy",
    "Accounts",
    "InvalidUsername",
    "LastAdmin",
    "LoginRefused",
    "LoginThrottled",
    "NotAUser",
    "WeakPassword",
    "api_session",
    "csrf_matches",
    "hash_session_secret",
    "normalize_username",
]

log = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_LABEL: Final = "first start (admin.token)"  # noqa: S105 (a label)
ADMIN_PASSWORD_FILE: Final = "admin.password"  # noqa: S105 (a file name, not a secret)
#: ``__Host-``: the browser keeps it only if Secure, for this host and path ``/``.
SESSION_COOKIE: Final = "__Host-tether-session"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
#: Sent by the console's background refresh: it reads, but does not count as use (idle timer).
LIVE_HEADER: Final = "X-Tether-Live"
#: The ``token_id`` of a :class:`~tether.cloud.api.Principal` authenticated by a session.
SESSION_PRINCIPAL: Final = "session"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
PASSWORD_MIN: Final = 10
PASSWORD_MAX: Final = 1024
#: argon2 with the default parameters holds 64 MiB while hashing: bound how many run at once.
_HASHING_AT_ONCE: Final = 2


# --- errors ---------------------------------------------------------------------------------


class AccountError(Exception):
    """Base class of the account errors; the message is safe to show to the person."""


class InvalidUsername(AccountError):
    def __init__(self, username: str) -> None:
        super().__init__(
            f"invalid username {username[:80]!r}: 1-64 of a-z 0-9 . _ @ - "
            "starting with a letter or digit"
        )


class WeakPassword(AccountError):
    def __init__(self) -> None:
        super().__init__(f"a password needs {PASSWORD_MIN} to {PASSWORD_MAX} characters")


class LoginRefused(AccountError):
    """The same message whatever was wrong; the reason goes to the audit log only."""

    def __init__(self, reason: str) -> None:
        super().__init__("wrong username or password")
        self.reason = reason


class LoginThrottled(AccountError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins; try again in {max(1, round(retry_after))} seconds"
        )
        self.retry_after = retry_after


class LastAdmin(AccountError):
    def __init__(self) -> None:
        super().__init__("refused: no enabled admin user would be left")


class NotAUser(AccountError):
    def __init__(self) -> None:
        super().__init__("this API token belongs to no user account")


# --- policy, throttle -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    session_idle: timedelta = timedelta(minutes=30)
    session_lifetime: timedelta = timedelta(hours=12)
    #: ``last_seen`` is written at most this often per session (a write per click is waste).
    touch_every: timedelta = timedelta(seconds=60)
    login_failures: int = 5  # per username and source, within login_window
    source_failures: int = 30  # per source, any usernames, within login_window
    login_window: timedelta = timedelta(minutes=15)


# --- helpers --------------------------------------------------------------------------------


def normalize_username(username: str) -> str:
    """The stored form of a username (lowercase); raises InvalidUsername."""
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidUsername(username)
    return name


def _check_password(password: str) -> None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise WeakPassword()


def new_password() -> str:
    """A random password of 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(18)


def hash_session_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_matches(given: str | None, session: SessionRecord) -> bool:
    """Whether *given* is the session's CSRF token (compared in constant time)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), session.csrf_token.encode("utf-8"))


def actor_of(user: UserRecord) -> str:
    """How the audit log names a person: as an API principal is named."""
    return f"{user.username} ({user.role})"


def _now() -> datetime:
    return datetime.now(UTC)


class _OneAtATime:
    """Async locks by key, forgotten when no one holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# --- the service ----------------------------------------------------------------------------


class Accounts:
    """Users, sessions and people's API tokens; every change is audited here."""

    def __init__(
        self,
        store: Store,
        *,
        policy: AccountPolicy | None = None,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.users = AccountStore(store)
        self.policy = policy or AccountPolicy()
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        self._hashing = asyncio.Semaphore(_HASHING_AT_ONCE)
        self._dummy_hash: str | None = None
        # Password attempts of one source, one at a time: each is checked against the
        # failures the ones before it recorded (sent together, they would all see none).
        self._attempts = _OneAtATime()

    # -- passwords --

    async def hash_password(self, password: str) -> str:
        _check_password(password)
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            try:
                return await asyncio.to_thread(self.hasher.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    async def _burn(self, password: str) -> None:
        """Spend a verification's time when there is no user, so timing does not tell."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash_password(new_password())
        await self._verify(self._dummy_hash, password)

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        target: str | None,
        source: str | None,
        detail: dict[str, object] | None = None,
    ) -> None:
        await self.store.audit(
            actor=actor,
            action=action,
            target=target,
            detail=detail,
            source=source,
            now=self.clock(),
        )

    # -- users --

    async def create_user(
        self, username: str, role: str, password: str | None, *, actor: str, source: str | None
    ) -> tuple[UserRecord, str | None]:
        """Create a user; returns it and the generated password when none was given."""
        name = normalize_username(username)
        if role not in ROLES:
            raise UnknownRole(role, ROLES)
        generated = None
        if password is None:
            password = generated = new_password()
        password_hash = await self.hash_password(password)
        user = await self.users.create_user(
            username=name,
            password_hash=password_hash,
            role=role,
            created_by=actor,
            now=self.clock(),
        )
        await self.audit(
            actor=actor, action="user.create", target=name, source=source, detail={"role": role}
        )
        return user, generated

    async def _enabled_admins(self) -> list[UserRecord]:
        return [u for u in await self.users.list_users() if u.role == "admin" and not u.disabled]

    async def _keep_an_admin(self, username: str) -> None:
        admins = await self._enabled_admins()
        if [u.username for u in admins] == [username]:
            raise LastAdmin()

    async def set_role(
        self, username: str, role: str, *, actor: str, source: str | None
    ) -> UserRecord:
        if role not in ROLES:
            raise UnknownRole(role, ROLES)
        if role != "admin":
            await self._keep_an_admin(username)
        before = await self.users.get_user(username)
        user = await self.users.set_role(username, role)
        await self.audit(
            actor=actor,
            action="user.role",
            target=username,
            source=source,
            detail={"from": before.role if before else None, "to": role},
        )
        return user

    async def disable(self, username: str, *, actor: str, source: str | None) -> UserRecord:
        await self._keep_an_admin(username)
        user = await self.users.disable(username, now=self.clock())
        await self.audit(actor=actor, action="user.disable", target=username, source=source)
        return user

    async def enable(self, username: str, *, actor: str, source: str | None) -> UserRecord:
        user = await self.users.enable(username)
        await self.audit(actor=actor, action="user.enable", target=username, source=source)
        return user

    async def set_password(
        self, username: str, password: str | None, *, actor: str, source: str | None
    ) -> tuple[UserRecord, str | None]:
        """An admin sets (or generates) someone's password; their sessions end."""
        if await self.users.get_user(username) is None:
            raise UserUnknown(username)
        generated = None
        if password is None:
            password = generated = new_password()
        password_hash = await self.hash_password(password)
        user = await self.users.set_password_hash(username, password_hash, now=self.clock())
        await self.audit(actor=actor, action="user.password", target=username, source=source)
        return user, generated

    async def change_own_password(
        self, user: UserRecord, current: str, new: str, *, source: str | None, keep: str | None
    ) -> None:
        """A person changes their own password; other sessions end (*keep* stays, hashed).

        The current password is guessed no faster than at the login form: a wrong one is a
        failed login (audited as such, with the reason) and the login throttle applies, so a
        stolen session or API token does not become a way to find the password.
        """
        async with self._attempts.hold(source or ""):
            await self._check_current_password(user, current, source=source)
        password_hash = await self.hash_password(new)
        await self.users.set_password_hash(
            user.username, password_hash, now=self.clock(), end_sessions=False
        )
        await self.users.end_sessions(user.user_id, keep=keep)
        await self.audit(
            actor=actor_of(user), action="user.password", target=user.username, source=source
        )

    async def _check_current_password(
        self, user: UserRecord, current: str, *, source: str | None
    ) -> None:
        wait = await self._retry_after(user.username, source)
        if wait is not None:
            await self.audit(
                actor=actor_of(user),
                action=LOGIN_THROTTLED,
                target=user.username,
                source=source,
                detail={"reason": "throttled", "retry_after": round(wait, 1), "via": "password"},
            )
            raise LoginThrottled(wait)
        creds = await self.users.credentials(user.username)
        if creds is None or not await self._verify(creds[1], current):
            await self.audit(
                actor=actor_of(user),
                action=LOGIN_FAILED,
                target=user.username,
                source=source,
                detail={"reason": "wrong current password", "via": "password"},
            )
            raise LoginRefused("wrong current password")

    # -- sessions --

    async def login(
        self, username: str, password: str, *, source: str | None
    ) -> tuple[str, SessionRecord]:
        """Check the password and open a session; returns the cookie secret and the session."""
        try:
            name = normalize_username(username)
        except InvalidUsername:
            # never a user's name; kept storable (PostgreSQL refuses NUL in text)
            name = username.strip().lower()[:64].replace("\x00", "\ufffd")
        async with self._attempts.hold(source or ""):
            return await self._login(name, password, source=source)

    async def _login(
        self, name: str, password: str, *, source: str | None
    ) -> tuple[str, SessionRecord]:
        creds = await self.users.credentials(name)
        # What was typed as a username is recorded only when it names a user: people type
        # their password into that field, and the audit log must not keep it.
        target = name if creds is not None else None
        wait = await self._retry_after(name, source)
        if wait is not None:
            await self.audit(
                actor="anonymous",
                action=LOGIN_THROTTLED,
                target=target,
                source=source,
                detail={"reason": "throttled", "retry_after": round(wait, 1)},
            )
            raise LoginThrottled(wait)
        reason = None
        if creds is None:
            await self._burn(password)
            reason = "unknown user"
        elif not await self._verify(creds[1], password):
            reason = "wrong password"
        elif creds[0].disabled:
            reason = "user disabled"
        if reason is not None or creds is None:
            await self.audit(
                actor="anonymous",
                action=LOGIN_FAILED,
                target=target,
                source=source,
                detail={"reason": reason},
            )
            raise LoginRefused(reason or "unknown user")
        user, password_hash = creds
        if self.hasher.check_needs_rehash(password_hash):
            await self.users.rehash(user.user_id, password_hash, await self.hash_password(password))
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        session = await self.users.create_session(
            session_hash=hash_session_secret(secret),
            user=user,
            csrf_token=secrets.token_urlsafe(32),
            now=now,
            expires_at=now + self.policy.session_lifetime,
            source=source,
        )
        await self.users.record_login(user.user_id, now=now)
        await self.audit(actor=actor_of(user), action=LOGIN, target=name, source=source)
        return secret, session

    async def _retry_after(self, username: str, source: str | None) -> float | None:
        """Seconds to wait before another login attempt of *username* from *source*, or None
        when one is allowed now. Failures are counted in the audit log, so every worker
        process of the cloud sees the same count: per username and source since the last
        successful login there, and per source over all usernames, within the window."""
        now = self.clock()
        window = self.policy.login_window
        mine, theirs = await self.users.login_failures(
            username=username, source=source, since=now - window
        )
        waits = [
            (times[0] + window - now).total_seconds()
            for times, limit in (
                (mine, self.policy.login_failures),
                (theirs, self.policy.source_failures),
            )
            if len(times) >= limit
        ]
        return max(*waits, 0.001) if waits else None

    async def session(self, secret: str, *, touch: bool = True) -> SessionRecord | None:
        """The live session for a cookie secret; None when unknown, expired, idle or disabled."""
        session_hash = hash_session_secret(secret)
        session = await self.users.get_session(session_hash)
        if session is None:
            return None
        now = self.clock()
        if (
            session.expires_at <= now
            or session.last_seen + self.policy.session_idle <= now
            or session.user.disabled
        ):
            await self.users.delete_session(session_hash)
            return None
        if touch and now - session.last_seen >= self.policy.touch_every:
            await self.users.touch_session(session_hash, now=now)
        return session

    async def logout(self, secret: str, *, source: str | None) -> None:
        session = await self.users.get_session(hash_session_secret(secret))
        if session is None:
            return
        await self.users.delete_session(session.session_hash)
        await self.audit(
            actor=actor_of(session.user),
            action="session.logout",
            target=session.user.username,
            source=source,
        )

    async def sweep(self) -> int:
        """Forget sessions that expired or idled out."""
        now = self.clock()
        return await self.users.delete_stale_sessions(
            now=now, idle_since=now - self.policy.session_idle
        )

    # -- people's API tokens --

    async def create_token(
        self,
        user: UserRecord,
        label: str,
        ttl: timedelta | None,
        *,
        actor: str,
        source: str | None,
    ) -> tuple[ApiTokenRecord, str]:
        """An API token for *user*, with their role; returns the record and the secret."""
        label = label.strip()[:255] or "token"
        record, secret = await self.store.create_api_token(
            name=user.username, role=user.role, created_by=actor, now=self.clock(), ttl=ttl
        )
        await self.users.own_token(record.token_id, user.user_id, label)
        await self.audit(
            actor=actor,
            action="api-token.create",
            target=record.token_id,
            source=source,
            detail={"user": user.username, "label": label, "role": user.role},
        )
        return record, secret

    async def revoke_token(
        self, token_id: str, *, actor: str, source: str | None, owner: UserRecord | None = None
    ) -> ApiTokenRecord:
        """Revoke an API token (with *owner*, only one of theirs); raises ApiTokenUnknown."""
        if owner is not None:
            holder = await self.users.token_owner(token_id)
            if holder is None or holder.user_id != owner.user_id:
                raise ApiTokenUnknown(token_id)
        record = await self.store.revoke_api_token(token_id, now=self.clock())
        await self.audit(actor=actor, action="api-token.revoke", target=token_id, source=source)
        return record

    # -- first start --

    async def bootstrap_admin(self, data_dir: Path) -> Path | None:
        """With no users yet, create ``admin`` and leave its password in a 0600 file."""
        if await self.users.count_users():
            return None
        from tether.cloud.app import write_secret_file

        password = new_password()
        try:
            admin = await self.users.create_user(
                username="admin",
                password_hash=await self.hash_password(password),
                role="admin",
                created_by="bootstrap",
                now=self.clock(),
            )
        except UserExists:
            return None  # another worker process was first
        # The first start's API token (admin.token) is admin's: listed and revocable as theirs.
        for token in await self.store.list_api_tokens():
            if (
                token.created_by == "bootstrap"
                and await self.users.token_owner(token.token_id) is None
            ):
                await self.users.own_token(token.token_id, admin.user_id, BOOTSTRAP_TOKEN_LABEL)
        path = data_dir / ADMIN_PASSWORD_FILE
        write_secret_file(path, password + "\n")
        await self.audit(actor="bootstrap", action="user.create", target="admin", source=None)
        log.info("first start: console user 'admin' created, password in %s", path)
        return path


#: Where the running cloud keeps its :class:`Accounts`.
ACCOUNTS_KEY = web.AppKey("accounts", Accounts)


# --- the operator API's view of sessions ----------------------------------------------------


def _json_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    return cls(
        text=msgspec.json.encode({"error": message}).decode(), content_type="application/json"
    )


async def api_session(request: web.Request) -> SessionRecord | None:
    """The console session behind an API request that carries no bearer token.

    None when there is no session cookie (the caller then asks for a token). An expired or
    unknown session answers 401; a state-changing request without the session's CSRF token
    in the ``X-CSRF-Token`` header answers 403.
    """
    if "Authorization" in request.headers:
        return None
    secret = request.cookies.get(SESSION_COOKIE)
    accounts = request.app.get(ACCOUNTS_KEY)
    if not secret or accounts is None:
        return None
    session = await accounts.session(secret, touch=request.headers.get(LIVE_HEADER) != "1")
    if session is None:
        raise _json_error(web.HTTPUnauthorized, "the console session ended; log in again")
    if request.method not in SAFE_METHODS and not csrf_matches(
        request.headers.get(CSRF_HEADER), session
    ):
        raise _json_error(web.HTTPForbidden, "missing or wrong CSRF token")
    return session


# --- operator API: users, their tokens, the audit export ------------------------------------


class UserOut(msgspec.Struct):
    username: str
    role: str
    created_at: datetime
    created_by: str
    password_changed_at: datetime
    disabled: bool
    disabled_at: datetime | None
    last_login_at: datetime | None


class UserIn(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    role: str
    password: str | None = None


class UserCreatedOut(msgspec.Struct):
    user: UserOut
    password: str | None  # the generated password, shown once (None if one was given)


class RoleIn(msgspec.Struct, forbid_unknown_fields=True):
    role: str


class PasswordIn(msgspec.Struct, forbid_unknown_fields=True):
    password: str | None = None


class PasswordOut(msgspec.Struct):
    username: str
    password: str | None  # the generated password, shown once


class OwnPasswordIn(msgspec.Struct, forbid_unknown_fields=True):
    current_password: str
    new_password: str


class UserTokenIn(msgspec.Struct, forbid_unknown_fields=True):
    label: str = "token"
    ttl_seconds: float | None = None


class UserTokenOut(msgspec.Struct):
    token_id: str
    username: str
    label: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class UserTokenCreated(msgspec.Struct):
    token: UserTokenOut
    secret: str  # shown once


class ApiTokenOut(msgspec.Struct):
    token_id: str
    name: str
    role: str
    revoked_at: datetime | None


class AuditLine(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    source: str | None
    detail: dict[str, Any] | None


def user_out(u: UserRecord) -> UserOut:
    return UserOut(
        username=u.username,
        role=u.role,
        created_at=u.created_at,
        created_by=u.created_by,
        password_changed_at=u.password_changed_at,
        disabled=u.disabled,
        disabled_at=u.disabled_at,
        last_login_at=u.last_login_at,
    )


def token_out(username: str, owned: OwnedToken) -> UserTokenOut:
    t = owned.token
    return UserTokenOut(
        token_id=t.token_id,
        username=username,
        label=owned.label,
        role=t.role,
        created_at=t.created_at,
        created_by=t.created_by,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
        last_used_at=t.last_used_at,
    )


def audit_line(a: AuditRecord) -> AuditLine:
    return AuditLine(
        id=a.audit_id,
        at=a.at,
        actor=a.actor,
        action=a.action,
        target=a.target,
        source=a.source,
        detail=a.detail,
    )


def _accounts(request: web.Request) -> Accounts:
    return request.app[ACCOUNTS_KEY]


async def _body(request: web.Request, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.read() or b"{}", type=kind)
    except msgspec.DecodeError as exc:
        raise _json_error(web.HTTPBadRequest, f"invalid request body: {exc}") from None


def _refused(exc: Exception) -> web.HTTPException:
    """The HTTP answer for an account or store error raised by a handler."""
    if isinstance(exc, UserUnknown | ApiTokenUnknown):
        return _json_error(web.HTTPNotFound, str(exc))
    if isinstance(exc, UserExists | LastAdmin | NotAUser):
        return _json_error(web.HTTPConflict, str(exc))
    if isinstance(exc, LoginRefused):
        return _json_error(web.HTTPForbidden, "the current password is wrong")
    if isinstance(exc, LoginThrottled):
        throttled = _json_error(web.HTTPTooManyRequests, str(exc))
        throttled.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return throttled
    return _json_error(web.HTTPBadRequest, str(exc))


_HANDLED = (AccountError, UserUnknown, UserExists, UnknownRole, ApiTokenUnknown)


def _ttl(seconds: float | None) -> timedelta | None:
    if seconds is None:
        return None
    if not 0 < seconds <= 400 * 86400:
        raise _json_error(web.HTTPBadRequest, "ttl_seconds must be within (0, 34560000]")
    return timedelta(seconds=seconds)


async def _user_or_404(accounts: Accounts, username: str) -> UserRecord:
    user = await accounts.users.get_user(username)
    if user is None:
        raise _json_error(web.HTTPNotFound, f"no user named {username!r}")
    return user


async def whose(accounts: Accounts, p: Principal) -> UserRecord:
    """The user behind a principal (a session, or an API token a user owns)."""
    user = (
        await accounts.users.get_user(p.name)
        if p.token_id == SESSION_PRINCIPAL
        else await accounts.users.token_owner(p.token_id)
    )
    if user is None:
        raise NotAUser()
    return user


async def list_users(request: web.Request, state: CloudState, p: Principal) -> list[UserOut]:
    return [user_out(u) for u in await _accounts(request).users.list_users()]


async def create_user(request: web.Request, state: CloudState, p: Principal) -> UserCreatedOut:
    body: UserIn = await _body(request, UserIn)
    try:
        user, generated = await _accounts(request).create_user(
            body.username, body.role, body.password, actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return UserCreatedOut(user=user_out(user), password=generated)


async def get_user(request: web.Request, state: CloudState, p: Principal) -> UserOut:
    return user_out(await _user_or_404(_accounts(request), request.match_info["username"]))


async def set_user_role(request: web.Request, state: CloudState, p: Principal) -> UserOut:
    body: RoleIn = await _body(request, RoleIn)
    try:
        user = await _accounts(request).set_role(
            request.match_info["username"], body.role, actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return user_out(user)


async def disable_user(request: web.Request, state: CloudState, p: Principal) -> UserOut:
    try:
        user = await _accounts(request).disable(
            request.match_info["username"], actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return user_out(user)


async def enable_user(request: web.Request, state: CloudState, p: Principal) -> UserOut:
    try:
        user = await _accounts(request).enable(
            request.match_info["username"], actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return user_out(user)


async def set_user_password(request: web.Request, state: CloudState, p: Principal) -> PasswordOut:
    body: PasswordIn = await _body(request, PasswordIn)
    try:
        user, generated = await _accounts(request).set_password(
            request.match_info["username"], body.password, actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return PasswordOut(username=user.username, password=generated)


async def list_user_tokens(
    request: web.Request, state: CloudState, p: Principal
) -> list[UserTokenOut]:
    accounts = _accounts(request)
    user = await _user_or_404(accounts, request.match_info["username"])
    return [token_out(user.username, t) for t in await accounts.users.tokens_of(user.user_id)]


async def _create_token_for(
    request: web.Request, accounts: Accounts, user: UserRecord, p: Principal
) -> UserTokenCreated:
    body: UserTokenIn = await _body(request, UserTokenIn)
    if user.disabled:
        raise _json_error(web.HTTPConflict, f"user {user.username!r} is disabled")
    record, secret = await accounts.create_token(
        user, body.label, _ttl(body.ttl_seconds), actor=p.actor, source=request.remote
    )
    owned = OwnedToken(token=record, label=body.label.strip()[:255] or "token")
    return UserTokenCreated(token=token_out(user.username, owned), secret=secret)


async def create_user_token(
    request: web.Request, state: CloudState, p: Principal
) -> UserTokenCreated:
    accounts = _accounts(request)
    user = await _user_or_404(accounts, request.match_info["username"])
    return await _create_token_for(request, accounts, user, p)


async def revoke_api_token(request: web.Request, state: CloudState, p: Principal) -> ApiTokenOut:
    try:
        record = await _accounts(request).revoke_token(
            request.match_info["token_id"], actor=p.actor, source=request.remote
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return ApiTokenOut(
        token_id=record.token_id, name=record.name, role=record.role, revoked_at=record.revoked_at
    )


async def change_own_password(request: web.Request, state: CloudState, p: Principal) -> UserOut:
    body: OwnPasswordIn = await _body(request, OwnPasswordIn)
    accounts = _accounts(request)
    try:
        user = await whose(accounts, p)
        keep = request.cookies.get(SESSION_COOKIE) if p.token_id == SESSION_PRINCIPAL else None
        await accounts.change_own_password(
            user,
            body.current_password,
            body.new_password,
            source=request.remote,
            keep=None if keep is None else hash_session_secret(keep),
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return user_out(await _user_or_404(accounts, user.username))


async def list_own_tokens(
    request: web.Request, state: CloudState, p: Principal
) -> list[UserTokenOut]:
    accounts = _accounts(request)
    try:
        user = await whose(accounts, p)
    except NotAUser as exc:
        raise _refused(exc) from None
    return [token_out(user.username, t) for t in await accounts.users.tokens_of(user.user_id)]


async def create_own_token(
    request: web.Request, state: CloudState, p: Principal
) -> UserTokenCreated:
    accounts = _accounts(request)
    try:
        user = await whose(accounts, p)
    except NotAUser as exc:
        raise _refused(exc) from None
    return await _create_token_for(request, accounts, user, p)


async def revoke_own_token(request: web.Request, state: CloudState, p: Principal) -> ApiTokenOut:
    accounts = _accounts(request)
    try:
        user = await whose(accounts, p)
        record = await accounts.revoke_token(
            request.match_info["token_id"], actor=p.actor, source=request.remote, owner=user
        )
    except _HANDLED as exc:
        raise _refused(exc) from None
    return ApiTokenOut(
        token_id=record.token_id, name=record.name, role=record.role, revoked_at=record.revoked_at
    )


# CSV cells starting with these are formulas to a spreadsheet; failed logins put
# attacker-chosen text into the log, so such cells are quoted with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
AUDIT_CSV_COLUMNS: Final = ("id", "at", "actor", "action", "target", "source", "detail")
_EXPORT_PAGE: Final = 1000


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def audit_csv_row(a: AuditRecord) -> list[str]:
    detail = "" if a.detail is None else msgspec.json.encode(a.detail).decode()
    return [
        str(a.audit_id),
        msgspec.json.decode(msgspec.json.encode(a.at)),  # as the JSON lines write it
        _csv_cell(a.actor),
        _csv_cell(a.action),
        _csv_cell(a.target),
        _csv_cell(a.source),
        _csv_cell(detail),
    ]


async def export_audit(request: web.Request, state: CloudState, p: Principal) -> web.StreamResponse:
    """The audit log (all of it, or what the filters take), oldest first, as JSON lines or CSV."""
    fmt = request.query.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise _json_error(web.HTTPBadRequest, "format must be jsonl or csv")
    try:
        where = AuditFilter.from_query(request.query)
    except AuditFilterInvalid as exc:
        raise _json_error(web.HTTPBadRequest, str(exc)) from None
    accounts = _accounts(request)
    stamp = accounts.clock().strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="tether-audit-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerow(AUDIT_CSV_COLUMNS)
        await response.write(buffer.getvalue().encode("utf-8"))
    after = 0
    while True:
        page = await accounts.users.audit_page(after_id=after, limit=_EXPORT_PAGE, where=where)
        if not page:
            break
        if fmt == "jsonl":
            chunk = b"".join(msgspec.json.encode(audit_line(a)) + b"\n" for a in page)
        else:
            buffer = io.StringIO()
            csv.writer(buffer).writerows(audit_csv_row(a) for a in page)
            chunk = buffer.getvalue().encode("utf-8")
        await response.write(chunk)
        after = page[-1].audit_id
    await response.write_eof()
    return response


class RouteSpec(NamedTuple):
    """The fields of :class:`tether.cloud.api.ApiRoute`, in its order (api builds them)."""

    method: str
    path: str
    handler: Callable[[web.Request, CloudState, Principal], Awaitable[Any]]
    permission: str
    summary: str
    request: type | None = None
    response: Any = None
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()


API_ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/api/v1/users", list_users, "users", "List users", None, list[UserOut]),
    RouteSpec(
        "POST",
        "/api/v1/users",
        create_user,
        "users",
        "Create a user (a password is generated and shown once when none is given)",
        UserIn,
        UserCreatedOut,
        201,
    ),
    RouteSpec("GET", "/api/v1/users/{username}", get_user, "users", "One user", None, UserOut),
    RouteSpec(
        "POST",
        "/api/v1/users/{username}/role",
        set_user_role,
        "users",
        "Change a user's role (and their API tokens' role)",
        RoleIn,
        UserOut,
    ),
    RouteSpec(
        "POST",
        "/api/v1/users/{username}/disable",
        disable_user,
        "users",
        "Disable a user: sessions end, API tokens are revoked",
        None,
        UserOut,
    ),
    RouteSpec(
        "POST",
        "/api/v1/users/{username}/enable",
        enable_user,
        "users",
        "Enable a disabled user",
        None,
        UserOut,
    ),
    RouteSpec(
        "POST",
        "/api/v1/users/{username}/password",
        set_user_password,
        "users",
        "Set a user's password (generated and shown once when none is given); sessions end",
        PasswordIn,
        PasswordOut,
    ),
    RouteSpec(
        "GET",
        "/api/v1/users/{username}/tokens",
        list_user_tokens,
        "users",
        "A user's API tokens",
        None,
        list[UserTokenOut],
    ),
    RouteSpec(
        "POST",
        "/api/v1/users/{username}/tokens",
        create_user_token,
        "users",
        "Create an API token for a user, with their role (the secret is shown once)",
        UserTokenIn,
        UserTokenCreated,
        201,
    ),
    RouteSpec(
        "POST",
        "/api/v1/api-tokens/{token_id}/revoke",
        revoke_api_token,
        "users",
        "Revoke any API token",
        None,
        ApiTokenOut,
    ),
    RouteSpec(
        "POST",
        "/api/v1/me/password",
        change_own_password,
        "read",
        "Change your own password (your other sessions end)",
        OwnPasswordIn,
        UserOut,
    ),
    RouteSpec(
        "GET",
        "/api/v1/me/tokens",
        list_own_tokens,
        "read",
        "Your API tokens",
        None,
        list[UserTokenOut],
    ),
    RouteSpec(
        "POST",
        "/api/v1/me/tokens",
        create_own_token,
        "read",
        "Create an API token for yourself (the secret is shown once)",
        UserTokenIn,
        UserTokenCreated,
        201,
    ),
    RouteSpec(
        "POST",
        "/api/v1/me/tokens/{token_id}/revoke",
        revoke_own_token,
        "read",
        "Revoke one of your API tokens",
        None,
        ApiTokenOut,
    ),
    RouteSpec(
        "GET",
        "/api/v1/audit/export",
        export_audit,
        "audit",
        "The audit log, oldest first, as JSON lines or CSV (a download); filtered as the list",
        None,
        str,
        query=(("format", "jsonl (default) or csv"), *AUDIT_FILTER_FIELDS),
    ),
)
