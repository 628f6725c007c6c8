"""Errors raised by the cloud store, each naming what was wrong and whose it was.

    StoreError
     ├── TokenError
     │    ├── TokenUnknown          no enrollment token has this secret
     │    ├── TokenExpired          the token's lifetime ended before it was used
     │    └── TokenAlreadyUsed      the token was consumed (single use)
     │         └── TokenRevoked     an operator withdrew it before use
     ├── GatewayUnknown             no gateway has this id
     ├── GatewayExists              a gateway with this id is already registered
     ├── GatewayRevoked             the gateway was revoked; it may not get commands or certificates
     ├── CertificateExists          a certificate with this serial is already recorded
     ├── CertificateUnknown         no certificate has this serial
     ├── CommandNotFound            no such command (for this gateway)
     ├── CommandContention          a command changed under us too many times in a row
     ├── ApiTokenUnknown            no operator API token has this id
     └── UnknownRole                not one of the operator roles

Illegal command transitions raise :class:`tether.protocol.commands.IllegalTransition`, the
lifecycle table's own error.
"""

from __future__ import annotations

__all__ = [
    "ApiTokenUnknown",
    "CertificateExists",
    "CertificateUnknown",
    "CommandContention",
    "CommandNotFound",
    "GatewayExists",
    "GatewayRevoked",
    "GatewayUnknown",
    "StoreError",
    "TokenAlreadyUsed",
    "TokenError",
    "TokenExpired",
    "TokenRevoked",
    "TokenUnknown",
    "UnknownRole",
]


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class TokenError(StoreError):
    """An enrollment token cannot be used."""


class TokenUnknown(TokenError):
    def __init__(self) -> None:
        super().__init__("enrollment token is not known (mistyped, or never issued)")


class TokenExpired(TokenError):
    def __init__(self, token_id: str, expires_at: object) -> None:
        super().__init__(f"enrollment token {token_id} expired at {expires_at}; ask for a new one")
        self.token_id = token_id


class TokenAlreadyUsed(TokenError):
    def __init__(self, token_id: str, used_at: object, message: str | None = None) -> None:
        super().__init__(
            message
            or f"enrollment token {token_id} was already used at {used_at}; tokens are single use"
        )
        self.token_id = token_id


class TokenRevoked(TokenAlreadyUsed):
    """Revoking a token spends its single use, so callers treating "used" as final are right."""

    def __init__(self, token_id: str, revoked_at: object) -> None:
        super().__init__(
            token_id, revoked_at, f"enrollment token {token_id} was revoked at {revoked_at}"
        )


class GatewayUnknown(StoreError):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"gateway {gateway_id!r} is not registered")
        self.gateway_id = gateway_id


class GatewayExists(StoreError):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"gateway {gateway_id!r} is already registered")
        self.gateway_id = gateway_id


class GatewayRevoked(StoreError):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"gateway {gateway_id!r} is revoked")
        self.gateway_id = gateway_id


class CertificateExists(StoreError):
    def __init__(self, serial_hex: str) -> None:
        super().__init__(f"certificate serial {serial_hex} is already recorded")
        self.serial_hex = serial_hex


class CertificateUnknown(StoreError):
    def __init__(self, serial_hex: str) -> None:
        super().__init__(f"certificate serial {serial_hex} is not known")
        self.serial_hex = serial_hex


class CommandNotFound(StoreError):
    def __init__(self, command_id: str) -> None:
        super().__init__(f"command {command_id!r} not found")
        self.command_id = command_id


class CommandContention(StoreError):
    def __init__(self, command_id: str, attempts: int) -> None:
        super().__init__(
            f"command {command_id!r} changed concurrently {attempts} times in a row; giving up"
        )
        self.command_id = command_id


class ApiTokenUnknown(StoreError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"API token {token_id!r} not found")
        self.token_id = token_id


class UnknownRole(StoreError):
    def __init__(self, role: str, roles: tuple[str, ...]) -> None:
        super().__init__(f"unknown role {role!r}; expected one of {', '.join(roles)}")
        self.role = role
