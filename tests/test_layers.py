"""The dependency direction of DESIGN.md, checked on the source: which package may import which.

Every module under ``src/tether`` is parsed (never imported); every import counts, at module
level, inside functions, under ``TYPE_CHECKING``, relative ones, and ``importlib.import_module``
or ``__import__`` calls with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether

SRC = Path(tether.__file__).resolve().parent

#: Package → the packages it must never import (each also covers their submodules).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "tether.cloud": ("tether.gateway",),
    "tether.gateway": ("tether.cloud",),
    "tether.protocol": ("tether.cloud", "tether.gateway", "tether.cli"),
    "tether.netreq": ("tether.cloud", "tether.gateway", "tether.cli"),
    "tether.pki": ("tether.cloud", "tether.gateway", "tether.cli"),
    "tether.netcheck": ("tether.cli", "tether.cloud"),
}

#: Violations tolerated for now, as (file relative to src/tether, imported module), each with a
#: comment saying why and what would remove it. Empty: keep it so.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imported_modules(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in *source*, the code of *module*."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            yield node.lineno, origin
            # ``from tether import gateway`` imports tether.gateway.
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{origin}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            first = node.args[0]
            if (
                called in {"import_module", "__import__"}
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield node.lineno, first.value


def violations_in(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of every import *module* must not make."""
    found: list[tuple[int, str]] = []
    for package, forbidden in FORBIDDEN.items():
        if not _is_within(module, package):
            continue
        for line, imported in imported_modules(source, module, is_package=is_package):
            if any(_is_within(imported, f) for f in forbidden):
                found.append((line, imported))
    # ``from tether.gateway.spool import Spool`` is one import of tether.gateway.spool, not two.
    return sorted(
        {
            (line, imported)
            for line, imported in found
            if not any(n == line and imported.startswith(f"{o}.") for n, o in found)
        }
    )


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _all_violations() -> list[tuple[str, int, str]]:
    found: list[tuple[str, int, str]] = []
    for path in _modules():
        module = _module_name(path)
        source = path.read_text(encoding="utf-8")
        is_package = path.name == "__init__.py"
        for line, imported in violations_in(source, module, is_package=is_package):
            found.append((path.relative_to(SRC).as_posix(), line, imported))
    return found


def test_no_package_imports_against_the_dependency_direction() -> None:
    found = [
        f"src/tether/{file}:{line} imports {imported}"
        for file, line, imported in _all_violations()
        if (file, imported) not in KNOWN_EXCEPTIONS
    ]
    assert not found, "imports against DESIGN.md's dependency direction:\n" + "\n".join(found)


def test_every_known_exception_is_still_real() -> None:
    real = {(file, imported) for file, _, imported in _all_violations()}
    stale = sorted(KNOWN_EXCEPTIONS - real)
    assert not stale, f"fixed, remove from KNOWN_EXCEPTIONS: {stale}"


def test_every_checked_package_has_modules_to_check() -> None:
    # A moved or renamed package would otherwise pass by checking nothing.
    names = [_module_name(path) for path in _modules()]
    for package in FORBIDDEN:
        assert any(_is_within(name, package) for name in names), package


@pytest.mark.parametrize(
    ("module", "source", "imported"),
    [
        ("tether.cloud.x", "import tether.gateway.agent", "tether.gateway.agent"),
        ("tether.cloud.x", "from tether.gateway import agent", "tether.gateway"),
        ("tether.cloud.x", "from tether import gateway", "tether.gateway"),
        ("tether.cloud.x", "def f():\n    import tether.gateway\n", "tether.gateway"),
        (
            "tether.cloud.x",
            "import typing\nif typing.TYPE_CHECKING:\n    from tether.gateway import a\n",
            "tether.gateway",
        ),
        ("tether.cloud.store.x", "from ...gateway import spool", "tether.gateway"),
        ("tether.cloud.x", "from ..gateway.spool import Spool", "tether.gateway.spool"),
        (
            "tether.cloud.x",
            "import importlib\nimportlib.import_module('tether.gateway.spool')\n",
            "tether.gateway.spool",
        ),
        ("tether.gateway.x", "import tether.cloud.api", "tether.cloud.api"),
        ("tether.protocol.x", "from tether.cli import app", "tether.cli"),
        ("tether.netreq.x", "from tether.gateway import settings", "tether.gateway"),
        ("tether.pki.x", "from tether.cloud.store import Store", "tether.cloud.store"),
        ("tether.netcheck.x", "from tether.cli.output import show", "tether.cli.output"),
        ("tether.netcheck.x", "import tether.cloud", "tether.cloud"),
    ],
)
def test_the_check_sees_every_form_of_import(module: str, source: str, imported: str) -> None:
    assert [name for _, name in violations_in(source, module)] == [imported]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("tether.cloud.x", "import tether.protocol.config\nfrom tether.pki import ca"),
        ("tether.cloud.x", "import tether.gatewayish"),  # a prefix of a name is not the package
        ("tether.cloud.store.x", "from .records import Row\nfrom .. import api"),
        ("tether.gateway.x", "from tether.netcheck import runner"),
        ("tether.netcheck.x", "from tether.gateway import preflight"),  # not forbidden
        ("tether.cli.x", "import tether.cloud\nimport tether.gateway"),  # cli joins both
    ],
)
def test_the_check_lets_allowed_imports_pass(module: str, source: str) -> None:
    assert violations_in(source, module) == []


def test_a_package_init_resolves_relative_imports_from_itself() -> None:
    source = "from .store import Store\nfrom ..gateway import spool\n"
    assert violations_in(source, "tether.cloud", is_package=True) == [(2, "tether.gateway")]
