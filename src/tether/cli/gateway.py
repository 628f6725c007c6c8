"""``tether gateway …``: the agent on a gateway (enroll, run), and revoking one."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import typer
from rich.markup import escape

from tether.cli.output import console, fail
from tether.cli.output import err as error_console
from tether.cli.runtime import run_async
from tether.gateway.settings import AgentSettingsError, check_log_options, load_agent_settings
from tether.pki.errors import EstError, PkiError
from tether.protocol.enrollment import EnrollmentCodeError

# Also run as the root application by ``tether gateway run|enroll`` (see tether.cli): a crash
# on a gateway must not print its locals (keys, tokens) into the logs.
app = typer.Typer(
    help="The gateway agent.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

DEFAULT_DATA_DIR = Path("var/gateway")


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
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
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
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
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
