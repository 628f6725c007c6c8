"""Fixtures of the console tests: a running ``tether demo`` (one per module) and Debian's
Chromium driven by Playwright (see :mod:`tests.support.browser`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from tests.support.browser import ARTIFACTS, Demo, chromium_launch, running_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("demo")) as running:
        yield running


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, demo: Demo) -> Iterator[Browser]:
    launched = playwright.chromium.launch(**chromium_launch(demo))
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots are kept (``test-artifacts/console``, ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
