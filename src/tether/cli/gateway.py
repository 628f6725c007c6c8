"""``tether gateway …``: the agent on a gateway (enroll, run, status), and revoking one."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tether.cli.output import console, fail, utc
from tether.cli.output import err as error_console
from tether.cli.runtime import run_async
from tether.gateway.settings import AgentSettingsError, check_log_options, load_agent_settings
from tether.pki.errors import EstError, PkiError
from tether.protocol.enrollment import EnrollmentCodeError
from tether.terminal import pipe_console

if TYPE_CHECKING:
    from tether.gateway.status import GatewayStatus

# Also run as the root application by ``tether gateway run|enroll`` (see tether.cli): a crash
# on a gateway must not print its locals (keys, tokens) into the logs.
app = typer.Typer(
    help="The gateway agent.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

DEFAULT_DATA_DIR = Path("var/gateway")
_DATA_DIR_HELP = "The agent's data directory: its identity, spool, agent.toml and status."


#: Where ``tether gateway enroll`` also takes the code from (no code on the command line).
CODE_ENV = "TETHER_ENROLLMENT_CODE"

_ENROLL_HELP = (
    "Enroll this gateway: pin the platform CA, make a key, obtain a certificate.\n\n"
    "The enrollment code (from `tether token create`) is a secret until it is used, and a "
    "command line is visible to every user of the machine (ps). Give the code on standard input "
    "(`tether gateway enroll - < code.txt`), from a file only its owner can read "
    f"(`--code-file PATH`), or in the environment variable {CODE_ENV}. "
    "`tether gateway enroll CODE` works too, where nobody else can see the process list."
)


def _code_from_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise fail(f"--code-file {path}: {reason}", 2) from None
    if stat.S_ISREG(mode) and mode & stat.S_IROTH:
        raise fail(
            f"--code-file {path}: every user of this machine can read it; "
            f"chmod go-rwx {path} (or give the code on standard input)",
            2,
        )
    if stat.S_ISREG(mode) and mode & stat.S_IRGRP:
        error_console.print(
            f"warning: --code-file {path} is readable by its group; chmod g-r {path}",
            markup=False,
            highlight=False,
        )
    return text


def _enrollment_code(code: str | None, code_file: Path | None) -> str:
    """The code from exactly one place: the argument ("-" is stdin), the file, the environment."""
    if code is not None and code_file is not None:
        raise fail("give the enrollment code once: as CODE (or -), or with --code-file", 2)
    if code == "-":
        text, source = sys.stdin.readline(), "standard input"
    elif code is not None:
        text, source = code, "the command line"
    elif code_file is not None:
        text, source = _code_from_file(code_file), str(code_file)
    elif os.environ.get(CODE_ENV):
        text, source = os.environ[CODE_ENV], CODE_ENV
    else:
        raise fail(
            f"no enrollment code: give it on standard input (tether gateway enroll -), "
            f"with --code-file PATH, in {CODE_ENV}, or as CODE",
            2,
        )
    found = text.strip()
    if not found or len(found.split()) != 1:
        raise fail(f"no single enrollment code in {source}", 2)
    return found


@app.command("enroll", help=_ENROLL_HELP)
def enroll(
    code: str | None = typer.Argument(
        None,
        help="The enrollment code, or - to read it from standard input.",
        show_default=False,
    ),
    code_file: Path | None = typer.Option(
        None, "--code-file", help="Read the enrollment code from this file (mode 0600)."
    ),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help=_DATA_DIR_HELP),
    url: str | None = typer.Option(None, "--url", help="Reach the cloud at another URL."),
    name: str | None = typer.Option(None, "--name", help="A name hint for the operator."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace the identity the data directory holds (the old gateway stays in the "
        "fleet until it is revoked).",
    ),
) -> None:
    from tether.gateway.identity import EnrollmentNotStarted
    from tether.gateway.identity import enroll as do_enroll

    secret = _enrollment_code(code, code_file)
    try:
        settings = load_agent_settings(data_dir)
        identity = run_async(
            do_enroll(
                secret,
                settings.identity_dir,
                url=url,
                name_hint=name,
                proxy=settings.proxy,
                trust_env=settings.trust_env,
                force=force,
            )
        )
    except (EnrollmentCodeError, EnrollmentNotStarted, AgentSettingsError) as exc:
        raise fail(str(exc), 2) from None
    except EstError as exc:
        raise fail(str(exc)) from None
    except (PkiError, OSError) as exc:  # enrolled, but what it obtained could not be stored
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise fail(
            f"the cloud enrolled this gateway but its identity could not be stored in "
            f"{data_dir}: {reason}; revoke that gateway and enroll again"
        ) from None
    console.print(
        f"enrolled as [bold]{escape(identity.gateway_id)}[/bold]; certificate valid until "
        f"{identity.not_after:%Y-%m-%d %H:%M} UTC"
    )
    console.print(f"now run: tether gateway run --data-dir {data_dir}", markup=False)


#: Set by :func:`tether.cli.main` (the ``tether`` command itself): ``run`` then hands its
#: process over to :mod:`tether.gateway.service` rather than running the agent in it.
HAND_OVER = False


@app.command("run")
def run(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help=_DATA_DIR_HELP),
    log_level: str = typer.Option(
        "info", "--log-level", help="debug, info, warning, error or critical."
    ),
    log_format: str = typer.Option("text", "--log-format", help="text or json."),
) -> None:
    """Hold the link to the cloud and run what it asks."""
    from tether.gateway import service

    try:
        check_log_options(log_level, log_format)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if HAND_OVER and sys.executable:  # (an embedded interpreter may not know its program)
        service.hand_over(data_dir, log_level, log_format)  # returns only if that failed
    code = service.serve(data_dir, log_level, log_format)
    if code:
        raise typer.Exit(code)


_STATUS_HELP = (
    "What the agent on this data directory knows, read on the gateway itself (no cloud "
    "needed): identity and certificate, whether an agent runs now, its link, spool, uploader, "
    "connectors, clock offset, last preflight and logs.\n\n"
    "Exit status: 0 an agent runs and is linked; 1 it runs but is not linked, or no agent "
    "runs; 2 not enrolled, no such data directory, or its files cannot be read."
)


@app.command("status", help=_STATUS_HELP)
def status(
    # readable=False: what cannot be read is said by the command, in one line
    data_dir: Path = typer.Option(
        DEFAULT_DATA_DIR, "--data-dir", readable=False, help=_DATA_DIR_HELP
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    from tether.cli.output import json_errors, print_json
    from tether.gateway.status import StatusUnavailable, read_gateway_status

    json_errors(as_json)
    try:
        found = read_gateway_status(data_dir)
    except StatusUnavailable as exc:
        raise fail(str(exc), 2) from None
    if as_json:
        print_json(found.to_json())
    else:
        _show_status(found)
    if found.exit_code:
        raise typer.Exit(found.exit_code)


def _when(moment: object, now: float) -> str:
    """A Unix time as 'YYYY-MM-DD HH:MM:SS UTC (5 min ago)'; '-' for none."""
    if not isinstance(moment, int | float) or isinstance(moment, bool):
        return "-"
    return f"{utc(float(moment))} UTC ({_ago(now - float(moment))})"


def _ago(seconds: float) -> str:
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _size(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value):,} bytes"


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return str(value)


def _section(document: dict[str, object], key: str) -> dict[str, object]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def _print_table(table: Table) -> None:
    if console.is_terminal:
        console.print(table)
    else:
        pipe_console(console).print(table)


def _facts(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table of plain-text facts (values come from files: never markup)."""
    table = Table(title=Text(title), title_justify="left", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    _print_table(table)


def _show_status(found: GatewayStatus) -> None:
    """``tether gateway status`` for a person: the identity, the agent, then its figures."""
    now = found.now
    identity = found.identity
    days = identity.days_left(now)
    left = f"{days:.0f} days left" if days >= 0 else f"EXPIRED {-days:.0f} days ago"
    _facts(
        f"Gateway {identity.gateway_id}",
        [
            ("data directory", str(found.data_dir)),
            ("cloud (enrolled at)", identity.cloud_url),
            ("certificate", identity.subject),
            ("valid until", f"{utc(identity.not_after.timestamp())} UTC ({left})"),
        ],
    )
    document = found.document
    if found.running:
        agent = f"running (pid {found.pid})" if found.pid else "running"
    else:
        agent = "not running"
    if document is None:
        line = f"agent: {agent}; no status written yet"
    elif not found.running:
        line = f"agent: {agent}, last status from {_when(document.get('updated_at'), now)}"
    elif found.stale:
        line = (
            f"agent: {agent}; its status is STALE, last written "
            f"{_when(document.get('updated_at'), now)}"
        )
    else:
        line = f"agent: {agent}; status written {_when(document.get('updated_at'), now)}"
    console.print(Text(line), soft_wrap=True, highlight=False)
    stopped = found.stopped
    if stopped is not None and not found.running:
        console.print(
            Text(f"it stopped {_when(stopped.get('at'), now)}: {_value(stopped.get('reason'))}"),
            soft_wrap=True,
            highlight=False,
        )
    if document is None:
        return
    _show_document(document, now)


def _show_document(document: dict[str, object], now: float) -> None:
    link = _section(document, "link")
    _facts(
        "Link",
        [
            ("linked", _value(link.get("linked"))),
            ("state", _value(link.get("state"))),
            ("tier", _value(link.get("tier"))),
            ("since", _when(link.get("since"), now)),
            ("links opened", _value(link.get("links_opened"))),
            ("last error", _value(link.get("last_error"))),
            ("last error at", _when(link.get("last_error_at"), now)),
            ("errors", _value(link.get("errors"))),
            ("last close", _value(link.get("last_close"))),
            ("cloud", _value(document.get("cloud_url"))),
            ("agent", f"{_value(document.get('agent_version'))}, pid {document.get('pid')}"),
            ("started", _when(document.get("started_at"), now)),
        ],
    )
    spool = _section(document, "spool")
    oldest = spool.get("oldest_age_s")
    _facts(
        "Spool",
        [
            ("observations waiting", _value(spool.get("observations"))),
            ("size", _size(spool.get("bytes"))),
            ("oldest", "-" if not isinstance(oldest, int | float) else f"{_span(oldest)} old"),
            ("dropped (all time)", _value(spool.get("dropped_total"))),
            ("refused (disk full)", _value(spool.get("refused"))),
        ],
    )
    uploader = _section(document, "uploader")
    if uploader:
        _facts("Uploader", [(k.replace("_", " "), _value(v)) for k, v in uploader.items()])
    connectors = _section(document, "connectors")
    if connectors:
        table = Table(title=Text("Connectors"), title_justify="left")
        for column in ("instance", "state", "observations", "polls", "poll errors", "last error"):
            table.add_column(column, overflow="fold")
        for name, each in sorted(connectors.items()):
            row = each if isinstance(each, dict) else {}
            table.add_row(
                *(
                    Text(cell)
                    for cell in (
                        name,
                        _value(row.get("state")),
                        _value(row.get("observations")),
                        _value(row.get("polls")),
                        _value(row.get("poll_errors")),
                        _value(row.get("last_error")),
                    )
                )
            )
        _print_table(table)
    else:
        console.print(Text("connectors: none configured"), highlight=False)
    clock = _section(document, "time")
    offset, within = clock.get("cloud_offset_s"), clock.get("cloud_offset_uncertainty_s")
    preflight = _section(document, "preflight")
    logs = _section(document, "logs")
    system = _section(document, "system")
    memory, disk = _section(system, "memory"), _section(system, "disk")
    rss = _section(system, "agent").get("rss")
    _facts(
        "Host",
        [
            (
                "clock offset from the cloud",
                "unknown (never linked since start)"
                if not isinstance(offset, int | float)
                else f"{offset:+.3f} s (±{_value(within)} s; add to the host clock)",
            ),
            ("NTP synchronized", _value(clock.get("ntp_synchronized"))),
            (
                "last preflight",
                "none run"
                if not preflight
                else f"{_value(preflight.get('status'))} at {_when(preflight.get('ran_at'), now)}",
            ),
            (
                "preflight said",
                _value(preflight.get("summary") or preflight.get("error")) if preflight else "-",
            ),
            ("logs waiting / dropped", f"{_value(logs.get('pending'))} / {logs.get('dropped')}"),
            ("CPU", f"{_value(system.get('cpu_percent'))} %"),
            ("memory used", f"{_value(memory.get('percent'))} %"),
            ("disk used", f"{_value(disk.get('percent'))} % of {_size(disk.get('total'))}"),
            ("agent memory (RSS)", _size(rss)),
            ("measured", _when(document.get("health_at"), now)),
        ],
    )
