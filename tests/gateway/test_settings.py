"""Tests for tether.gateway.settings: every setting is checked, nothing wrong is taken as meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.gateway.settings import (
    MAX_UPLOAD_BATCH,
    AgentSettingsError,
    check_cloud_url,
    check_log_options,
    check_proxy_url,
    load_agent_settings,
)


def _load(tmp_path: Path, text: str) -> object:
    (tmp_path / "agent.toml").write_text(text)
    return load_agent_settings(tmp_path)


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_agent_settings(tmp_path)
    assert settings.trust_env is True
    assert settings.upload_batch == 2000


def test_good_settings_are_taken(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(
        'cloud_url = "https://cloud.example:8443/"\n'
        'proxy = "http://user:pw@proxy.site:3128"\n'
        "trust_env = false\npoll_interval = 60\nspool_max_age = 3600.5\n"
        f"upload_batch = {MAX_UPLOAD_BATCH}\nreconnect_cap = 30\n"
    )
    settings = load_agent_settings(tmp_path)
    assert settings.cloud_url == "https://cloud.example:8443"
    assert settings.proxy == "http://user:pw@proxy.site:3128"
    assert settings.trust_env is False
    assert settings.poll_interval == 60.0
    assert settings.spool_max_age == 3600.5
    assert settings.upload_batch == MAX_UPLOAD_BATCH


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('trust_env = "no"', "'trust_env' must be true or false"),
        ("trust_env = 0", "'trust_env' must be true or false"),
        ("poll_interval = nan", "'poll_interval' must be a finite number"),
        ("poll_interval = inf", "'poll_interval' must be a finite number"),
        ("longpoll_wait = -inf", "'longpoll_wait' must be a finite number"),
        ("spool_max_age = true", "'spool_max_age' must be a finite number"),
        ("spool_max_age = nan", "'spool_max_age' must be a finite number"),
        ("spool_max_age = 0", "'spool_max_age' must be a positive"),
        ("reconnect_cap = inf", "'reconnect_cap' must be a finite number"),
        ("reconnect_cap = nan", "'reconnect_cap' must be a finite number"),
        ("reconnect_cap = 0.5", "'reconnect_cap' must be a number of seconds >= 1"),
        (f"upload_batch = {MAX_UPLOAD_BATCH + 1}", "'upload_batch' must be at most 20,000"),
        ("upload_window = 1000", "'upload_window' must be at most 64"),
        ("upload_batch = true", "'upload_batch' must be a positive integer"),
        ('cloud_url = "localhost:38517"', "is not a URL: give https://host[:port]"),
        ('cloud_url = "cloud.example"', "is not a URL"),
        ('cloud_url = "http://cloud.example"', "over https:// only"),
        ('cloud_url = "https://"', "names no host"),
        ('cloud_url = "https://cloud.example:99999"', "invalid port"),
        ('cloud_url = "https://cloud.example/api?x=1"', "give only https://host[:port]"),
        ('proxy = "not a url"', "is not a proxy URL: give http://host:port"),
        ('proxy = "proxy.site:3128"', "is not a proxy URL"),
        ('proxy = "socks5://proxy.site:1080"', "is not a proxy URL"),
        ('proxy = "https://proxy.site:3128"', "https:// proxies are not supported"),
        ('proxy = "http://proxy.site"', "give the proxy's port"),
        ('proxy = "http://:3128"', "names no host"),
        ("proxy = 3128", "'proxy' must be a string"),
        ("bogus = 1", "unknown settings ['bogus']"),
        ("poll_interval = ", "agent.toml"),
    ],
)
def test_wrong_settings_are_refused_naming_the_setting(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(AgentSettingsError, match=r"agent\.toml") as caught:
        _load(tmp_path, text + "\n")
    assert says in str(caught.value)


def test_a_refused_proxy_never_shows_its_password(tmp_path: Path) -> None:
    with pytest.raises(AgentSettingsError) as caught:
        _load(tmp_path, 'proxy = "ftp://user:s3cret@proxy.site:21"\n')
    assert "s3cret" not in str(caught.value)
    assert "user:***@proxy.site:21" in str(caught.value)


def test_an_unreadable_settings_file_is_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(AgentSettingsError, match=r"agent\.toml"):
        load_agent_settings(tmp_path)
    (tmp_path / "agent.toml").unlink()
    (tmp_path / "agent.toml").mkdir()
    with pytest.raises(AgentSettingsError, match=r"agent\.toml"):
        load_agent_settings(tmp_path)


def test_url_checks_normalise_and_refuse() -> None:
    assert check_cloud_url("https://h:1/") == "https://h:1"
    assert check_proxy_url("http://h:3128/") == "http://h:3128/"
    with pytest.raises(ValueError, match="https://host"):
        check_cloud_url("https://user@h")


def test_log_options_name_the_valid_ones() -> None:
    check_log_options("INFO", "json")
    with pytest.raises(ValueError, match="debug, info, warning, error, critical; got 'verbose'"):
        check_log_options("verbose", "text")
    with pytest.raises(ValueError, match="text, json; got 'xml'"):
        check_log_options("info", "xml")
