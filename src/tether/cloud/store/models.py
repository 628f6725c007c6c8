"""The cloud store's tables, defined once for SQLite and PostgreSQL alike.

Migrations (``migrations/versions``) create exactly these tables; a test compares the two.
Every timestamp column is :class:`UTCDateTime`: aware UTC datetimes in, aware UTC datetimes out.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "JSONDocument",
    "UTCDateTime",
    "api_tokens",
    "audit_log",
    "certificates",
    "commands",
    "enrollment_tokens",
    "gateways",
    "metadata",
    "support_grants",
]


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC on the Python side.

    PostgreSQL stores ``TIMESTAMP WITH TIME ZONE``. SQLite has no such type: values are stored
    as naive UTC text (fixed width, so text order is time order) and tagged UTC on the way out.
    Naive datetimes are refused rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Explicit constraint names keep migrations identical on both engines.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ID = sa.String(64)
_NAME = sa.String(255)
_HASH = sa.String(64)  # sha256 hex

gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("gateway_id", _ID, primary_key=True),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("linked", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("tier", sa.String(32), nullable=True),
    sa.Column("last_seen", UTCDateTime(), nullable=True),
    sa.Column("link_since", UTCDateTime(), nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=True),
    sa.Column("peer", sa.String(255), nullable=True),
    sa.Column("cert_serial", sa.String(64), nullable=True),
    sa.Column("cert_not_after", UTCDateTime(), nullable=True),
    # The sweeper's look for silent HTTPS-tier gateways, every few seconds in every process.
    sa.Index("ix_gateways_tier_last_seen", "tier", "last_seen"),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial_hex", sa.String(64), primary_key=True),
    sa.Column(
        "gateway_id",
        _ID,
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("not_before", UTCDateTime(), nullable=False),
    sa.Column("not_after", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("token_hash", _HASH, nullable=False, unique=True),
    sa.Column("gateway_name", _NAME, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", _NAME, nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("used_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)

commands = sa.Table(
    "commands",
    metadata,
    sa.Column("command_id", sa.String(32), primary_key=True),
    sa.Column(
        "gateway_id",
        _ID,
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("args", JSONDocument, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", _NAME, nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("result", JSONDocument, nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Index("ix_commands_gateway_state_created", "gateway_id", "state", "created_at"),
    sa.Index("ix_commands_state_expires", "state", "expires_at"),
    sa.Index("ix_commands_created_at", "created_at"),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("token_hash", _HASH, nullable=False, unique=True),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", _NAME, nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column(
        "audit_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", _NAME, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("detail", JSONDocument, nullable=True),
    sa.Column("source", sa.String(255), nullable=True),
    sa.Index("ix_audit_log_at", "at"),
    # The login throttle's count: failures by source within a window.
    sa.Index("ix_audit_log_action_source_at", "action", "source", "at"),
    # The filtered pages (actor, target or one action), read newest first by id.
    sa.Index("ix_audit_log_actor_audit_id", "actor", "audit_id"),
    sa.Index("ix_audit_log_target_audit_id", "target", "audit_id"),
    sa.Index("ix_audit_log_action_audit_id", "action", "audit_id"),
)

support_grants = sa.Table(
    "support_grants",
    metadata,
    sa.Column("grant_id", sa.String(32), primary_key=True),
    sa.Column(
        "gateway_id",
        _ID,
        sa.ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("username", sa.String(64), nullable=False),  # the support user it is for
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", _NAME, nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_by", _NAME, nullable=True),
    # The check before each command a support user sends: their grants for one gateway.
    sa.Index("ix_support_grants_gateway_id_username", "gateway_id", "username"),
    # A support user's own grants.
    sa.Index("ix_support_grants_username", "username"),
)
