"""``tether demo``'s hints name a ``tether`` that runs from where the reader is, and work."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import pytest
from tests.cli.stub import clean_env, tether
from tests.support.cloudproc import running_cloud
from typer.testing import CliRunner

from tether.cli import app
from tether.cli.demo import hints, tether_command

SCRIPT = Path(sys.executable).parent / "tether"

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="no tether script beside python")


def test_below_the_working_directory_it_is_relative(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    above = SCRIPT.absolute().parent.parent.parent
    shown = tether_command(above)
    assert not Path(shown).is_absolute()
    assert (above / shown).samefile(SCRIPT)


def test_elsewhere_it_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    shown = tether_command(tmp_path)
    assert Path(shown).is_absolute()
    assert Path(shown).samefile(SCRIPT)


def test_on_the_path_it_is_plain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(SCRIPT.parent))
    assert tether_command(tmp_path) == "tether"


async def test_the_network_hint_reads_the_demo_clouds_own_manifest(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        lines = hints("tether", tmp_path / "env.sh", "gw-1", cloud.url, cloud.ca_path)
        (hint,) = [line for line in lines if " net docs" in line]
        args = shlex.split(hint)
        assert args[0] == "tether"
        done = await asyncio.to_thread(tether, *args[1:], env=clean_env())
    assert done.returncode == 0, done.stderr
    assert f"TCP {cloud.port}" in done.stdout
    assert "tether.example.com" not in done.stdout


def test_data_dir_says_what_it_holds_and_that_it_is_emptied() -> None:
    shown = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "Where the cloud, the gateways and env.sh are kept (emptied first unless --keep)." in (
        shown.stdout
    )
