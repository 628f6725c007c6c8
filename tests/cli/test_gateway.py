"""``tether gateway run``/``enroll``: the agent's side alone, and the whole CLI for the rest."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.cli.stub import no_traceback, tether_on
from tests.support.cloudproc import create_token, running_cloud, tether_script
from tests.support.tmpfs import mounted_tmpfs
from typer.testing import CliRunner

from tether.cli import AGENT_COMMANDS, app

#: What an agent on a gateway never needs: the operator client's HTTP stack, the cloud, its
#: store, and the network checks (loaded only when a preflight runs, after failed links); nor,
#: until it enrolls or renews its certificate, the X.509 toolkit.
NOT_ON_THE_AGENT = (
    "cryptography",
    "httpx",
    "dns",
    "sqlalchemy",
    "alembic",
    "tether.cloud",
    "tether.netcheck.runner",
)

_PROBE = """
import json, sys
sys.argv = ["tether", *sys.argv[1:]]
from tether.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _tether(*args: str) -> dict[str, object]:
    """Run ``tether ARGS`` in a fresh interpreter: its exit code and the modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    out["stderr"] = done.stderr
    return out


def _modules(result: dict[str, object]) -> list[str]:
    modules = result["modules"]
    assert isinstance(modules, list)
    return [str(m) for m in modules]


_SERVICE_PROBE = """
import json, runpy, sys
sys.argv = ["tether.gateway.service", *sys.argv[1:]]
try:
    runpy.run_module("tether.gateway.service", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_the_agent_process_loads_the_agent_and_nothing_an_agent_does_not_need(
    tmp_path: Path,
) -> None:
    """What ``tether gateway run`` becomes: no command-line library (Typer validates its
    options with pydantic, ~9 MiB) stays in a process that runs for months."""
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE_PROBE, str(tmp_path / "gateway"), "info", "text"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2  # not enrolled: it got as far as loading the agent
    assert "enroll" in done.stderr
    modules = set(result["modules"])
    assert "tether.gateway.agent" in modules
    unwanted = (*NOT_ON_THE_AGENT, "typer", "pydantic", "click")
    assert [m for m in unwanted if m in modules] == []


def test_gateway_run_hands_over_and_says_what_is_missing(tmp_path: Path) -> None:
    """The ``tether`` command parses, then becomes the agent's process; its errors and exit
    codes are the command's."""
    done = subprocess.run(
        [str(tether_script()), "gateway", "run", "--data-dir", str(tmp_path / "gateway")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr
    assert "tether gateway enroll" in done.stderr


def test_gateway_run_refuses_a_bad_option_before_handing_over(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(tether_script()), "gateway", "run", "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "--no-such-option" in done.stderr


def test_other_commands_still_load_what_they_need(tmp_path: Path) -> None:
    result = _tether("gateways", "list", "--json")
    assert result["code"] != 0  # no TETHER_URL here: refused with a message, not a crash
    assert "httpx" in _modules(result)


@pytest.mark.parametrize("command", sorted(AGENT_COMMANDS))
def test_the_whole_application_still_has_every_gateway_command(command: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["gateway", "--help"])
    assert listed.exit_code == 0
    assert command in listed.output
    assert "revoke" in listed.output
    assert runner.invoke(app, ["gateway", command, "--help"]).exit_code == 0


def test_the_agent_side_alone_never_prints_locals_in_a_traceback() -> None:
    from tether.cli import gateway

    assert gateway.app.pretty_exceptions_show_locals is False


def test_a_failed_hand_over_says_so_and_leaves_the_agent_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.gateway import service

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    service.hand_over(tmp_path / "gateway", "info", "text")  # returns: nothing was replaced
    assert "the agent runs in this process" in capsys.readouterr().err


async def test_enroll_reads_the_code_from_stdin_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    """Never only on the command line, where every user of the machine can read it (ps)."""
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:

        async def code() -> str:
            return str((await create_token(api))["enrollment_code"])

        def data_dir(name: str) -> str:
            return str(tmp_path / name)

        on_stdin = await tether_on(
            cloud, "gateway", "enroll", "-", "--data-dir", data_dir("a"), stdin=await code() + "\n"
        )
        assert on_stdin.returncode == 0, on_stdin.stderr
        assert on_stdin.stdout.startswith("enrolled as ")

        secret = tmp_path / "code.txt"
        secret.write_text(await code())
        secret.chmod(0o644)
        shared = await tether_on(
            cloud, "gateway", "enroll", "--code-file", str(secret), "--data-dir", data_dir("b")
        )
        assert shared.returncode == 2
        assert "every user of this machine can read it" in shared.stderr
        secret.chmod(0o600)
        from_file = await tether_on(
            cloud, "gateway", "enroll", "--code-file", str(secret), "--data-dir", data_dir("b")
        )
        assert from_file.returncode == 0, from_file.stderr

        from_env = await tether_on(
            cloud,
            "gateway",
            "enroll",
            "--data-dir",
            data_dir("c"),
            TETHER_ENROLLMENT_CODE=await code(),
        )
        assert from_env.returncode == 0, from_env.stderr

        positional = await code()
        given = await tether_on(cloud, "gateway", "enroll", positional, "--data-dir", data_dir("d"))
        assert given.returncode == 0, given.stderr

        gateways = json.loads((await tether_on(cloud, "gateways", "list", "--json")).stdout)
        assert len(gateways) == 4

        for args, stdin in (
            (("gateway", "enroll", "-", "--code-file", str(secret)), None),
            (("gateway", "enroll", "-"), ""),
            (("gateway", "enroll", "--code-file", str(tmp_path / "missing")), None),
            (("gateway", "enroll"), None),
        ):
            refused = await tether_on(cloud, *args, "--data-dir", data_dir("e"), stdin=stdin)
            assert refused.returncode == 2, args
            assert refused.stderr.startswith("error: "), refused.stderr


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, timeout=60)


async def test_enroll_checks_all_it_can_before_the_one_time_code_is_spent(tmp_path: Path) -> None:
    """A read-only directory, a bad --url or an identity already there: refused (exit 2)
    before the cloud is contacted, so the same code still enrolls afterwards."""
    async with running_cloud(tmp_path / "cloud") as cloud, cloud.api() as api:
        code = str((await create_token(api))["enrollment_code"])

        async def enroll(data_dir: Path, *extra: str, secret: str = code) -> Any:
            done = await tether_on(
                cloud, "gateway", "enroll", "-", "--data-dir", str(data_dir), *extra, stdin=secret
            )
            assert no_traceback(done), done.stderr
            return done

        with mounted_tmpfs("1m") as where:
            _remount(where, "ro")
            try:
                read_only = await enroll(where / "gw")
            finally:
                _remount(where, "rw")
        assert read_only.returncode == 2
        assert f"cannot write in {where}" in read_only.stderr
        assert "the code was not used" in read_only.stderr

        gw = tmp_path / "site" / "gw"
        for url, says in (
            ("localhost:38517", "is not a URL: give https://host[:port]"),
            ("http://localhost:38517", "over https:// only"),
        ):
            bad = await enroll(gw, "--url", url)
            assert bad.returncode == 2
            assert says in bad.stderr
        assert not gw.exists()

        first = await enroll(gw)
        assert first.returncode == 0, first.stderr
        gateway_id = first.stdout.split()[2].rstrip(";")
        assert gateway_id.startswith("gw-")
        assert stat.S_IMODE(gw.stat().st_mode) == 0o700
        assert stat.S_IMODE((gw / "identity").stat().st_mode) == 0o700

        second = str((await create_token(api))["enrollment_code"])
        over = await enroll(gw, secret=second)
        assert over.returncode == 2
        assert f"already holds the identity of gateway {gateway_id}" in over.stderr
        assert "--force" in over.stderr
        forced = await enroll(gw, "--force", secret=second)  # the code was not spent either
        assert forced.returncode == 0, forced.stderr
        assert json.loads((gw / "identity" / "identity.json").read_text())["gateway_id"] not in (
            gateway_id,
            "",
        )


def test_gateway_run_refuses_an_unknown_log_level_before_handing_over(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(tether_script()),
            "gateway",
            "run",
            "--data-dir",
            str(tmp_path),
            "--log-level",
            "verbose",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "debug, info, warning, error, critical; got 'verbose'" in done.stderr
    assert "Traceback" not in done.stderr


def test_gateway_status_stays_on_the_agent_side(tmp_path: Path) -> None:
    """On a small gateway the status check loads no cloud or operator code."""
    result = _tether("gateway", "status", "--data-dir", str(tmp_path / "nothing"))
    assert result["code"] == 2, result["stderr"]
    modules = _modules(result)
    assert "tether.gateway.status" in modules
    assert [m for m in NOT_ON_THE_AGENT if m in modules] == []


@pytest.mark.parametrize("command", ["enroll", "run", "status"])
def test_data_dir_says_what_it_is(command: str) -> None:
    shown = CliRunner().invoke(app, ["gateway", command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "The agent's data directory: its identity, spool, agent.toml and status." in (
        shown.stdout
    )
