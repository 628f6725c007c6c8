"""``tether demo``'s hints name a ``tether`` that runs from where the reader is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tether.cli.demo import tether_command

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
