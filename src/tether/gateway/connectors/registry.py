"""The connector registry: connector names mapped to their manifest and factory, explicitly.

Nothing registers itself by being imported. The agent builds a registry with
:func:`builtin_registry` and adds its own connectors with :meth:`ConnectorRegistry.register`;
registering a name twice is an error, never a silent replacement.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic

from tether.gateway.connectors.base import C, ConnectorFactory, ConnectorManifest

__all__ = [
    "ConnectorRegistry",
    "DuplicateConnector",
    "Registration",
    "RegistryError",
    "UnknownConnector",
    "builtin_registry",
]


class RegistryError(Exception):
    """A registry lookup or registration went wrong."""


class DuplicateConnector(RegistryError):
    """A connector of that name is already registered."""


class UnknownConnector(RegistryError):
    """No connector of that name is registered."""


@dataclass(frozen=True, slots=True)
class Registration(Generic[C]):
    manifest: ConnectorManifest[C]
    factory: ConnectorFactory[C]


class ConnectorRegistry:
    """Known connectors by name."""

    def __init__(self) -> None:
        self._entries: dict[str, Registration[Any]] = {}

    def register(self, manifest: ConnectorManifest[C], factory: ConnectorFactory[C]) -> None:
        """Add a connector; raises :class:`DuplicateConnector` if the name is taken."""
        existing = self._entries.get(manifest.name)
        if existing is not None:
            raise DuplicateConnector(
                f"connector {manifest.name!r} is already registered"
                f" (version {existing.manifest.version}); refusing to replace it"
            )
        self._entries[manifest.name] = Registration(manifest, factory)

    def get(self, name: str) -> Registration[Any]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownConnector(f"no connector named {name!r} (known: {known})") from None

    def manifests(self) -> list[ConnectorManifest[Any]]:
        return [entry.manifest for _, entry in sorted(self._entries.items())]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def builtin_registry() -> ConnectorRegistry:
    """A fresh registry holding the connectors shipped with tether."""
    from tether.gateway.connectors.simulated import MANIFEST, SimulatedBuilding

    registry = ConnectorRegistry()
    registry.register(MANIFEST, SimulatedBuilding)
    return registry
