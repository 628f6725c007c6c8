"""Fixtures of the end-to-end tests: a real cloud on loopback, its operator API, real agents."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.cloudproc import (
    Cloud,
    RunningAgent,
    StartAgent,
    create_token,
    running_agent,
    running_cloud,
)


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


@pytest.fixture
async def start_agent(tmp_path: Path, api: httpx.AsyncClient) -> AsyncIterator[StartAgent]:
    """``await start_agent("name")``: a token, an enrolled gateway, its agent running and linked."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, *, linked: bool = True, **overrides: Any) -> RunningAgent:
            code = (await create_token(api, name=name))["enrollment_code"]
            running = await stack.enter_async_context(
                running_agent(tmp_path / name, code=code, **overrides)
            )
            if linked:
                await running.wait_linked()
            return running

        yield start
