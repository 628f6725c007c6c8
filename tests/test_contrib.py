"""The systemd units in contrib/systemd: accepted by systemd, hardened, running commands the
``tether`` command line accepts, and restarting the agent only on exit codes a restart can help.

The units are read with configparser (a unit file is close enough to INI for the keys checked
here) and, where ``systemd-analyze`` is installed, verified and scored by systemd itself.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer

from tests.support.cloudproc import tether_script
from tether.cli import build_app
from tether.gateway.service import EXIT_NOT_READY, EXIT_STOPPED

UNITS = Path(__file__).resolve().parents[1] / "contrib" / "systemd"
CLOUD = "tether-cloud.service"
GATEWAY = "tether-gateway.service"
#: systemd-analyze security's score (0 best, 10 worst) above which a unit is not "OK".
MAX_EXPOSURE = 3.0


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#", ";")
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((UNITS / name).read_text(), source=name)  # a repeated key is an error
    return parser


def service(name: str) -> configparser.SectionProxy:
    return read_unit(name)["Service"]


def exec_start(name: str) -> list[str]:
    return shlex.split(service(name)["ExecStart"])


def data_dir(name: str) -> str:
    argv = exec_start(name)
    return argv[argv.index("--data-dir") + 1]


def test_the_units_are_the_two_services() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == [CLOUD, GATEWAY]


@pytest.mark.parametrize("name", [CLOUD, GATEWAY])
def test_each_unit_runs_as_its_own_user_in_a_read_only_system(name: str) -> None:
    unit = service(name)
    assert unit["Type"] in ("exec", "simple")  # the agent execs itself: same PID
    assert unit["User"] == unit["Group"] == "tether"
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict"
    assert unit["ProtectHome"] == "yes"
    assert unit["PrivateTmp"] == "yes"
    assert unit["UMask"] == "0077"
    assert unit["SystemCallFilter"] == "@system-service"
    assert "AF_PACKET" not in unit["RestrictAddressFamilies"]
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups"):
        assert unit[key] == "yes", key
    # The data directory is the one place it may write, made for it with mode 0700.
    assert unit["ReadWritePaths"].split() == [data_dir(name)]
    assert f"/var/lib/{unit['StateDirectory']}" == data_dir(name)
    assert unit["StateDirectoryMode"] == "0700"
    assert read_unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_the_cloud_may_bind_443_and_do_nothing_else_privileged() -> None:
    unit = service(CLOUD)
    assert unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert unit["Restart"] == "on-failure"
    assert unit["RestartPreventExitStatus"].split() == ["2"]  # bad settings
    assert int(unit["LimitNOFILE"]) >= 100_000  # a descriptor per link


def test_the_agent_has_no_capability_and_restarts_only_when_a_restart_can_help() -> None:
    unit = service(GATEWAY)
    assert unit["CapabilityBoundingSet"] == ""
    assert unit["AmbientCapabilities"] == ""
    # 0 (stopped by a signal) is a success, not restarted by on-failure; 2 (not enrolled, bad
    # settings) and 3 (its gateway was revoked) must not be retried; anything else is.
    assert unit["Restart"] == "on-failure"
    prevented = {int(code) for code in unit["RestartPreventExitStatus"].split()}
    assert prevented == {EXIT_NOT_READY, EXIT_STOPPED} == {2, 3}


def _parse(argv: list[str]) -> typer.Context:
    """Parse *argv* (after the program) as the ``tether`` command line does, without running."""
    command: Any = typer.main.get_command(build_app())
    context: typer.Context | None = None
    name = "tether"
    args = list(argv)
    while hasattr(command, "get_command"):  # a group: the next word names a command of it
        context = typer.Context(command, info_name=name, parent=context)
        name = args.pop(0)
        command = command.get_command(context, name)
        assert command is not None, f"no command {name!r}"
    parsed: typer.Context = command.make_context(name, args, parent=context)
    return parsed


@pytest.mark.parametrize(
    ("name", "words"), [(CLOUD, ["cloud", "serve"]), (GATEWAY, ["gateway", "run"])]
)
def test_each_unit_runs_a_command_line_tether_accepts(name: str, words: list[str]) -> None:
    argv = exec_start(name)
    assert argv[0] == "/opt/tether/bin/tether"
    assert argv[1:3] == words
    context = _parse(argv[1:])  # raises a UsageError on an option tether does not know
    assert str(context.params["data_dir"]) == data_dir(name)


def _installed_copy(name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart's program replaced by this tether (systemd checks it exists)."""
    text = (UNITS / name).read_text().replace("/opt/tether/bin/tether", str(tether_script()))
    copy = tmp_path / name
    copy.write_text(text)
    return copy


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


@pytest.mark.parametrize("name", [CLOUD, GATEWAY])
def test_systemd_accepts_each_unit_without_a_warning(name: str, tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    copy = _installed_copy(name, tmp_path)
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = [
        line for line in (done.stdout + done.stderr).splitlines() if name in line or "/" in line
    ]
    assert done.returncode == 0, done.stderr
    assert said == []  # an unknown key or a bad value is only a warning to systemd


@pytest.mark.parametrize("name", [CLOUD, GATEWAY])
def test_systemd_scores_each_unit_as_well_confined(name: str, tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    copy = _installed_copy(name, tmp_path)
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    if done.returncode != 0 and score is None:
        pytest.skip(f"this systemd-analyze cannot score a unit file: {done.stderr.strip()[:200]}")
    assert score is not None, done.stdout
    assert float(score.group(1)) <= MAX_EXPOSURE, done.stdout
