"""The cloud's persistent state: gateways, certificates, tokens, commands and the audit log.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) serves several cloud nodes
sharing one database. Every method is one short transaction. Commands change state only through
:func:`tether.protocol.commands.transition`, written as a compare-and-set on the state the
transition was computed from (``UPDATE ... WHERE state = :old``), retried when another node got
there first, so no two nodes ever apply an event to the same state twice.

On SQLite, write transactions begin with ``BEGIN IMMEDIATE``: they queue on the database's write
lock (bounded by a busy timeout) instead of failing when a read snapshot turns out stale.

The command path's writes (queueing a command with its audit entry, marking commands delivered)
are written once, as functions of a synchronous connection. On a SQLite file they run whole on
one writer thread with its own connection (:class:`_SqliteWriter`): one hop from the event loop
per transaction, and the write lock is never held across event-loop turns. The aiosqlite path
costs three or four thread hops per statement, each waiting for a turn of a loop that may be
serving thousands of links. Elsewhere (PostgreSQL, an in-memory database) the same functions run
through ``AsyncConnection.run_sync``.

SQLite runs in WAL mode with ``synchronous = NORMAL``: a committed transaction survives the cloud
process dying or restarting (it is in the WAL, which the operating system holds); a power cut or
kernel crash may lose the last transactions before the next checkpoint, never the database's
integrity. ``FULL`` would sync the WAL on every commit. The WAL is folded back into the database
file by a thread of the store's own (:mod:`.checkpoint`), never inside a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, RowMapping, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tether.protocol.backoff import backoff_delays
from tether.protocol.commands import (
    CommandEvent,
    CommandState,
    IllegalTransition,
    is_final,
    transition,
)

from .checkpoint import Checkpointer
from .errors import (
    ApiTokenUnknown,
    CertificateExists,
    CertificateUnknown,
    CommandContention,
    CommandNotFound,
    GatewayExists,
    GatewayRevoked,
    GatewayUnknown,
    StoreError,
    TokenAlreadyUsed,
    TokenExpired,
    TokenRevoked,
    TokenUnknown,
    UnknownRole,
)
from .grants import (
    GrantExpired,
    GrantInvalid,
    GrantRevoked,
    GrantUnknown,
    check_reason,
    check_scope,
    check_username,
)
from .models import (
    api_tokens,
    audit_log,
    certificates,
    commands,
    enrollment_tokens,
    gateways,
    support_grants,
)
from .notify import (
    CommandCallback,
    CommandListener,
    CommandNotifier,
    LocalCommandNotifier,
    PostgresCommandNotifier,
)
from .records import (
    ROLES,
    ApiTokenRecord,
    AuditRecord,
    CertificateRecord,
    CommandRecord,
    EnrollmentTokenRecord,
    GatewayRecord,
    SupportGrantRecord,
)

__all__ = [
    "AUDIT_FILTER_FIELDS",
    "AuditFilter",
    "AuditFilterInvalid",
    "Store",
    "audit_select",
    "dialect_insert",
    "write_transaction",
]

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Each lost race means another node moved the command; a handful in a row is already absurd.
CAS_ATTEMPTS: Final = 16
# Serialises concurrent migrations from several nodes starting at once (PostgreSQL only).
_MIGRATION_LOCK_KEY: Final = 0x7E7E_0001

_WRITE: Final = "tether_write"
_WAL_ATTEMPTS: Final = 40


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_id() -> str:
    return uuid.uuid4().hex


# --- row → record --------------------------------------------------------------------------


def _gateway(row: RowMapping) -> GatewayRecord:
    return GatewayRecord(
        gateway_id=row["gateway_id"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        linked=bool(row["linked"]),
        tier=row["tier"],
        last_seen=row["last_seen"],
        link_since=row["link_since"],
        agent_version=row["agent_version"],
        peer=row["peer"],
        cert_serial=row["cert_serial"],
        cert_not_after=row["cert_not_after"],
    )


def _certificate(row: RowMapping) -> CertificateRecord:
    return CertificateRecord(
        serial_hex=row["serial_hex"],
        gateway_id=row["gateway_id"],
        fingerprint=row["fingerprint"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _enrollment_token(row: RowMapping) -> EnrollmentTokenRecord:
    return EnrollmentTokenRecord(
        token_id=row["token_id"],
        gateway_name=row["gateway_name"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        revoked_at=row["revoked_at"],
    )


def _command(row: Mapping[Any, Any]) -> CommandRecord:
    return CommandRecord(
        command_id=row["command_id"],
        gateway_id=row["gateway_id"],
        kind=row["kind"],
        args=dict(row["args"]),
        state=CommandState(row["state"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        delivered_at=row["delivered_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        result=None if row["result"] is None else dict(row["result"]),
        error=row["error"],
    )


def _api_token(row: Mapping[Any, Any]) -> ApiTokenRecord:
    return ApiTokenRecord(
        token_id=row["token_id"],
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _support_grant(row: Mapping[Any, Any]) -> SupportGrantRecord:
    return SupportGrantRecord(
        grant_id=row["grant_id"],
        gateway_id=row["gateway_id"],
        username=row["username"],
        scope=row["scope"],
        reason=row["reason"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


def _audit(row: RowMapping) -> AuditRecord:
    return AuditRecord(
        audit_id=int(row["audit_id"]),
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        detail=None if row["detail"] is None else dict(row["detail"]),
        source=row["source"],
    )


# --- audit filters --------------------------------------------------------------------------


class AuditFilterInvalid(ValueError):
    """An audit filter that cannot mean anything (a time without a UTC offset, *until* not
    after *since*, a malformed action); the message says which, in an operator's words."""


#: An action (``token.create``) or, ending in ``.*``, every action of a family (``token.*``).
_ACTION_FILTER: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*(?:\.\*)?")
#: The longest actor, target or action a filter may name (the columns' own width).
AUDIT_FILTER_MAX: Final = 255
_ACTION_MAX: Final = 64


#: The filter's fields as a query string or a form names them, with what each does (the operator
#: API's documentation of its audit routes).
AUDIT_FILTER_FIELDS: Final = (
    ("actor", "only entries by this actor, exactly as the log names it (e.g. 'alice (admin)')"),
    ("action", "only this action (token.revoke), or a family of them ending in .* (token.*)"),
    ("target", "only entries about this target (a gateway, token or user), exactly"),
    ("since", "from this time, inclusive (ISO 8601 with a UTC offset: …Z or …+01:00)"),
    ("until", "before this time, exclusive (ISO 8601 with a UTC offset)"),
)


def _audit_time(name: str, raw: str, assume: tzinfo | None) -> datetime:
    """*raw* (ISO 8601) as an aware time; without an offset, in *assume*, or refused."""
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise AuditFilterInvalid(
            f"{name} must be an ISO 8601 time with a UTC offset "
            f"(e.g. 2030-01-31T09:00:00+01:00 or 2030-01-31T08:00:00Z), not {raw[:40]!r}"
        ) from None
    if at.tzinfo is None and assume is not None:
        at = at.replace(tzinfo=assume)
    return at


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit entries to read: each field given narrows the set (all must hold).

    *actor* and *target* match exactly; *action* matches exactly, or, written ``family.*``,
    every action that begins ``family.`` (``token.*`` takes ``token.create`` and
    ``token.revoke``, not ``api-token.create``); *since* is inclusive and *until* exclusive,
    both aware times (a naive one would be read in no particular time zone, so is refused).
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, text in (("actor", self.actor), ("target", self.target)):
            if text is not None and len(text) > AUDIT_FILTER_MAX:
                raise AuditFilterInvalid(f"{name} must be at most {AUDIT_FILTER_MAX} characters")
        if self.action is not None and (
            len(self.action) > _ACTION_MAX or not _ACTION_FILTER.fullmatch(self.action)
        ):
            raise AuditFilterInvalid(
                "action must be an action (token.create) or a family of them ending in .* "
                f"(token.*), not {self.action[:40]!r}"
            )
        for name, at in (("since", self.since), ("until", self.until)):
            if at is not None and (at.tzinfo is None or at.utcoffset() is None):
                raise AuditFilterInvalid(
                    f"{name} must carry a UTC offset (…Z or …+01:00): "
                    f"{at.isoformat()} could be any time zone's"
                )
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise AuditFilterInvalid(
                f"until ({self.until.isoformat()}) must be later than since "
                f"({self.since.isoformat()})"
            )

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, assume: tzinfo | None = None) -> AuditFilter:
        """The filter a query string or a form names (``actor``, ``action``, ``target``,
        ``since``, ``until``; empty fields are left out). Times are ISO 8601; one without an
        offset is read in *assume*, or refused when it is None."""
        text = {
            name: value.strip()
            for name, _ in AUDIT_FILTER_FIELDS
            if (value := query.get(name)) is not None and value.strip()
        }
        since, until = text.get("since"), text.get("until")
        return cls(
            actor=text.get("actor"),
            action=text.get("action"),
            target=text.get("target"),
            since=None if since is None else _audit_time("since", since, assume),
            until=None if until is None else _audit_time("until", until, assume),
        )

    @property
    def narrowed(self) -> bool:
        """Whether any field is given (else every entry matches)."""
        return any(
            value is not None
            for value in (self.actor, self.action, self.target, self.since, self.until)
        )

    def query_items(self) -> dict[str, str]:
        """The fields given, as :meth:`from_query` reads them back (times in UTC)."""
        items = {"actor": self.actor, "action": self.action, "target": self.target}
        for name, at in (("since", self.since), ("until", self.until)):
            if at is not None:
                items[name] = at.astimezone(UTC).isoformat()
        return {name: value for name, value in items.items() if value is not None}


def audit_select(
    where: AuditFilter,
    *,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int,
) -> sa.Select[Any]:
    """The query of :meth:`Store.list_audit` (the console's pages and the export run it too):
    newest first below *before_id*, or oldest first above *after_id* when that is given."""
    a = audit_log.c
    clauses: list[sa.ColumnElement[bool]] = []
    if where.actor is not None:
        clauses.append(a.actor == where.actor)
    if where.target is not None:
        clauses.append(a.target == where.target)
    if where.action is not None and where.action.endswith(".*"):
        # A prefix compared as it is: LIKE would ignore case on SQLite and needs escaping.
        prefix = where.action[:-1]
        clauses.append(sa.func.substr(a.action, 1, len(prefix)) == prefix)
    elif where.action is not None:
        clauses.append(a.action == where.action)
    if where.since is not None:
        clauses.append(a.at >= where.since)
    if where.until is not None:
        clauses.append(a.at < where.until)
    if before_id is not None:
        clauses.append(a.audit_id < before_id)
    if after_id is not None:
        clauses.append(a.audit_id > after_id)
    order = a.audit_id.asc() if after_id is not None else a.audit_id.desc()
    return sa.select(audit_log).where(*clauses).order_by(order).limit(limit)


# --- engine set-up -------------------------------------------------------------------------


def _configure_sqlite(engine: sa.Engine, *, checkpointed: bool = False) -> None:
    """WAL, foreign keys, a busy timeout, and BEGIN under our control (IMMEDIATE for writes);
    *checkpointed*: a :class:`~.checkpoint.Checkpointer` folds the WAL back, so no commit does
    (``wal_autocheckpoint = 0``)."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        # Stop the driver from issuing its own deferred BEGIN; the "begin" hook below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            if checkpointed:
                cursor.execute("PRAGMA wal_autocheckpoint = 0")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


async def _enable_sqlite_wal(engine: AsyncEngine) -> None:
    """Switch the database file to write-ahead logging (a persistent property of the file).

    The switch needs an exclusive lock and SQLite does not wait on the busy timeout for it, so
    several processes opening a new file at once retry here for a short, bounded while.
    """
    delays = backoff_delays(initial=0.01, cap=0.25)
    for _attempt in range(_WAL_ATTEMPTS):
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # aiosqlite.Connection
            try:
                cursor = await driver.execute("PRAGMA journal_mode = WAL")
                await cursor.close()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
        await asyncio.sleep(next(delays))
    raise StoreError(f"could not switch the SQLite database to WAL in {_WAL_ATTEMPTS} attempts")


def _upgrade(sync_conn: Connection) -> None:
    """Run Alembic migrations to head on an open connection (no alembic.ini needed)."""
    if sync_conn.dialect.name == "postgresql":
        sync_conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    alembic_command.upgrade(cfg, "heads")  # independent branches (one per area) may coexist


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """An INSERT that supports ``on_conflict_do_…`` on both engines (SQLite, PostgreSQL)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction for the modules that keep tables beside the store's (telemetry,
    configuration, links, health): ``BEGIN IMMEDIATE`` on SQLite, so concurrent writers queue
    on the write lock (bounded by the busy timeout) instead of failing with "database is
    locked" when a read lock cannot be upgraded."""
    async with engine.connect() as plain:
        conn = await plain.execution_options(**{_WRITE: True})
        async with conn.begin():
            yield conn


@contextmanager
def _caller_errors() -> Iterator[None]:
    """Re-raise a bad argument (e.g. a naive datetime) as the caller's ValueError/TypeError.

    SQLAlchemy wraps errors from bind processors in StatementError; those are the caller's
    mistakes, not the database's, so they surface as the original exception.
    """
    try:
        yield
    except StatementError as error:
        if not isinstance(error, DBAPIError) and isinstance(error.orig, ValueError | TypeError):
            raise error.orig from None
        raise


#: Connections a PostgreSQL store's pool keeps open; more are opened under load, up to its limit.
_POOL_SIZE = 5


def _listen_dsn(url: URL) -> str:
    """The asyncpg DSN for the dedicated LISTEN connection: the same URL without "+asyncpg"."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


_T = TypeVar("_T")

#: Gateway ids per query of a many-gateway lookup.
_IDS_PER_QUERY = 2000

# Statements of the command path, built once (building one costs more than running it).
_GATEWAY_REVOKED: Final = sa.select(gateways.c.revoked_at).where(
    gateways.c.gateway_id == sa.bindparam("gateway_id")
)
_INSERT_COMMAND: Final = commands.insert().returning(*commands.c)
_INSERT_AUDIT: Final = audit_log.insert()
_COMMAND_STATE: Final = sa.select(commands.c.state, commands.c.gateway_id).where(
    commands.c.command_id == sa.bindparam("p_id")
)


def _deliver_statement(ids: Any) -> Any:
    """``UPDATE commands SET state, delivered_at, updated_at WHERE command_id IN <ids> AND
    state = :p_old RETURNING command_id``: the delivery mark of one move of the table."""
    return (
        commands.update()
        .where(commands.c.command_id.in_(ids), commands.c.state == sa.bindparam("p_old"))
        .values(
            state=sa.bindparam("p_new"),
            delivered_at=sa.bindparam("p_at"),
            updated_at=sa.bindparam("p_at"),
        )
        .returning(commands.c.command_id)
    )


_DELIVER: Final = _deliver_statement(sa.bindparam("p_ids", expanding=True))
# The same for the sqlite3 connection: one statement for any number of ids (a JSON array).
_DELIVER_JSON: Final = _deliver_statement(
    sa.select(sa.column("value")).select_from(sa.func.json_each(sa.bindparam("p_ids")))
)
_transition_updates: dict[frozenset[str], Any] = {}


def _transition_update(columns: frozenset[str]) -> Any:
    """``UPDATE commands SET <columns> WHERE command_id = :p_id AND state = :p_old RETURNING *``,
    built once for each set of columns an event writes."""
    statement = _transition_updates.get(columns)
    if statement is None:
        c = commands.c
        statement = _transition_updates[columns] = (
            commands.update()
            .where(c.command_id == sa.bindparam("p_id"), c.state == sa.bindparam("p_old"))
            .values({name: sa.bindparam(f"p_{name}") for name in sorted(columns)})
            .returning(*commands.c)
        )
    return statement


_USE_API_TOKEN: Final = (
    api_tokens.update()
    .where(
        api_tokens.c.token_hash == sa.bindparam("p_hash"),
        api_tokens.c.revoked_at.is_(None),
        sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > sa.bindparam("p_now")),
    )
    .values(last_used_at=sa.bindparam("p_now"))
    .returning(*api_tokens.c)
)

#: Commands marked delivered by one statement at most (bounds the IN list).
DELIVER_BATCH: Final = 500


class _RawStatement:
    """A Core statement for the ``sqlite3`` connection itself: compiled once for the writer's
    dialect, with each parameter's processing (aware timestamps to naive UTC text, documents to
    JSON text, naive timestamps refused) and each of the *returning* columns' processing taken
    from the tables' own types, so what it stores and returns is what SQLAlchemy's would."""

    def __init__(
        self, statement: Any, dialect: sa.Dialect, returning: Sequence[sa.Column[Any]] = ()
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        order = compiled.positiontup  # the parameter names in the order of the SQL's "?" marks
        if order is None:
            raise RuntimeError(f"{statement}: not compiled to positional parameters")
        self.sql = str(compiled)
        self._params = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in order
        )
        self._columns = tuple(
            (c.name, c.type.dialect_impl(dialect).result_processor(dialect, None))
            for c in returning
        )

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            values[name] if process is None else process(values[name])
            for name, process in self._params
        )

    def execute(self, db: sqlite3.Connection, values: Mapping[str, Any]) -> sqlite3.Cursor:
        return db.execute(self.sql, self.params(values))

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        """A returned row, by column name, as SQLAlchemy would have returned it."""
        return {
            name: value if process is None else process(value)
            for (name, process), value in zip(self._columns, raw, strict=True)
        }


def _insert_of(table: sa.Table, names: Sequence[str]) -> Any:
    return table.insert().values({name: sa.bindparam(name) for name in names})


class _SqliteWriter:
    """Whole write transactions on a SQLite file, each run on one thread in one hop.

    The thread has its own connection (pysqlite, the same pragmas and ``BEGIN IMMEDIATE``), so
    it queues on SQLite's write lock with the engine's other writers like any of them.
    :meth:`run_raw` hands the ``sqlite3`` connection itself to the work: queueing a command,
    marking commands delivered and checking an API token (the path of every operator request
    and command push) run their statements there, at a third of what they cost through
    SQLAlchemy's execution machinery.
    """

    def __init__(self, url: URL, *, checkpointed: bool) -> None:
        engine = sa.create_engine(url.set(drivername="sqlite"))
        _configure_sqlite(engine, checkpointed=checkpointed)
        self._raw_engine = engine
        self._engine = engine.execution_options(**{_WRITE: True})
        self._dispose = engine.dispose
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-sqlite-writer")
        dialect = engine.dialect
        self.gateway_revoked = _RawStatement(_GATEWAY_REVOKED, dialect)
        self.insert_command = _RawStatement(
            _insert_of(commands, [c.name for c in commands.c]), dialect
        )
        self.insert_audit = _RawStatement(
            _insert_of(audit_log, [c.name for c in audit_log.c if c.name != "audit_id"]), dialect
        )
        self.use_token = _RawStatement(_USE_API_TOKEN, dialect, returning=list(api_tokens.c))
        self.deliver = _RawStatement(_DELIVER_JSON, dialect)

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        with self._engine.begin() as conn:
            return work(conn)

    def _raw_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        pooled = self._raw_engine.raw_connection()
        try:
            db: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
            try:
                db.execute("BEGIN IMMEDIATE")
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:  # the store's callers handle SQLAlchemy's errors
            raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
        finally:
            pooled.close()

    async def run(self, work: Callable[[Connection], _T]) -> _T:
        """Run *work* in one write transaction on the writer thread; committed when it
        returns, rolled back if it raises (the exception is re-raised here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._transaction, work)

    async def run_raw(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`run` for work on the ``sqlite3`` connection (``BEGIN IMMEDIATE`` before it,
        ``COMMIT`` after it, ``ROLLBACK`` if it raises); SQLite's errors are raised as
        SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, like every other store method's."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._raw_transaction, work)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._dispose)
        self._thread.shutdown(wait=True)


def _owner_only(path: Path) -> None:
    """Make the SQLite database at *path* readable by its owner only: created 0600 (SQLite
    gives its WAL and shared-memory files the database's mode), or brought to 0600 with
    those files if it exists. It holds password hashes, session and token digests."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                if each.stat().st_mode & 0o077:
                    each.chmod(0o600)


#: Argument names whose values the audit log never holds (matched case-insensitively, in part).
_SECRET_ARG = re.compile(r"pass|secret|token|credential|private|key", re.IGNORECASE)


def redacted_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """A command's arguments as the audit log keeps them: the values of secret-looking names
    (passwords, tokens, keys) replaced, in nested mappings too."""
    out: dict[str, Any] = {}
    for name, value in args.items():
        if _SECRET_ARG.search(str(name)):
            out[name] = "[redacted]"
        elif isinstance(value, Mapping):
            out[name] = redacted_args(value)
        else:
            out[name] = value
    return out


class Store:
    """The cloud store. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(
        self,
        engine: AsyncEngine,
        notifier: CommandNotifier,
        *,
        single_connection: bool = False,
        writer: _SqliteWriter | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._engine = engine
        self._checkpointer = checkpointer
        self._notifier = notifier
        # An in-memory SQLite database is one connection: its transactions must take turns.
        self._turns = asyncio.Lock() if single_connection else None
        self._writer = writer

    @classmethod
    async def open(cls, url: str, *, connections: int | None = None) -> Store:
        """Connect to *url*, migrate the schema to head, and return the store.

        *url* is e.g. ``sqlite+aiosqlite:///var/lib/tether/cloud.db`` or
        ``postgresql+asyncpg://tether@db.example:5432/tether``. On PostgreSQL the store holds
        at most *connections* server connections (its LISTEN connection among them; default:
        a pool of 5 that may grow by 10, and that one).
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        notifier: CommandNotifier
        if backend == "sqlite":
            database = parsed.database
            key = None
            single_connection = not database or database == ":memory:"
            if database and database != ":memory:" and not database.startswith("file:"):
                path = Path(database).absolute()
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _owner_only(path)
                key = str(path.resolve())
            engine = create_async_engine(parsed)
            _configure_sqlite(engine.sync_engine, checkpointed=key is not None)
            try:
                await _enable_sqlite_wal(engine)
            except BaseException:
                await engine.dispose()
                raise
            notifier = LocalCommandNotifier(key)
        elif backend == "postgresql":
            single_connection = False
            if connections is None:
                engine = create_async_engine(parsed, pool_pre_ping=True)
            else:
                if connections < 2:
                    raise ValueError("a PostgreSQL store needs at least 2 connections")
                pooled = connections - 1  # one is the LISTEN connection's
                size = min(_POOL_SIZE, pooled)
                engine = create_async_engine(
                    parsed, pool_pre_ping=True, pool_size=size, max_overflow=pooled - size
                )
            notifier = PostgresCommandNotifier(engine, _listen_dsn(parsed))
        else:
            raise ValueError(
                f"unsupported store URL {parsed!r}: use sqlite+aiosqlite or postgresql+asyncpg"
            )
        try:
            async with engine.connect() as plain:
                conn = await plain.execution_options(**{_WRITE: True})
                async with conn.begin():
                    await conn.run_sync(_upgrade)
        except BaseException:
            await engine.dispose()
            raise
        # A file has room for a second connection: the command path's writer thread.
        writer = None
        checkpointer = None
        if backend == "sqlite" and not single_connection:
            writer = _SqliteWriter(parsed, checkpointed=key is not None)
            if key is not None:
                checkpointer = Checkpointer(key)
                checkpointer.start()
        return cls(
            engine,
            notifier,
            single_connection=single_connection,
            writer=writer,
            checkpointer=checkpointer,
        )

    async def close(self) -> None:
        await self._notifier.close()
        if self._writer is not None:
            await self._writer.close()
        await self._engine.dispose()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)

    @property
    def checkpointer(self) -> Checkpointer | None:
        """The thread that checkpoints a SQLite file's WAL (None on other stores)."""
        return self._checkpointer

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for bulk paths (telemetry ingest) that need it directly."""
        return self._engine

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._turn(), self._engine.connect() as plain:
            conn = await plain.execution_options(**{_WRITE: True})
            async with conn.begin():
                yield conn

    async def _transact(self, work: Callable[[Connection], _T]) -> _T:
        """Run *work* (a function of a synchronous connection) in one write transaction: on
        the writer thread for a SQLite file, else through the async engine."""
        if self._writer is not None:
            with _caller_errors():
                return await self._writer.run(work)
        async with self._write() as conn:
            return await conn.run_sync(work)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._turn(), self._engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        with _caller_errors():
            if self._turns is None:
                yield
            else:
                async with self._turns:
                    yield

    # --- enrollment tokens ----------------------------------------------------------------

    async def create_enrollment_token(
        self,
        *,
        gateway_name: str | None,
        ttl: timedelta,
        created_by: str,
        now: datetime,
    ) -> tuple[EnrollmentTokenRecord, str]:
        """Issue a one-time enrollment token; returns the record and the secret (shown once)."""
        if ttl <= timedelta(0):
            raise ValueError("an enrollment token needs a positive lifetime")
        secret = secrets.token_urlsafe(32)
        values = {
            "token_id": _new_id(),
            "token_hash": _hash_secret(secret),
            "gateway_name": gateway_name,
            "created_at": now,
            "created_by": created_by,
            "expires_at": now + ttl,
            "used_at": None,
            "revoked_at": None,
        }
        async with self._write() as conn:
            row = (
                await conn.execute(
                    enrollment_tokens.insert().values(values).returning(*enrollment_tokens.c)
                )
            ).one()
        return _enrollment_token(row._mapping), secret

    async def consume_enrollment_token(
        self, secret: str, *, now: datetime
    ) -> EnrollmentTokenRecord:
        """Spend a token's single use, atomically; raise why it cannot be used otherwise."""
        token_hash = _hash_secret(secret)
        t = enrollment_tokens.c
        async with self._write() as conn:
            row = (
                await conn.execute(
                    enrollment_tokens.update()
                    .where(
                        t.token_hash == token_hash,
                        t.used_at.is_(None),
                        t.revoked_at.is_(None),
                        t.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(*enrollment_tokens.c)
                )
            ).first()
            if row is not None:
                return _enrollment_token(row._mapping)
            existing = (
                await conn.execute(sa.select(enrollment_tokens).where(t.token_hash == token_hash))
            ).first()
        if existing is None:
            raise TokenUnknown()
        token = _enrollment_token(existing._mapping)
        if token.revoked_at is not None:
            raise TokenRevoked(token.token_id, token.revoked_at)
        if token.used_at is not None:
            raise TokenAlreadyUsed(token.token_id, token.used_at)
        raise TokenExpired(token.token_id, token.expires_at)

    async def name_in_use(self, name: str, *, now: datetime) -> str | None:
        """What already holds gateway name *name*, in words (a gateway that is not revoked,
        or an enrollment token that can still be used), or None when the name is free."""
        g = gateways.c
        t = enrollment_tokens.c
        async with self._read() as conn:
            gateway_id = (
                await conn.execute(
                    sa.select(g.gateway_id).where(g.name == name, g.revoked_at.is_(None)).limit(1)
                )
            ).scalar()
            if gateway_id is not None:
                return f"gateway {gateway_id}"
            token = (
                await conn.execute(
                    sa.select(t.token_id, t.expires_at)
                    .where(
                        t.gateway_name == name,
                        t.used_at.is_(None),
                        t.revoked_at.is_(None),
                        t.expires_at > now,
                    )
                    .limit(1)
                )
            ).first()
        if token is not None:
            until = f"{token.expires_at:%Y-%m-%d %H:%M} UTC"
            return f"enrollment token {token.token_id}, unused, valid until {until}"
        return None

    async def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        """All enrollment tokens, newest first."""
        t = enrollment_tokens.c
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(enrollment_tokens).order_by(t.created_at.desc(), t.token_id)
            )
            return [_enrollment_token(r._mapping) for r in rows]

    async def revoke_enrollment_token(
        self, token_id: str, *, now: datetime | None = None
    ) -> EnrollmentTokenRecord:
        """Withdraw an unused token. Revoking twice keeps the first time; raises TokenUnknown."""
        t = enrollment_tokens.c
        at = now if now is not None else datetime.now(UTC)
        async with self._write() as conn:
            await conn.execute(
                enrollment_tokens.update()
                .where(t.token_id == token_id, t.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            row = (
                await conn.execute(sa.select(enrollment_tokens).where(t.token_id == token_id))
            ).first()
        if row is None:
            raise TokenUnknown()
        return _enrollment_token(row._mapping)

    # --- gateways -------------------------------------------------------------------------

    async def create_gateway(self, *, gateway_id: str, name: str, now: datetime) -> GatewayRecord:
        """Register a gateway; raises GatewayExists if the id is taken."""
        values = {
            "gateway_id": gateway_id,
            "name": name,
            "created_at": now,
            "revoked_at": None,
            "linked": False,
            "tier": None,
            "last_seen": None,
            "link_since": None,
            "agent_version": None,
            "peer": None,
            "cert_serial": None,
            "cert_not_after": None,
        }
        try:
            async with self._write() as conn:
                row = (
                    await conn.execute(gateways.insert().values(values).returning(*gateways.c))
                ).one()
        except IntegrityError as error:
            raise GatewayExists(gateway_id) from error
        return _gateway(row._mapping)

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(gateways).where(gateways.c.gateway_id == gateway_id))
            ).first()
        return None if row is None else _gateway(row._mapping)

    async def revoked_among(self, gateway_ids: Iterable[str]) -> set[str]:
        """Which of *gateway_ids* are revoked (a few thousand ids per query)."""
        ids = list(gateway_ids)
        out: set[str] = set()
        g = gateways.c
        async with self._read() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                rows = await conn.execute(
                    sa.select(g.gateway_id).where(
                        g.gateway_id.in_(ids[start : start + _IDS_PER_QUERY]),
                        g.revoked_at.is_not(None),
                    )
                )
                out.update(r.gateway_id for r in rows)
        return out

    async def list_gateways(self) -> list[GatewayRecord]:
        """All gateways, by id."""
        async with self._read() as conn:
            rows = await conn.execute(sa.select(gateways).order_by(gateways.c.gateway_id))
            return [_gateway(r._mapping) for r in rows]

    async def revoke_gateway(self, gateway_id: str, *, now: datetime) -> GatewayRecord:
        """Revoke a gateway and every certificate it holds. Idempotent; keeps the first time."""
        g, c = gateways.c, certificates.c
        async with self._write() as conn:
            await conn.execute(
                gateways.update()
                .where(g.gateway_id == gateway_id, g.revoked_at.is_(None))
                .values(revoked_at=now, linked=False)
            )
            row = (
                await conn.execute(sa.select(gateways).where(g.gateway_id == gateway_id))
            ).first()
            if row is None:
                raise GatewayUnknown(gateway_id)
            await conn.execute(
                certificates.update()
                .where(c.gateway_id == gateway_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return _gateway(row._mapping)

    # --- certificates ---------------------------------------------------------------------

    async def record_certificate(
        self,
        *,
        gateway_id: str,
        serial_hex: str,
        fingerprint: str,
        not_before: datetime,
        not_after: datetime,
        now: datetime,
    ) -> CertificateRecord:
        """Record a certificate issued to a gateway; it becomes the gateway's current one."""
        serial = serial_hex.lower()
        g = gateways.c
        try:
            async with self._write() as conn:
                # Updating the gateway first takes its row lock, so a concurrent revoke_gateway
                # either sees this certificate or makes this call fail with GatewayRevoked.
                updated = (
                    await conn.execute(
                        gateways.update()
                        .where(g.gateway_id == gateway_id, g.revoked_at.is_(None))
                        .values(cert_serial=serial, cert_not_after=not_after)
                        .returning(g.gateway_id)
                    )
                ).first()
                if updated is None:
                    exists = (
                        await conn.execute(
                            sa.select(g.gateway_id).where(g.gateway_id == gateway_id)
                        )
                    ).first()
                    raise GatewayRevoked(gateway_id) if exists else GatewayUnknown(gateway_id)
                row = (
                    await conn.execute(
                        certificates.insert()
                        .values(
                            serial_hex=serial,
                            gateway_id=gateway_id,
                            fingerprint=fingerprint,
                            not_before=not_before,
                            not_after=not_after,
                            created_at=now,
                            revoked_at=None,
                        )
                        .returning(*certificates.c)
                    )
                ).one()
        except IntegrityError as error:
            # The gateway row exists and is locked by us, so only the serial can clash.
            raise CertificateExists(serial) from error
        return _certificate(row._mapping)

    async def get_certificate(self, serial_hex: str) -> CertificateRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(certificates).where(certificates.c.serial_hex == serial_hex.lower())
                )
            ).first()
        return None if row is None else _certificate(row._mapping)

    async def get_certificates(self, serials: list[str]) -> dict[str, CertificateRecord]:
        """Several certificates in one query, by serial (lower-case hex keys)."""
        wanted = [s.lower() for s in serials]
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    sa.select(certificates).where(certificates.c.serial_hex.in_(wanted))
                )
            ).all()
        return {row.serial_hex: _certificate(row._mapping) for row in rows}

    async def certificate_is_valid(self, serial_hex: str, *, now: datetime) -> bool:
        """Known, unrevoked, its gateway unrevoked, and *now* within its validity period."""
        c, g = certificates.c, gateways.c
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(c.serial_hex)
                    .join_from(certificates, gateways, c.gateway_id == g.gateway_id)
                    .where(
                        c.serial_hex == serial_hex.lower(),
                        c.revoked_at.is_(None),
                        g.revoked_at.is_(None),
                        c.not_before <= now,
                        c.not_after >= now,
                    )
                )
            ).first()
        return row is not None

    async def revoke_certificate(self, serial_hex: str, *, now: datetime) -> CertificateRecord:
        """Revoke one certificate (its gateway stays registered). Idempotent."""
        c = certificates.c
        serial = serial_hex.lower()
        async with self._write() as conn:
            await conn.execute(
                certificates.update()
                .where(c.serial_hex == serial, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (
                await conn.execute(sa.select(certificates).where(c.serial_hex == serial))
            ).first()
        if row is None:
            raise CertificateUnknown(serial)
        return _certificate(row._mapping)

    # --- commands -------------------------------------------------------------------------

    async def create_command(
        self,
        *,
        gateway_id: str,
        kind: str,
        args: dict[str, object],
        expires_at: datetime,
        created_by: str,
        now: datetime,
        source: str | None = None,
        grant_id: str | None = None,
    ) -> CommandRecord:
        """Queue a command for a gateway and record who asked (audit ``command.send``, from
        *source*, naming the support grant *grant_id* it was sent under, if any) in the same
        transaction; raises GatewayUnknown or GatewayRevoked."""
        command_id = _new_id()
        values = {
            "command_id": command_id,
            "gateway_id": gateway_id,
            "kind": kind,
            "args": dict(args),
            "state": CommandState.QUEUED.value,
            "created_at": now,
            "created_by": created_by,
            "expires_at": expires_at,
            "delivered_at": None,
            "started_at": None,
            "finished_at": None,
            "updated_at": now,
            "result": None,
            "error": None,
        }
        entry = {
            "at": now,
            "actor": created_by,
            "action": "command.send",
            "target": command_id,
            "detail": {
                "gateway": gateway_id,
                "kind": kind,
                "args": redacted_args(args),
                **({} if grant_id is None else {"grant": grant_id}),
            },
            "source": source,
        }

        writer = self._writer
        if writer is not None:  # a SQLite file: on the sqlite3 connection (the latency path)

            def queue_raw(db: sqlite3.Connection) -> None:
                gateway = writer.gateway_revoked.execute(db, {"gateway_id": gateway_id}).fetchone()
                if gateway is None:
                    raise GatewayUnknown(gateway_id)
                if gateway[0] is not None:
                    raise GatewayRevoked(gateway_id)
                writer.insert_command.execute(db, values)
                writer.insert_audit.execute(db, entry)

            await writer.run_raw(queue_raw)
            return _command(values)

        def queue(conn: Connection) -> RowMapping:
            gateway = conn.execute(_GATEWAY_REVOKED, {"gateway_id": gateway_id}).first()
            if gateway is None:
                raise GatewayUnknown(gateway_id)
            if gateway.revoked_at is not None:
                raise GatewayRevoked(gateway_id)
            row = conn.execute(_INSERT_COMMAND, values).one()
            conn.execute(_INSERT_AUDIT, entry)
            return row._mapping

        return _command(await self._transact(queue))

    async def get_command(self, command_id: str) -> CommandRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(commands).where(commands.c.command_id == command_id))
            ).first()
        return None if row is None else _command(row._mapping)

    async def list_commands(
        self,
        *,
        gateway_id: str | None = None,
        state: CommandState | None = None,
        limit: int = 100,
    ) -> list[CommandRecord]:
        """Commands, newest first, optionally of one gateway and/or in one state."""
        c = commands.c
        query = sa.select(commands).order_by(c.created_at.desc(), c.command_id.desc()).limit(limit)
        if gateway_id is not None:
            query = query.where(c.gateway_id == gateway_id)
        if state is not None:
            query = query.where(c.state == CommandState(state).value)
        async with self._read() as conn:
            return [_command(r._mapping) for r in await conn.execute(query)]

    async def pending_commands(self, gateway_id: str, *, now: datetime) -> list[CommandRecord]:
        """The gateway's queued, unexpired commands, oldest first."""
        c = commands.c
        query = (
            sa.select(commands)
            .where(
                c.gateway_id == gateway_id,
                c.state == CommandState.QUEUED.value,
                c.expires_at > now,
            )
            .order_by(c.created_at, c.command_id)
        )
        async with self._read() as conn:
            return [_command(r._mapping) for r in await conn.execute(query)]

    async def apply_command_event(
        self,
        command_id: str,
        event: CommandEvent,
        *,
        now: datetime,
        gateway_id: str | None = None,
        result: dict[str, object] | None = None,
        error: str | None = None,
    ) -> CommandRecord:
        """Move a command through the lifecycle table, atomically.

        With *gateway_id*, the command must belong to that gateway, else CommandNotFound (a
        gateway cannot probe for other gateways' command ids). Illegal moves raise
        IllegalTransition.
        """
        event = CommandEvent(event)

        def attempt(conn: Connection) -> RowMapping | None:
            current = conn.execute(_COMMAND_STATE, {"p_id": command_id}).first()
            if current is None or (gateway_id is not None and current.gateway_id != gateway_id):
                raise CommandNotFound(command_id)
            old = CommandState(current.state)
            new = transition(old, event)
            values: dict[str, object] = {"state": new.value, "updated_at": now}
            if event is CommandEvent.DELIVER:
                values["delivered_at"] = now
            elif event is CommandEvent.START:
                values["started_at"] = now
            if is_final(new):
                values["finished_at"] = now
            if result is not None:
                values["result"] = dict(result)
            if error is not None:
                values["error"] = error
            params = {f"p_{name}": value for name, value in values.items()}
            params.update(p_id=command_id, p_old=old.value)
            row = conn.execute(_transition_update(frozenset(values)), params).first()
            return None if row is None else row._mapping

        for _attempt in range(CAS_ATTEMPTS):
            mapping = await self._transact(attempt)
            if mapping is not None:
                return _command(mapping)
        raise CommandContention(command_id, CAS_ATTEMPTS)

    async def deliver_commands(self, command_ids: Sequence[str], *, now: datetime) -> set[str]:
        """Mark commands sent on a link as delivered, in one transaction; returns the ids that
        took the event (queued or already delivered ones), not those meanwhile cancelled,
        expired, started or finished (the lifecycle table refuses those), nor unknown ids."""
        ids = list(dict.fromkeys(command_ids))
        moves = [  # delivered ones first, so the queued ones moved next are not matched again
            (old, transition(old, CommandEvent.DELIVER))
            for old in (CommandState.DELIVERED, CommandState.QUEUED)
        ]

        def deliver(conn: Connection) -> set[str]:
            moved: set[str] = set()
            for start in range(0, len(ids), DELIVER_BATCH):
                chunk = ids[start : start + DELIVER_BATCH]
                for old, new in moves:
                    rows = conn.execute(
                        _DELIVER,
                        {"p_ids": chunk, "p_old": old.value, "p_new": new.value, "p_at": now},
                    )
                    moved.update(row.command_id for row in rows)
            return moved

        if not ids:
            return set()
        writer = self._writer
        if writer is not None:  # a SQLite file: on the sqlite3 connection (after every push)

            def deliver_raw(db: sqlite3.Connection) -> set[str]:
                moved: set[str] = set()
                for start in range(0, len(ids), DELIVER_BATCH):
                    chunk = json.dumps(ids[start : start + DELIVER_BATCH])
                    for old, new in moves:
                        values = {
                            "p_ids": chunk,
                            "p_old": old.value,
                            "p_new": new.value,
                            "p_at": now,
                        }
                        moved.update(row[0] for row in writer.deliver.execute(db, values))
                return moved

            return await writer.run_raw(deliver_raw)
        return await self._transact(deliver)

    async def expire_due_commands(self, *, now: datetime) -> list[CommandRecord]:
        """Expire every unfinished command whose deadline has passed; returns those expired."""
        c = commands.c

        # Every state the table lets expire goes to the same state: one statement for all.
        by_state: dict[CommandState, CommandState] = {}
        for old in CommandState:
            try:
                by_state[old] = transition(old, CommandEvent.EXPIRE)
            except IllegalTransition:
                continue
        (target,) = set(by_state.values())
        due = sa.and_(c.state.in_([s.value for s in by_state]), c.expires_at <= now)

        def expire(conn: Connection) -> list[CommandRecord]:
            rows = conn.execute(
                commands.update()
                .where(due)
                .values(state=target.value, updated_at=now, finished_at=now)
                .returning(*commands.c)
            )
            return [_command(r._mapping) for r in rows]

        expired = await self._transact(expire)
        expired.sort(key=lambda record: (record.created_at, record.command_id))
        return expired

    # --- operator API tokens --------------------------------------------------------------

    async def create_api_token(
        self,
        *,
        name: str,
        role: str,
        created_by: str,
        now: datetime,
        ttl: timedelta | None = None,
    ) -> tuple[ApiTokenRecord, str]:
        """Issue an operator API token; returns the record and the secret (shown once)."""
        if role not in ROLES:
            raise UnknownRole(role, ROLES)
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("an API token's lifetime must be positive (or None for no expiry)")
        secret = "tt_" + secrets.token_urlsafe(32)
        values = {
            "token_id": _new_id(),
            "token_hash": _hash_secret(secret),
            "name": name,
            "role": role,
            "created_at": now,
            "created_by": created_by,
            "expires_at": None if ttl is None else now + ttl,
            "revoked_at": None,
            "last_used_at": None,
        }
        async with self._write() as conn:
            row = (
                await conn.execute(api_tokens.insert().values(values).returning(*api_tokens.c))
            ).one()
        return _api_token(row._mapping), secret

    async def authenticate_api_token(self, secret: str, *, now: datetime) -> ApiTokenRecord | None:
        """The token for *secret* if it is known, unrevoked and unexpired (marks it used)."""
        values = {"p_hash": _hash_secret(secret), "p_now": now}
        writer = self._writer
        mapping: Mapping[Any, Any] | None
        if writer is not None:  # a SQLite file: on the sqlite3 connection (every API request)

            def use_raw(db: sqlite3.Connection) -> dict[str, Any] | None:
                row = writer.use_token.execute(db, values).fetchone()
                return None if row is None else writer.use_token.row(row)

            mapping = await writer.run_raw(use_raw)
        else:

            def use(conn: Connection) -> RowMapping | None:
                row = conn.execute(_USE_API_TOKEN, values).first()
                return None if row is None else row._mapping

            mapping = await self._transact(use)
        return None if mapping is None else _api_token(mapping)

    async def list_api_tokens(self) -> list[ApiTokenRecord]:
        """All API tokens, newest first."""
        t = api_tokens.c
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(api_tokens).order_by(t.created_at.desc(), t.token_id)
            )
            return [_api_token(r._mapping) for r in rows]

    async def revoke_api_token(
        self, token_id: str, *, now: datetime | None = None
    ) -> ApiTokenRecord:
        """Revoke an API token. Idempotent (keeps the first time); raises ApiTokenUnknown."""
        t = api_tokens.c
        at = now if now is not None else datetime.now(UTC)
        async with self._write() as conn:
            await conn.execute(
                api_tokens.update()
                .where(t.token_id == token_id, t.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            row = (await conn.execute(sa.select(api_tokens).where(t.token_id == token_id))).first()
        if row is None:
            raise ApiTokenUnknown(token_id)
        return _api_token(row._mapping)

    # --- support grants -------------------------------------------------------------------

    async def create_support_grant(
        self,
        *,
        gateway_id: str,
        username: str,
        scope: str,
        reason: str,
        created_by: str,
        now: datetime,
        expires_at: datetime,
    ) -> SupportGrantRecord:
        """Give support user *username* the *scope* on a gateway from *now* until *expires_at*.

        Raises GrantInvalid (a scope, reason or username the rules of
        :mod:`~tether.cloud.store.grants` refuse, or *expires_at* not after *now*),
        GatewayUnknown or GatewayRevoked. Whether *username* is a support user is the
        caller's to check (users are :mod:`~tether.cloud.store.accounts`'s)."""
        values = {
            "grant_id": _new_id(),
            "gateway_id": gateway_id,
            "username": check_username(username),
            "scope": check_scope(scope),
            "reason": check_reason(reason),
            "created_at": now,
            "created_by": created_by,
            "expires_at": expires_at,
            "revoked_at": None,
            "revoked_by": None,
        }
        if expires_at <= now:
            raise GrantInvalid("a support grant must end after it begins")

        def create(conn: Connection) -> None:
            gateway = conn.execute(_GATEWAY_REVOKED, {"gateway_id": gateway_id}).first()
            if gateway is None:
                raise GatewayUnknown(gateway_id)
            if gateway.revoked_at is not None:
                raise GatewayRevoked(gateway_id)
            conn.execute(support_grants.insert().values(values))

        await self._transact(create)
        return _support_grant(values)

    async def get_support_grant(self, grant_id: str) -> SupportGrantRecord | None:
        query = sa.select(support_grants).where(support_grants.c.grant_id == grant_id)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _support_grant(row._mapping)

    async def list_support_grants(
        self,
        *,
        gateway_id: str | None = None,
        username: str | None = None,
        active_at: datetime | None = None,
        scope: str | None = None,
        limit: int = 200,
    ) -> list[SupportGrantRecord]:
        """Grants, newest first, at most *limit*: of one gateway, one user, one scope, and
        with *active_at*, only those that count at that time (not revoked, not expired)."""
        g = support_grants.c
        query = (
            sa.select(support_grants).order_by(g.created_at.desc(), g.grant_id.desc()).limit(limit)
        )
        if gateway_id is not None:
            query = query.where(g.gateway_id == gateway_id)
        if username is not None:
            query = query.where(g.username == username)
        if scope is not None:
            query = query.where(g.scope == scope)
        if active_at is not None:
            query = query.where(
                g.revoked_at.is_(None), g.created_at <= active_at, g.expires_at > active_at
            )
        async with self._read() as conn:
            return [_support_grant(r._mapping) for r in await conn.execute(query)]

    async def active_support_grant(
        self, *, gateway_id: str, username: str, scope: str, now: datetime
    ) -> SupportGrantRecord | None:
        """The grant that lets *username* do *scope* on the gateway at *now* (of several, the
        one that lasts longest), or None."""
        g = support_grants.c
        query = (
            sa.select(support_grants)
            .where(
                g.gateway_id == gateway_id,
                g.username == username,
                g.scope == scope,
                g.revoked_at.is_(None),
                g.created_at <= now,
                g.expires_at > now,
            )
            .order_by(g.expires_at.desc(), g.grant_id)
            .limit(1)
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _support_grant(row._mapping)

    async def revoke_support_grant(
        self, grant_id: str, *, revoked_by: str, now: datetime
    ) -> SupportGrantRecord:
        """End a grant that still counts, at *now*; raises GrantUnknown, or GrantRevoked or
        GrantExpired for one that already ended (the first revocation is kept)."""
        g = support_grants.c

        def revoke(conn: Connection) -> tuple[bool, RowMapping | None]:
            updated = conn.execute(
                support_grants.update()
                .where(g.grant_id == grant_id, g.revoked_at.is_(None), g.expires_at > now)
                .values(revoked_at=now, revoked_by=revoked_by)
                .returning(*support_grants.c)
            ).first()
            if updated is not None:
                return True, updated._mapping
            row = conn.execute(sa.select(support_grants).where(g.grant_id == grant_id)).first()
            return False, None if row is None else row._mapping

        revoked, mapping = await self._transact(revoke)
        if mapping is None:
            raise GrantUnknown(grant_id)
        grant = _support_grant(mapping)
        if not revoked:
            raise GrantRevoked(grant) if grant.revoked_at is not None else GrantExpired(grant)
        return grant

    # --- audit log (append-only) ----------------------------------------------------------

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        target: str | None,
        detail: dict[str, object] | None,
        source: str | None,
        now: datetime,
    ) -> None:
        """Append one entry to the audit log. There is no way to change or remove entries."""
        entry = {
            "at": now,
            "actor": actor,
            "action": action,
            "target": target,
            "detail": None if detail is None else dict(detail),
            "source": source,
        }

        def append(conn: Connection) -> None:
            conn.execute(_INSERT_AUDIT, entry)

        await self._transact(append)

    async def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 200,
    ) -> list[AuditRecord]:
        """Audit entries that match every filter given (see :class:`AuditFilter`), at most
        *limit*: newest first, below *before_id* when given (a page's last id, for the next
        page); or, with *after_id*, oldest first above it (reading forward, as an export does).
        Raises :class:`AuditFilterInvalid` for a filter that cannot mean anything."""
        where = AuditFilter(actor=actor, action=action, target=target, since=since, until=until)
        query = audit_select(where, before_id=before_id, after_id=after_id, limit=limit)
        async with self._read() as conn:
            return [_audit(r._mapping) for r in await conn.execute(query)]

    # --- command wake-ups across nodes ----------------------------------------------------

    async def notify_command(self, gateway_id: str) -> None:
        """Tell every node (PostgreSQL) or every local listener (SQLite) to look at a gateway."""
        await self._notifier.notify(gateway_id)

    def listen_commands(self, callback: CommandCallback) -> CommandListener:
        """``async with store.listen_commands(cb):`` calls ``cb(gateway_id)`` on each wake-up."""
        return CommandListener(self._notifier, callback)
