"""Printing for people: on a terminal to its width, into a pipe or a file one line per row.

Shared by the command line's tables and the preflight's report, so neither depends on the other.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["PIPE_WIDTH", "pipe_console"]

#: The width output gets when it goes to a pipe or a file: rows are never wrapped or cut there
#: (``tether command list | grep GW`` finds what a row shows).
PIPE_WIDTH = 1_000_000


def pipe_console(console: Console) -> Console:
    """A console writing where *console* does, :data:`PIPE_WIDTH` wide, for a pipe or a file."""
    return Console(width=PIPE_WIDTH, file=console.file, no_color=console.no_color)
