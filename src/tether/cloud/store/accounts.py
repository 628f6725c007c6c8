"""Operator accounts in the store: users, console sessions, and which API tokens belong to whom.

A user has a username, an argon2id password hash (hashing happens in
:mod:`tether.cloud.accounts`; this module stores what it is given), a role and an optional
disabled time. A console session is stored by the SHA-256 of its secret, so a copy of the
database does not hand out live sessions. API tokens stay in ``api_tokens``; the link table
``api_token_owners`` says which user a token belongs to, so disabling a user revokes their
tokens and changing their role changes their tokens' role.

Audit entries are written by the callers (:mod:`tether.cloud.accounts`), which know who acted
and from where; :meth:`AccountStore.audit_page` and :meth:`AccountStore.audit_before` read the
append-only log in id order, filtered (:class:`~.store.AuditFilter`), for exports and the console.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import StoreError, UnknownRole
from .models import UTCDateTime, api_tokens, audit_log, metadata
from .records import ROLES, ApiTokenRecord, AuditRecord
from .store import _WRITE, AuditFilter, Store, _api_token, _audit, audit_select

__all__ = [
    "AccountStore",
    "OwnedToken",
    "SessionRecord",
    "UserExists",
    "UserRecord",
    "UserUnknown",
    "api_token_owners",
    "sessions",
    "users",
]

USERNAME_MAX: Final = 64

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(32), primary_key=True),
    sa.Column("username", sa.String(USERNAME_MAX), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("password_changed_at", UTCDateTime(), nullable=False),
    sa.Column("disabled_at", UTCDateTime(), nullable=True),
    sa.Column("last_login_at", UTCDateTime(), nullable=True),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    sa.Column(
        "user_id",
        sa.String(32),
        sa.ForeignKey("users.user_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("last_seen", UTCDateTime(), nullable=False),
    sa.Column("source", sa.String(255), nullable=True),
)

api_token_owners = sa.Table(
    "api_token_owners",
    metadata,
    sa.Column(
        "token_id",
        sa.String(32),
        sa.ForeignKey("api_tokens.token_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "user_id",
        sa.String(32),
        sa.ForeignKey("users.user_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("label", sa.String(255), nullable=False),
)


class UserExists(StoreError):
    def __init__(self, username: str) -> None:
        super().__init__(f"a user named {username!r} already exists")
        self.username = username


class UserUnknown(StoreError):
    def __init__(self, username: str) -> None:
        super().__init__(f"no user named {username!r}")
        self.username = username


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    user_id: str
    username: str
    role: str
    created_at: datetime
    created_by: str
    password_changed_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    session_hash: str
    user: UserRecord
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    last_seen: datetime
    source: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnedToken:
    token: ApiTokenRecord
    label: str


def _user(row: RowMapping) -> UserRecord:
    return UserRecord(
        user_id=row["user_id"],
        username=row["username"],
        role=row["role"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        password_changed_at=row["password_changed_at"],
        disabled_at=row["disabled_at"],
        last_login_at=row["last_login_at"],
    )


_USER_COLUMNS = [c for c in users.c if c.name != "password_hash"]


#: The audit actions of logins: the throttle counts failures from them.
LOGIN = "session.login"
LOGIN_FAILED = "session.login-failed"
LOGIN_THROTTLED = "session.login-throttled"


class AccountStore:
    """Users, sessions and token ownership on the store's engine (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self._engine = store.engine

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as plain:
            conn = await plain.execution_options(**{_WRITE: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    # --- users ----------------------------------------------------------------------------

    async def create_user(
        self, *, username: str, password_hash: str, role: str, created_by: str, now: datetime
    ) -> UserRecord:
        """Add a user; raises UserExists or UnknownRole."""
        if role not in ROLES:
            raise UnknownRole(role, ROLES)
        values = {
            "user_id": uuid.uuid4().hex,
            "username": username,
            "password_hash": password_hash,
            "role": role,
            "created_at": now,
            "created_by": created_by,
            "password_changed_at": now,
            "disabled_at": None,
            "last_login_at": None,
        }
        try:
            async with self._write() as conn:
                row = (
                    await conn.execute(users.insert().values(values).returning(*_USER_COLUMNS))
                ).one()
        except IntegrityError:
            raise UserExists(username) from None
        return _user(row._mapping)

    async def count_users(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(users))).one()[0])

    async def get_user(self, username: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.username == username))
            ).first()
        return None if row is None else _user(row._mapping)

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(*_USER_COLUMNS).where(users.c.user_id == user_id))
            ).first()
        return None if row is None else _user(row._mapping)

    async def credentials(self, username: str) -> tuple[UserRecord, str] | None:
        """The user and their password hash, for checking a password."""
        async with self._read() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.username == username))).first()
        return None if row is None else (_user(row._mapping), row._mapping["password_hash"])

    async def login_failures(
        self, *, username: str, source: str | None, since: datetime
    ) -> tuple[list[datetime], list[datetime]]:
        """Failed logins after *since*, from the audit log that every process of the cloud
        writes: (those of *username* from *source* since its last successful login there,
        those from *source* for any username), each oldest first. Attempts refused because
        they were throttled are not failures of their own."""
        a = audit_log.c
        from_source = a.source.is_(None) if source is None else a.source == source
        failed = sa.select(a.at).where(a.action == LOGIN_FAILED, from_source, a.at > since)
        # Entries are numbered in the order they were written: "after the last login" holds
        # even when both have the same timestamp.
        last_login = (
            sa.select(sa.func.max(a.audit_id))
            .where(a.action == LOGIN, from_source, a.target == username, a.at >= since)
            .scalar_subquery()
        )
        async with self._read() as conn:
            mine = (
                await conn.execute(
                    failed.where(
                        a.target == username,
                        sa.or_(last_login.is_(None), a.audit_id > last_login),
                    ).order_by(a.at)
                )
            ).scalars()
            theirs = (await conn.execute(failed.order_by(a.at))).scalars()
            return list(mine), list(theirs)

    async def list_users(self) -> list[UserRecord]:
        """All users by name."""
        async with self._read() as conn:
            rows = await conn.execute(sa.select(*_USER_COLUMNS).order_by(users.c.username))
            return [_user(r._mapping) for r in rows]

    async def _update_user(
        self, conn: AsyncConnection, username: str, values: dict[str, object]
    ) -> UserRecord:
        row = (
            await conn.execute(
                users.update()
                .where(users.c.username == username)
                .values(values)
                .returning(*_USER_COLUMNS)
            )
        ).first()
        if row is None:
            raise UserUnknown(username)
        return _user(row._mapping)

    async def set_role(self, username: str, role: str) -> UserRecord:
        """Change a user's role, and with it the role of every API token they own."""
        if role not in ROLES:
            raise UnknownRole(role, ROLES)
        async with self._write() as conn:
            user = await self._update_user(conn, username, {"role": role})
            owned = sa.select(api_token_owners.c.token_id).where(
                api_token_owners.c.user_id == user.user_id
            )
            await conn.execute(
                api_tokens.update().where(api_tokens.c.token_id.in_(owned)).values(role=role)
            )
        return user

    async def set_password_hash(
        self, username: str, password_hash: str, *, now: datetime, end_sessions: bool = True
    ) -> UserRecord:
        """Store a new password hash; by default every session of the user ends."""
        async with self._write() as conn:
            user = await self._update_user(
                conn, username, {"password_hash": password_hash, "password_changed_at": now}
            )
            if end_sessions:
                await conn.execute(sessions.delete().where(sessions.c.user_id == user.user_id))
        return user

    async def rehash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Replace a hash made with outdated parameters (only if it did not change meanwhile)."""
        async with self._write() as conn:
            await conn.execute(
                users.update()
                .where(users.c.user_id == user_id, users.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )

    async def disable(self, username: str, *, now: datetime) -> UserRecord:
        """Disable a user: their sessions end and their API tokens are revoked. Idempotent."""
        async with self._write() as conn:
            current = (
                await conn.execute(
                    sa.select(users.c.user_id, users.c.disabled_at).where(
                        users.c.username == username
                    )
                )
            ).first()
            if current is None:
                raise UserUnknown(username)
            user = await self._update_user(
                conn, username, {"disabled_at": current.disabled_at or now}
            )
            await conn.execute(sessions.delete().where(sessions.c.user_id == user.user_id))
            owned = sa.select(api_token_owners.c.token_id).where(
                api_token_owners.c.user_id == user.user_id
            )
            await conn.execute(
                api_tokens.update()
                .where(api_tokens.c.token_id.in_(owned), api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return user

    async def enable(self, username: str) -> UserRecord:
        """Allow a disabled user to log in again (their revoked tokens stay revoked)."""
        async with self._write() as conn:
            return await self._update_user(conn, username, {"disabled_at": None})

    async def record_login(self, user_id: str, *, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                users.update().where(users.c.user_id == user_id).values(last_login_at=now)
            )

    # --- sessions -------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        session_hash: str,
        user: UserRecord,
        csrf_token: str,
        now: datetime,
        expires_at: datetime,
        source: str | None,
    ) -> SessionRecord:
        async with self._write() as conn:
            await conn.execute(
                sessions.insert().values(
                    session_hash=session_hash,
                    user_id=user.user_id,
                    csrf_token=csrf_token,
                    created_at=now,
                    expires_at=expires_at,
                    last_seen=now,
                    source=None if source is None else source[:255],
                )
            )
        return SessionRecord(
            session_hash=session_hash,
            user=user,
            csrf_token=csrf_token,
            created_at=now,
            expires_at=expires_at,
            last_seen=now,
            source=source,
        )

    async def get_session(self, session_hash: str) -> SessionRecord | None:
        """The session and its user as stored (the caller judges expiry)."""
        s = sessions.c
        query = sa.select(
            *_USER_COLUMNS,
            s.session_hash,
            s.csrf_token,
            s.created_at.label("session_created_at"),
            s.expires_at,
            s.last_seen,
            s.source,
        ).join_from(sessions, users, s.user_id == users.c.user_id)
        async with self._read() as conn:
            row = (await conn.execute(query.where(s.session_hash == session_hash))).first()
        if row is None:
            return None
        m = row._mapping
        return SessionRecord(
            session_hash=m["session_hash"],
            user=_user(m),
            csrf_token=m["csrf_token"],
            created_at=m["session_created_at"],
            expires_at=m["expires_at"],
            last_seen=m["last_seen"],
            source=m["source"],
        )

    async def touch_session(self, session_hash: str, *, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.session_hash == session_hash)
                .values(last_seen=now)
            )

    async def set_session_times(
        self, session_hash: str, *, last_seen: datetime, expires_at: datetime
    ) -> None:
        """Move a session's clock (for operators' tooling and tests of expiry)."""
        async with self._write() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.session_hash == session_hash)
                .values(last_seen=last_seen, expires_at=expires_at)
            )

    async def delete_session(self, session_hash: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                sessions.delete()
                .where(sessions.c.session_hash == session_hash)
                .returning(sessions.c.session_hash)
            )
            return result.first() is not None

    async def end_sessions(self, user_id: str, *, keep: str | None = None) -> int:
        """End every session of a user except the one hashed *keep*."""
        s = sessions.c
        query = sessions.delete().where(s.user_id == user_id)
        if keep is not None:
            query = query.where(s.session_hash != keep)
        async with self._write() as conn:
            return len((await conn.execute(query.returning(s.session_hash))).all())

    async def delete_stale_sessions(self, *, now: datetime, idle_since: datetime) -> int:
        """Remove sessions past their absolute expiry or idle since before *idle_since*."""
        s = sessions.c
        async with self._write() as conn:
            result = await conn.execute(
                sessions.delete()
                .where(sa.or_(s.expires_at <= now, s.last_seen < idle_since))
                .returning(s.session_hash)
            )
            return len(result.all())

    async def count_sessions(self, user_id: str) -> int:
        async with self._read() as conn:
            query = sa.select(sa.func.count()).where(sessions.c.user_id == user_id)
            return int((await conn.execute(query)).one()[0])

    # --- token ownership ------------------------------------------------------------------

    async def own_token(self, token_id: str, user_id: str, label: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                api_token_owners.insert().values(token_id=token_id, user_id=user_id, label=label)
            )

    async def tokens_of(self, user_id: str) -> list[OwnedToken]:
        """The user's API tokens, newest first."""
        o, t = api_token_owners.c, api_tokens.c
        query = (
            sa.select(api_tokens, o.label)
            .join_from(api_tokens, api_token_owners, t.token_id == o.token_id)
            .where(o.user_id == user_id)
            .order_by(t.created_at.desc(), t.token_id)
        )
        async with self._read() as conn:
            return [
                OwnedToken(token=_api_token(r._mapping), label=r._mapping["label"])
                for r in await conn.execute(query)
            ]

    async def token_owner(self, token_id: str) -> UserRecord | None:
        o = api_token_owners.c
        query = (
            sa.select(*_USER_COLUMNS)
            .join_from(api_token_owners, users, o.user_id == users.c.user_id)
            .where(o.token_id == token_id)
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _user(row._mapping)

    # --- audit export ---------------------------------------------------------------------

    async def audit_page(
        self, *, after_id: int, limit: int, where: AuditFilter | None = None
    ) -> list[AuditRecord]:
        """Audit entries with an id above *after_id* that match *where*, oldest first (for
        exports, which read forward a page at a time)."""
        query = audit_select(where or AuditFilter(), after_id=after_id, limit=limit)
        async with self._read() as conn:
            return [_audit(r._mapping) for r in await conn.execute(query)]

    async def audit_before(
        self, *, before_id: int | None, limit: int, where: AuditFilter | None = None
    ) -> list[AuditRecord]:
        """Audit entries that match *where*, newest first, below *before_id* when given (for
        paging back through the log)."""
        query = audit_select(where or AuditFilter(), before_id=before_id, limit=limit)
        async with self._read() as conn:
            return [_audit(r._mapping) for r in await conn.execute(query)]
