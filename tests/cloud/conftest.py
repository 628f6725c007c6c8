"""Fixtures of the cloud's tests: a real cloud on loopback and its operator API.

A module that needs another cloud (on PostgreSQL too, or with changed timeouts) defines its own
``cloud`` fixture, which takes the place of this one there; ``api`` then talks to that one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from tests.support.cloudproc import Cloud, running_cloud


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud in this event loop, on a free 127.0.0.1 port, with its state in tmp_path."""
    async with running_cloud(tmp_path / "cloud") as running:
        yield running


@pytest.fixture
async def api(cloud: Cloud) -> AsyncIterator[httpx.AsyncClient]:
    """The operator API with the bootstrap admin token, verified against the platform CA."""
    async with cloud.api() as client:
        yield client
