"""Shared output helpers: Rich tables for people, JSON for machines, errors on stderr.

Every value shown in a table comes from the cloud (names gateways and users chose), so cells are
plain text, never Rich markup. When stdout is not a terminal, tables keep each row on one line
(``tether command list | grep GW`` finds what it shows); on a terminal they fit its width.

Errors go to stderr as ``error: MESSAGE``, or, once :func:`json_errors` is on (the commands'
``--json``), as one JSON object ``{"error": MESSAGE, "status": HTTP_STATUS_OR_NULL}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.terminal import pipe_console

if TYPE_CHECKING:
    import typer

__all__ = [
    "age",
    "console",
    "count",
    "err",
    "error",
    "fail",
    "json_errors",
    "print_json",
    "table",
    "utc",
]

console = Console()
err = Console(stderr=True)

_errors_as_json = False


def json_errors(enabled: bool) -> None:
    """Say errors from now on as JSON objects on stderr (*enabled*) or as ``error:`` lines."""
    global _errors_as_json
    _errors_as_json = enabled


def error(message: str, status: int | None = None) -> None:
    """Say *message* on stderr as an error (with the HTTP *status* it came with, if any)."""
    if _errors_as_json:
        sys.stderr.write(json.dumps({"error": message, "status": status}) + "\n")
        sys.stderr.flush()
        return
    line = Text.assemble(("error:", "red"), " ", message)
    if status:
        line.append(f" (HTTP {status})")
    err.print(line, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 1, status: int | None = None) -> typer.Exit:
    """Say *message* on stderr as an error; the exit (with *code*) for the caller to raise."""
    import typer  # (the agent's process says its errors with error() and loads no Typer)

    error(message, status)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _parse(when: str | datetime) -> datetime:
    """*when* (a datetime, or an ISO timestamp) as an aware datetime: naive ones are in UTC."""
    if isinstance(when, datetime):
        then = when
    else:
        then = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return then if then.tzinfo is not None else then.replace(tzinfo=UTC)


def age(when: str | datetime | None) -> str:
    """'3 s ago', '5 min ago'… from a datetime or an ISO timestamp; '-' for none."""
    if not when:
        return "-"
    seconds = (datetime.now(UTC) - _parse(when)).total_seconds()
    if seconds < 0:
        return f"in {int(-seconds)} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def utc(when: str | datetime | float | None, *, seconds: bool = True) -> str:
    """A datetime, an ISO timestamp or a Unix time as ``YYYY-MM-DD HH:MM[:SS]`` in UTC; '-' for
    none.

    Tables that show these say "(UTC)" in the column's header.
    """
    if when is None or when == "":
        return "-"
    at = datetime.fromtimestamp(when, UTC) if isinstance(when, float | int) else _parse(when)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _cell(value: Any) -> Text:
    return Text("-" if value is None else str(value))


def count(n: int, noun: str) -> str:
    """``1 token``, ``2 tokens``: a table title's count, in the noun's singular when it is one
    (*noun* is the plural; its last ``s`` goes for one)."""
    return f"{n} {noun[:-1] if n == 1 and noun.endswith('s') else noun}"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table; every cell and the title as plain text (no markup)."""
    t = Table(title=Text(title), title_justify="left")
    for column in columns:
        t.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    if console.is_terminal:
        console.print(t)
    else:
        pipe_console(console).print(t)
