"""Support grants' rules and errors: the scopes a grant may name, what a reason may hold.

A customer's admin or operator gives a support user a grant for one gateway: a scope (what it
lets them do there), a reason, and an end time, after which it no longer counts without anyone
acting. It may be revoked before then. The table is ``support_grants``
(:mod:`tether.cloud.store.models`); the store's methods (``create_support_grant``,
``list_support_grants``, ``active_support_grant``, ``revoke_support_grant``) check what they are
given with the functions here, so no grant the rules refuse is ever stored.

Errors::

    StoreError
     └── GrantError
          ├── GrantInvalid      a scope, reason, user or end the rules refuse (a ValueError)
          ├── GrantUnknown      no grant has this id
          └── GrantEnded        the grant no longer counts: it cannot be revoked
               ├── GrantRevoked     someone revoked it
               └── GrantExpired     its time ran out
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from .errors import StoreError
from .records import SupportGrantRecord

__all__ = [
    "GRANT_HOURS_MAX",
    "GRANT_SCOPES",
    "REASON_MAX",
    "GrantEnded",
    "GrantError",
    "GrantExpired",
    "GrantInvalid",
    "GrantRevoked",
    "GrantUnknown",
    "check_reason",
    "check_scope",
    "check_username",
]

#: What a grant may let a support user do on its gateway. ``diagnose``: send and cancel the
#: diagnostic commands (:data:`tether.protocol.commands.DIAGNOSTIC_COMMAND_KINDS`).
GRANT_SCOPES: Final[tuple[str, ...]] = ("diagnose",)
#: The longest reason a grant keeps, in characters.
REASON_MAX: Final = 500
#: The longest a grant may last: a week.
GRANT_HOURS_MAX: Final = 168
#: The longest username (the ``users`` table's own width).
_USERNAME_MAX: Final = 64


class GrantError(StoreError):
    """Base class of the support grants' errors; the message is safe to show to the person."""


class GrantInvalid(GrantError, ValueError):
    """A grant the rules refuse (the message says which rule)."""


class GrantUnknown(GrantError):
    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no support grant {grant_id[:80]!r}")
        self.grant_id = grant_id


class GrantEnded(GrantError):
    """The grant no longer counts; *grant* is how it stands."""

    def __init__(self, message: str, grant: SupportGrantRecord) -> None:
        super().__init__(message)
        self.grant = grant


class GrantRevoked(GrantEnded):
    def __init__(self, grant: SupportGrantRecord) -> None:
        at = _iso(grant.revoked_at) if grant.revoked_at is not None else "?"
        super().__init__(
            f"support grant {grant.grant_id} was already revoked at {at} by {grant.revoked_by}",
            grant,
        )


class GrantExpired(GrantEnded):
    def __init__(self, grant: SupportGrantRecord) -> None:
        super().__init__(
            f"support grant {grant.grant_id} already expired at {_iso(grant.expires_at)}", grant
        )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_scope(scope: str) -> str:
    """*scope* if a grant may name it, else :class:`GrantInvalid`."""
    if scope not in GRANT_SCOPES:
        known = ", ".join(GRANT_SCOPES)
        raise GrantInvalid(f"scope {scope[:40]!r} is not one a grant may name ({known})")
    return scope


def check_reason(reason: str) -> str:
    """*reason* without surrounding spaces, if it is printable text of 1 to
    :data:`REASON_MAX` characters, else :class:`GrantInvalid`."""
    text = reason.strip()
    if not text:
        raise GrantInvalid("reason must say why support needs the gateway (it may not be empty)")
    if len(text) > REASON_MAX:
        raise GrantInvalid(f"reason must be at most {REASON_MAX} characters, not {len(text)}")
    if not text.isprintable():
        raise GrantInvalid("reason must be one line of text, without control characters")
    return text


def check_username(username: str) -> str:
    """*username* if a grant may name it (the width of a username), else :class:`GrantInvalid`."""
    if not username or len(username) > _USERNAME_MAX:
        raise GrantInvalid(f"a grant is for a username of 1 to {_USERNAME_MAX} characters")
    return username
