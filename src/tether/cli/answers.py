"""The cloud API's answers as the operator commands read them, checked when decoded.

Each struct names only the fields a command shows (the cloud may send more; they are ignored),
typed as the command uses them: a command reads a decoded answer and never indexes raw JSON, so
an answer of another shape is refused where it is decoded (:func:`tether.cli.client.decode`),
and an error in a command's own code is not mistaken for one in the cloud's answer.
``--json`` prints the cloud's answer as it came, not these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Command",
    "ConfigSection",
    "ConfigStored",
    "EnrollmentToken",
    "Gateway",
    "GatewayDetail",
    "LogRecord",
    "NewApiToken",
    "NewEnrollmentToken",
    "NewPassword",
    "NewUser",
    "Observation",
    "Point",
    "Preflight",
    "PreflightResult",
    "SupportGrant",
    "TierChange",
    "User",
]

#: A point's value as JSON carries it.
Value = int | float | str | bool | None


class Gateway(msgspec.Struct):
    id: str
    name: str
    revoked: bool
    linked: bool
    tier: str | None
    last_seen: datetime | None
    agent_version: str | None
    peer: str | None
    cert_not_after: datetime | None
    created_at: datetime

    @property
    def state(self) -> str:
        return "revoked" if self.revoked else ("linked" if self.linked else "offline")


class TierChange(msgspec.Struct):
    at: datetime
    tier: str
    reason: str | None


class PreflightResult(msgspec.Struct):
    status: str
    check: str
    target: str
    finding: str
    fix: str | None = None


class PreflightReport(msgspec.Struct):
    results: list[PreflightResult] = []


class Preflight(msgspec.Struct):
    """The last preflight report the gateway sent."""

    status: str
    report: PreflightReport


class GatewayDetail(msgspec.Struct):
    gateway: Gateway
    tier_reason: str | None
    tier_since: datetime | None
    tier_history: list[TierChange]
    preflight: Preflight | None = None


class Command(msgspec.Struct):
    id: str
    gateway_id: str
    kind: str
    state: str
    created_at: datetime
    created_by: str
    error: str | None = None
    result: Any = None


class NewEnrollmentToken(msgspec.Struct):
    token_id: str
    expires_at: datetime
    enrollment_code: str


class EnrollmentToken(msgspec.Struct):
    token_id: str
    name: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None = None


class Point(msgspec.Struct):
    point_id: str
    name: str
    unit: str
    last_ts: float | None
    last_value: Value


class Observation(msgspec.Struct):
    point_id: str
    ts: float
    value: Value
    quality: str


class ConfigStored(msgspec.Struct):
    version: int


class ConfigSection(msgspec.Struct):
    section: str
    version: int
    applied_version: int | None
    applied_error: str | None
    updated_at: datetime


class LogRecord(msgspec.Struct):
    ts: float
    level: str
    source: str
    message: str


class User(msgspec.Struct):
    """An operator account."""

    username: str
    role: str
    disabled: bool
    last_login_at: datetime | None
    created_at: datetime
    created_by: str


class NewUser(msgspec.Struct):
    user: User
    password: str | None = None  # generated, shown once; none when the caller gave one


class NewPassword(msgspec.Struct):
    password: str | None = None  # generated, shown once; none when the caller gave one


class ApiToken(msgspec.Struct):
    """A user's API token (never its secret)."""

    token_id: str
    label: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewApiToken(msgspec.Struct):
    token: ApiToken
    secret: str


class AuditEntry(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    source: str | None


class SupportGrant(msgspec.Struct):
    """A support user's access to one gateway, for one scope, until a time."""

    id: str
    gateway_id: str
    user: str
    scope: str
    reason: str
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    status: str
    revoked_by: str | None = None
