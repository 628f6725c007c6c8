"""Plain, immutable records the store hands out (never live database objects)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from tether.protocol.commands import CommandState

__all__ = [
    "ROLES",
    "ApiTokenRecord",
    "AuditRecord",
    "CertificateRecord",
    "CommandRecord",
    "EnrollmentTokenRecord",
    "GatewayRecord",
    "SupportGrantRecord",
]

ROLES: Final[tuple[str, ...]] = ("admin", "operator", "viewer", "support")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayRecord:
    gateway_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    linked: bool
    tier: str | None
    last_seen: datetime | None
    link_since: datetime | None
    agent_version: str | None
    peer: str | None
    cert_serial: str | None
    cert_not_after: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRecord:
    serial_hex: str
    gateway_id: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentTokenRecord:
    token_id: str
    gateway_name: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.used_at is None and self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRecord:
    command_id: str
    gateway_id: str
    kind: str
    args: dict[str, object]
    state: CommandState
    created_at: datetime
    created_by: str
    expires_at: datetime
    delivered_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result: dict[str, object] | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTokenRecord:
    token_id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    audit_id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, object] | None
    source: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SupportGrantRecord:
    """A support user's access to one gateway, for one scope, from *created_at* until
    *expires_at* (or until revoked, if sooner)."""

    grant_id: str
    gateway_id: str
    username: str
    scope: str
    reason: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.created_at <= now < self.expires_at

    def status(self, now: datetime) -> str:
        """``active``, ``revoked``, ``expired`` or (given ahead of its time) ``pending``."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return "active" if now >= self.created_at else "pending"
