"""The cloud store: gateways, certificates, tokens, commands and audit, on SQLite or PostgreSQL.

store = await Store.open("sqlite+aiosqlite:///var/lib/tether/cloud.db")
...
await store.close()
"""

from __future__ import annotations

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
    TokenError,
    TokenExpired,
    TokenRevoked,
    TokenUnknown,
    UnknownRole,
)
from .notify import CHANNEL, CommandCallback, CommandListener
from .records import (
    ROLES,
    ApiTokenRecord,
    AuditRecord,
    CertificateRecord,
    CommandRecord,
    EnrollmentTokenRecord,
    GatewayRecord,
)
from .store import Store

__all__ = [
    "CHANNEL",
    "ROLES",
    "ApiTokenRecord",
    "ApiTokenUnknown",
    "AuditRecord",
    "CertificateExists",
    "CertificateRecord",
    "CertificateUnknown",
    "CommandCallback",
    "CommandContention",
    "CommandListener",
    "CommandNotFound",
    "CommandRecord",
    "EnrollmentTokenRecord",
    "GatewayExists",
    "GatewayRecord",
    "GatewayRevoked",
    "GatewayUnknown",
    "Store",
    "StoreError",
    "TokenAlreadyUsed",
    "TokenError",
    "TokenExpired",
    "TokenRevoked",
    "TokenUnknown",
    "UnknownRole",
]

# Telemetry tables live beside the core ones on the same metadata (and in migration r0002).
from . import accounts as accounts
from . import config as config
from . import health as health
from . import links as links
from . import telemetry as telemetry
