"""Click's usage errors: one JSON object on stderr when ``--json`` is on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.stub import Stub, clean_env, invoke, no_traceback, tether

from tether.cli.usage import json_asked

#: Command lines click refuses before any command runs, and what its message says.
_REFUSED = (
    (("command", "list", "--json", "--limit", "0"), "Invalid value for '--limit'"),
    (("command", "list", "--limit", "x", "--json"), "Invalid value for '--limit'"),
    (("gateways", "show", "--json"), "Missing argument"),
    (("gateways", "list", "--json", "--bogus"), "No such option: --bogus"),
    (("command", "lst", "--json"), "No such command 'lst'"),
    (("net", "check", "--json", "--timeout", "soon"), "Invalid value for '--timeout'"),
)


def test_usage_errors_with_json_are_one_json_object_on_stderr_with_exit_2(stub: Stub) -> None:
    for args, said in _REFUSED:
        done = invoke(*args, env=stub.env())
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == "", args
        error = json.loads(done.stderr)
        assert error["status"] is None, args
        assert said in error["error"], (args, error)
        assert done.stderr.count("\n") == 1, args
    assert stub.seen == []  # refused before any request


def test_usage_errors_without_json_stay_clicks_own_text(stub: Stub) -> None:
    for args, said in _REFUSED:
        plain = [a for a in args if a != "--json"]
        done = invoke(*plain, env=stub.env())
        assert done.returncode == 2, (plain, done.stderr)
        assert said in done.stderr, plain
        assert "Usage:" in done.stderr, plain
        assert not done.stderr.startswith("{"), plain


def test_the_installed_command_says_usage_errors_as_json_too() -> None:
    env = clean_env(TETHER_URL="http://127.0.0.1:1", TETHER_TOKEN="tt_x")
    done = tether("command", "list", "--json", "--limit", "0", env=env)
    assert done.returncode == 2
    assert "--limit" in json.loads(done.stderr)["error"]
    assert no_traceback(done)
    done = tether("command", "list", "--limit", "0", env=env)
    assert done.returncode == 2
    assert "Usage:" in done.stderr


def test_json_after_a_double_dash_is_an_argument_not_the_option() -> None:
    assert json_asked(["command", "list", "--json"])
    assert not json_asked(["command", "show", "--", "--json"])
    assert not json_asked(["command", "list", "--jsonx"])
    done = invoke("command", "show", "--", "--json", "extra", env=clean_env())
    assert done.returncode == 2
    assert "Usage:" in done.stderr


def test_help_with_json_exits_0(stub: Stub) -> None:
    done = invoke("command", "list", "--json", "--help", env=stub.env())
    assert done.returncode == 0
    assert "Usage:" in done.stdout
    assert done.stderr == ""


def test_the_net_commands_own_errors_follow_json_too(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    done = invoke("net", "diff", missing, "tether", "--json", env=clean_env())
    assert done.returncode == 1
    assert missing in json.loads(done.stderr)["error"]
    done = invoke("net", "check", "--json", "-m", missing, env=clean_env())
    assert done.returncode == 3  # the check could not run
    assert json.loads(done.stderr)["status"] is None
    done = invoke("net", "diff", missing, "tether", env=clean_env())  # the mode is per command line
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {missing}")


def test_the_top_help_groups_commands_by_who_uses_them() -> None:
    from typer.testing import CliRunner

    from tether.cli import build_app

    shown = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0
    text = shown.output
    panels = ["Run tether", "Operate the fleet", "Site network", "Accounts and audit"]
    at = [text.index(panel) for panel in panels]
    assert at == sorted(at)
    assert text.index("demo") < text.index("Operate the fleet") < text.index("support")
