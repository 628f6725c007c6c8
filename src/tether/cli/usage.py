"""Click's usage errors (an unknown option, a value out of range…) said as ``--json`` asks.

Click parses the command line before any command runs, and says what it refuses as plain text. A
script that passed ``--json`` reads stderr as JSON, so with ``--json`` on the command line the
whole application (:class:`TetherGroup`) says click's refusals as :func:`tether.cli.output.error`
does (``{"error": MESSAGE, "status": null}``), with click's exit status (2 for a usage error),
and the command's own errors follow (:func:`tether.cli.output.json_errors`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from tether.cli.output import error, json_errors

__all__ = ["TetherGroup", "json_asked"]


def json_asked(args: Sequence[str]) -> bool:
    """Whether ``--json`` is on the command line *args* (as an option: not after ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


class TetherGroup(TyperGroup):
    """The ``tether`` group: with ``--json`` on the command line, errors are JSON, click's too."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        words = sys.argv[1:] if args is None else list(args)
        asked = json_asked(words)
        json_errors(asked)  # commands that do not set it themselves (``tether net``) follow
        if not standalone_mode or not asked:
            return super().main(
                words, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            # not standalone: click's refusals come here instead of being printed
            outcome = super().main(
                words, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except typer.TyperException as exc:  # click's usage errors derive from it
            _exit(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _exit("aborted", 1)
        # a command's typer.Exit(code) comes back as its code; a command that returned, as None
        sys.exit(outcome if isinstance(outcome, int) else 0)


def _exit(message: str, code: int) -> NoReturn:
    error(message)
    sys.exit(code)
