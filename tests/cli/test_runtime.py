"""``tether.cli.runtime``: the logging the long-running commands set up."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.stub import clean_env, invoke

from tether.cli.runtime import JsonFormatter, setup_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Give the root logger back as it was (setup_logging replaces its handlers and level)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--log-level", "loud", "--log-level takes one of debug, info, warning, error, critical"),
        ("--log-format", "xml", "--log-format takes one of text, json; got 'xml'"),
    ],
)
def test_cloud_serve_refuses_an_unknown_log_option_before_anything_starts(
    tmp_path: Path, option: str, value: str, said: str, root_logging: None
) -> None:
    data_dir = tmp_path / "cloud"
    # a settings file the cloud would refuse next: were the option let through, it would not serve
    refused = tmp_path / "cloud.toml"
    refused.write_text("no_such_setting = 1\n")
    args = ("--config", str(refused), "--data-dir", str(data_dir), option, value)
    done = invoke("cloud", "serve", *args, env=clean_env())
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {said}"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not data_dir.exists()


def test_level_and_format_are_read_in_any_case(root_logging: None) -> None:
    setup_logging("WARNING", "JSON")
    root = logging.getLogger()
    assert root.level == logging.WARNING
    (handler,) = root.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    record = logging.LogRecord("tether.x", logging.WARNING, __file__, 1, "hello", None, None)
    assert json.loads(handler.format(record))["msg"] == "hello"
