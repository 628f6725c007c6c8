"""Fixtures of the operator CLI's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.cli.stub import Stub, serving_stub


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serving_stub() as running:
        yield running
