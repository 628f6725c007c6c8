"""cloud.toml: the [link] table's settings are read, checked, and a misspelt one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.cloud.settings import CloudSettings, SettingsError, load_settings


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
