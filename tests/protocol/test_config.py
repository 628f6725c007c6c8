"""The checks of configuration sections that the cloud runs before storing one and the agent
runs before applying it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tether.protocol.config import (
    ConfigInvalid,
    agent_section,
    check_instance_name,
    logs_section,
)


@pytest.mark.parametrize(
    ("data", "interval"),
    [({"health_interval": 5}, 5.0), ({"health_interval": 86400.0}, 86400.0), ({}, 60.0)],
)
def test_an_agent_section_sets_the_health_interval(data: dict[str, Any], interval: float) -> None:
    assert agent_section(data, default_interval=60.0) == interval


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"health_interval": 4.9}, "within 5..86400 seconds"),
        ({"health_interval": math.inf}, "within 5..86400 seconds"),
        ({"health_interval": math.nan}, "within 5..86400 seconds"),
        ({"health_interval": "60"}, "must be a number of seconds"),
        ({"health_interval": True}, "must be a number of seconds"),
        ({"health_intervall": 60}, "unknown setting 'health_intervall' (known: health_interval)"),
    ],
)
def test_a_bad_agent_section_is_refused_saying_why(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigInvalid, match=words.replace("(", r"\(").replace(")", r"\)")):
        agent_section(data, default_interval=60.0)


def test_a_logs_section_names_a_level_in_any_case_and_its_sources() -> None:
    assert logs_section({"level": "WARNING", "sources": ["agent", "journald:ssh.service"]}) == (
        "warning",
        ["agent", "journald:ssh.service"],
    )
    assert logs_section({}) == ("info", ["agent"])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"level": "loud"}, "log level must be one of debug, info"),
        ({"level": 3}, "log level must be one of"),
        ({"sources": "agent"}, "must be a list of strings"),
        ({"sources": ["journaldx"]}, "unknown log source 'journaldx'"),
        ({"lvl": "info"}, "unknown setting 'lvl'"),
    ],
)
def test_a_bad_logs_section_is_refused_saying_why(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigInvalid, match=words):
        logs_section(data)


@pytest.mark.parametrize("name", ["a", "meter-1", "B.2_x", "9" * 63])
def test_an_instance_name_of_letters_digits_dots_dashes_and_underscores_is_taken(
    name: str,
) -> None:
    check_instance_name(name)


@pytest.mark.parametrize("name", ["", "-meter", ".hidden", "bad name!", "a/b", "é", "9" * 64])
def test_any_other_instance_name_is_refused_saying_the_rule(name: str) -> None:
    with pytest.raises(ConfigInvalid, match="name must be letters, digits") as refused:
        check_instance_name(name)
    assert repr(name) in str(refused.value)
