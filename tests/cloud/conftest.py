"""Fixtures of the cloud's tests: a real cloud on loopback and its operator API.

``cloud`` keeps its state in SQLite. A module whose tests must hold on both stores says so once::

    pytestmark = pytest.mark.parametrize("cloud", STORES, indirect=True)

and each test runs on SQLite and on a new database of a real PostgreSQL server. A module that
needs another cloud still (changed timeouts, say) defines its own ``cloud`` fixture, which takes
the place of this one there; ``api`` then talks to that one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.cloudproc import Cloud, running_cloud
from tests.support.postgres import PostgresServer, postgres_server

__all__ = ["STORES", "api", "cloud", "postgres_server"]

#: The stores a cloud can keep its state in, for ``parametrize("cloud", STORES, indirect=True)``.
STORES = ("sqlite", "postgresql")


@pytest.fixture
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud in this event loop, on a free 127.0.0.1 port, with its state in tmp_path (SQLite),
    or in a new PostgreSQL database when parametrized with ``"postgresql"``."""
    overrides: dict[str, Any] = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        overrides["database_url"] = await server.create_database()
    async with running_cloud(tmp_path / "cloud", **overrides) as running:
        yield running


@pytest.fixture
async def api(cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """The operator API with the bootstrap admin token, verified against the platform CA."""
    async with cloud.api() as client:
        yield client
