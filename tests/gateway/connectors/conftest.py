"""Fixtures for connector tests: a real spool in a temporary directory and a driven clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.connectors import Lab, ManualClock

from tether.gateway.spool import AsyncSpool


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[AsyncSpool]:
    s = await AsyncSpool.open(tmp_path / "spool.db", max_bytes=1 << 30, max_age=1e9)
    yield s
    await s.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def lab() -> Lab:
    return Lab()
