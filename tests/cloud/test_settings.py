"""cloud.toml: the [link] table's settings are read, checked, and a misspelt one is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tether.cloud.settings import (
    CloudSettings,
    SettingsError,
    connections_per_worker,
    load_settings,
)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    return path


def test_link_settings_are_read_from_their_table(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[link]\nheartbeat_interval = 20\nlast_seen_interval = 60\n")
    settings = load_settings(path)
    assert (settings.heartbeat_interval, settings.last_seen_interval) == (20, 60)


def test_defaults_without_a_link_table(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, 'hostname = "cloud.example"\n'))
    assert settings.heartbeat_interval == CloudSettings().heartbeat_interval == 30.0
    assert settings.last_seen_interval == CloudSettings().last_seen_interval == 300.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[link]\nheartbeat_intervall = 20\n",
            "unknown setting 'heartbeat_intervall' in",
        ),
        ("[link]\nlast_seen_interval = 0\n", "'last_seen_interval': expected 1 to 86400"),
        ("[link]\nlast_seen_interval = 100000\n", "'last_seen_interval': expected 1 to 86400"),
        ("[link]\nlast_seen_interval = 'often'\n", "'last_seen_interval': expected a number"),
        ("[link]\nheartbeat_interval = 0.5\n", "'heartbeat_interval': expected at least 1"),
        ("link = 5\n", "\\[link\\] must be a table"),
    ],
)
def test_bad_link_settings_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(_toml(tmp_path, text))


def test_database_connections_are_shared_among_the_workers(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, "database_connections = 40\nworkers = 4\n"))
    assert connections_per_worker(settings, 4) == 10
    assert connections_per_worker(settings, 3) == 13  # what is left over is not used
    assert connections_per_worker(CloudSettings(), 6) == 15  # the default: 90


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "database_connections = 12\nworkers = 3\n",
            "12 gives each of 3 worker processes 4 PostgreSQL connections; each needs at least 5:"
            " set it to 15 or more",
        ),
        ("database_connections = 4\n", "gives each of 1 worker processes 4"),
        ("database_connections = 20.5\n", "'database_connections': expected a whole number"),
        ("database_connections = 'many'\n", "'database_connections': expected a number"),
        ("ingest_queue_observations = 500\n", "'ingest_queue_observations': expected a whole"),
        ("ingest_queue_observations = 5e6\n", "'ingest_queue_observations': expected a whole"),
    ],
)
def test_too_few_database_connections_are_refused_with_what_is_needed(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(_toml(tmp_path, text))


def test_the_ingest_queue_bound_is_read(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, "ingest_queue_observations = 250000\n"))
    assert settings.ingest_queue_observations == 250_000
    assert CloudSettings().ingest_queue_observations == 1_000_000
