"""``tether net …``: network-requirements documents, firewall rules and the preflight check."""

from __future__ import annotations

import typer

app = typer.Typer(help="Network requirements: documents, firewall rules, preflight check.")
