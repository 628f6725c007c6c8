"""Shared output helpers: Rich tables for people, JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import typer

__all__ = ["age", "console", "err", "error", "fail", "print_json", "table"]

console = Console()
err = Console(stderr=True)


def error(message: str) -> None:
    """Say *message* on stderr as an error."""
    err.print(f"[red]error:[/red] {message}")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say *message* on stderr as an error; the exit (with *code*) for the caller to raise."""
    import typer  # (the agent's process says its errors with error() and loads no Typer)

    error(message)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def age(iso: str | None) -> str:
    """'3 s ago', '5 min ago'… from an ISO timestamp; '-' for none."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = (datetime.now(UTC) - then).total_seconds()
    if seconds < 0:
        return f"in {int(-seconds)} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    console.print(t)
