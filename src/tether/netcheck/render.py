"""Showing a :class:`CheckReport`: a Rich table for people, JSON for machines, and the fixes for
blocked endpoints rendered in the firewall format the user names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from tether.netcheck.report import CheckReport, Status
from tether.netcheck.runner import ProgressEvent
from tether.netreq.model import Manifest, TimePolicy
from tether.netreq.render import RuleOptions, RuleOutput, build_rules
from tether.terminal import pipe_console

__all__ = ["firewall_fix", "print_report", "progress_display", "report_json"]

_STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}


def firewall_fix(manifest: Manifest, report: CheckReport, fmt: str) -> RuleOutput | None:
    """Allow rules, in ``fmt``, for just the endpoints whose fix is a firewall rule.

    They are additions to the rules the site runs (``RuleOptions.additive``): an nftables fix
    inserts accept rules and never replaces the table, its chain or the site's gateway sets.

    Raises ``tether.netreq.render.UnknownFormat`` for an unknown format.
    """
    blocked = set(report.blocked_endpoints())
    if not blocked:
        build_rules(manifest, fmt)  # still reject an unknown format
        return None
    subset = msgspec.structs.replace(
        manifest,
        endpoints=tuple(e for e in manifest.endpoints if e.id in blocked),
        time=TimePolicy(),  # its references may point at endpoints left out
        changes=(),
    )
    # Additive: the site already runs the full rules; the fix must not replace them.
    options = RuleOptions(include_legacy=True, include_optional=True, additive=True)
    return build_rules(subset, fmt, options)


def report_json(report: CheckReport, fix: RuleOutput | None = None) -> bytes:
    """The report as JSON (``decode_report`` reads it back), with ``firewall_fix`` if given."""
    data: dict[str, Any] = msgspec.to_builtins(report)
    if fix is not None:
        data["firewall_fix"] = {
            "format": fix.format,
            "files": [{"name": n, "content": c} for n, c in fix.files],
            "gaps": [str(g) for g in fix.gaps],
        }
    return msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"


def print_report(
    report: CheckReport,
    console: Console,
    *,
    fix: RuleOutput | None = None,
    formats_hint: tuple[str, ...] = (),
) -> None:
    """The report as a table, the verdict, and the fix rules.

    On a terminal the table fits its width. Into a pipe or a file nothing is wrapped or cut:
    each row is one line (``tether net check | grep ingest`` finds what it shows).
    """
    piped = not console.is_terminal
    if piped:
        console = pipe_console(console)
    console.print(_table(report, piped=piped))
    counts = report.counts()
    summary = " · ".join(f"{s.value.upper()} {counts[s]}" for s in Status if counts[s])
    verdict = report.status
    console.print(
        Text.assemble(
            ("Result: ", "bold"),
            (verdict.value.upper(), _STYLE[verdict]),
            f"  ({summary}; exit code {report.exit_code})",
        )
    )
    if report.proxy:
        console.print(f"Proxy: {report.proxy}", markup=False, highlight=False)
    if fix is not None:
        console.print(
            Text(
                f"\nAllow rules for the blocked endpoints ({fix.format}), for the firewall team:",
                style="bold",
            )
        )
        console.print(fix.text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        for gap in fix.gaps:
            console.print(f"note: {gap}", markup=False, highlight=False, soft_wrap=True)
    elif report.blocked_endpoints() and formats_hint:
        console.print(
            "\nAdd --firewall-format FORMAT for the allow rules in your firewall's terms "
            f"(one of: {', '.join(formats_hint)}).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _table(report: CheckReport, *, piped: bool) -> Table:
    """One row per result, a section per group of endpoints, each row naming its endpoints."""
    title = (
        f"Preflight: {report.manifest_product} (manifest {report.manifest_version}, "
        f"{report.manifest_publisher}) from {report.host or 'this machine'}"
    )
    # Into a pipe the table takes the width its cells need, on one line each; on a terminal
    # it fills the width and folds long cells.
    table = Table(title=Text(title), title_justify="left", show_lines=False, expand=not piped)
    table.add_column("", no_wrap=True, width=4)
    if piped:
        for name in ("check", "target", "finding / fix"):
            table.add_column(name, no_wrap=True)
    else:
        table.add_column("check", no_wrap=True)  # the endpoints pre-wrapped, at commas
        table.add_column("target", overflow="fold", ratio=2, max_width=32)
        table.add_column("finding / fix", overflow="fold", ratio=3)
    separator = "  " if piped else "\n"
    last: tuple[str, ...] | None = None
    for result in report.results:
        about = result.about()
        if about != last:
            if last is not None:
                table.add_section()
            last = about
        cell = Text(result.finding)
        if result.fix:
            cell.append(f"{separator}→ {result.fix}", style="cyan")
        label = result.check.value
        if about:
            label += separator + _endpoint_list(about, width=None if piped else _LABEL_WIDTH)
        table.add_row(
            Text(result.status.value.upper(), style=_STYLE[result.status]),
            Text(label),
            Text(result.target),
            cell,
        )
    return table


_LABEL_WIDTH = 16  # of the check column on a terminal


def _endpoint_list(ids: tuple[str, ...], *, width: int | None) -> str:
    """``[a, b, c]``, broken after commas into lines of at most ``width`` (None: one line)."""
    text = f"[{', '.join(ids)}]"
    if width is None:
        return text
    lines = [""]
    for i, word in enumerate(text.split(" ")):
        if i and len(lines[-1]) + 1 + len(word) > width:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}" if i else word
    return "\n".join(lines)


@contextmanager
def progress_display(console: Console) -> Iterator[Callable[[ProgressEvent], None]]:
    """A transient Rich progress bar; yields the callback for ``CheckOptions.progress``."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("probing", total=None)

    def update(event: ProgressEvent) -> None:
        progress.update(
            task, total=event.total, completed=event.completed, description=event.label[:60]
        )

    with progress:
        yield update
