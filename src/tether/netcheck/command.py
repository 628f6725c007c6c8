"""``tether net check``: run the preflight for a manifest and show the result (exit 0/1/2)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tether.netcheck.dns import Resolver, parse_resolver
from tether.netcheck.render import firewall_fix, print_report, progress_display, report_json
from tether.netcheck.runner import LONG_POLL_HOLD, CheckOptions, run_checks
from tether.netcheck.tls import TrustAnchors
from tether.netreq.model import Manifest
from tether.netreq.render import RULE_FORMATS, UnknownFormat

__all__ = ["EXIT_UNUSABLE", "CheckCommand", "UsageError", "run_command"]

EXIT_UNUSABLE = 3  # the check could not run (bad option, unreadable file)


class UsageError(ValueError):
    """An option the check cannot use; the message says which and why."""


@dataclass(frozen=True)
class CheckCommand:
    as_json: bool = False
    firewall_format: str | None = None
    resolvers: Sequence[str] = ()
    ca: Path | None = None
    timeout: float = 5.0
    idle_survival: float = 0.0
    lease_root: Path = Path("/")
    include_legacy: bool = False
    long_poll_hold: float | None = None  # None: as long as the agent holds (LONG_POLL_HOLD)


def _options(cmd: CheckCommand) -> CheckOptions:
    if cmd.firewall_format is not None and cmd.firewall_format not in RULE_FORMATS:
        raise UsageError(
            f"unknown firewall format {cmd.firewall_format!r} (one of {', '.join(RULE_FORMATS)})"
        )
    resolvers: tuple[Resolver, ...] | None = None
    if cmd.resolvers:
        try:
            resolvers = tuple(parse_resolver(r, source="--resolver") for r in cmd.resolvers)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    anchors = TrustAnchors()
    if cmd.ca is not None:
        try:
            anchors = TrustAnchors.from_file(cmd.ca)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--ca {cmd.ca}: not a readable PEM certificate file ({exc})"
            ) from None
        if not anchors.cas:
            raise UsageError(f"--ca {cmd.ca}: no certificate in the file")
    if cmd.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if cmd.idle_survival < 0:
        raise UsageError("--idle-survival must not be negative")
    hold = LONG_POLL_HOLD if cmd.long_poll_hold is None else cmd.long_poll_hold
    if hold <= 0:
        raise UsageError("--long-poll-hold must be positive")
    return CheckOptions(
        resolvers=resolvers,
        anchors=anchors,
        timeout=cmd.timeout,
        idle_survival=cmd.idle_survival,
        lease_root=cmd.lease_root,
        include_legacy=cmd.include_legacy,
        long_poll_wait=hold,
    )


def run_command(manifest: Manifest, cmd: CheckCommand, *, console: Console | None = None) -> int:
    """Run the check, print it, return the exit code (raises :class:`UsageError`)."""
    options = _options(cmd)
    out = console or Console()
    if cmd.as_json:
        report = asyncio.run(run_checks(manifest, options))
    else:
        progress_console = Console(stderr=True)
        with progress_display(progress_console) as update:
            options = dataclasses.replace(options, progress=update)
            report = asyncio.run(run_checks(manifest, options))
    try:
        fix = firewall_fix(manifest, report, cmd.firewall_format) if cmd.firewall_format else None
    except UnknownFormat as exc:  # checked above; kept for safety of the public function
        raise UsageError(str(exc)) from None
    if cmd.as_json:
        sys.stdout.write(report_json(report, fix).decode())
        sys.stdout.flush()
    else:
        print_report(report, out, fix=fix, formats_hint=RULE_FORMATS)
    return report.exit_code
