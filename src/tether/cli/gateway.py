"""``tether gateway …``: the agent on a gateway (enroll, run), and revoking one."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tether.cli.output import console, fail
from tether.cli.runtime import run_async
from tether.gateway.settings import AgentSettingsError, load_agent_settings
from tether.pki.errors import EstError
from tether.protocol.enrollment import EnrollmentCodeError

# Also run as the root application by ``tether gateway run|enroll`` (see tether.cli): a crash
# on a gateway must not print its locals (keys, tokens) into the logs.
app = typer.Typer(
    help="The gateway agent.", no_args_is_help=True, pretty_exceptions_show_locals=False
)

DEFAULT_DATA_DIR = Path("var/gateway")


@app.command("enroll")
def enroll(
    code: str = typer.Argument(..., help="The enrollment code from `tether token create`."),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    url: str | None = typer.Option(None, "--url", help="Reach the cloud at another URL."),
    name: str | None = typer.Option(None, "--name", help="A name hint for the operator."),
) -> None:
    """Enroll this gateway: pin the platform CA, make a key, obtain a certificate."""
    from tether.gateway.identity import enroll as do_enroll

    try:
        settings = load_agent_settings(data_dir)
        identity = run_async(
            do_enroll(
                code,
                settings.identity_dir,
                url=url,
                name_hint=name,
                proxy=settings.proxy,
                trust_env=settings.trust_env,
            )
        )
    except (EnrollmentCodeError, EstError, AgentSettingsError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"enrolled as [bold]{identity.gateway_id}[/bold]; certificate valid until "
        f"{identity.not_after:%Y-%m-%d %H:%M} UTC"
    )
    console.print(f"now run: tether gateway run --data-dir {data_dir}")


#: Set by :func:`tether.cli.main` (the ``tether`` command itself): ``run`` then hands its
#: process over to :mod:`tether.gateway.service` rather than running the agent in it.
HAND_OVER = False


@app.command("run")
def run(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format", help="text or json"),
) -> None:
    """Hold the link to the cloud and run what it asks."""
    from tether.gateway import service

    if HAND_OVER and sys.executable:  # (an embedded interpreter may not know its program)
        service.hand_over(data_dir, log_level, log_format)  # returns only if that failed
    code = service.serve(data_dir, log_level, log_format)
    if code:
        raise typer.Exit(code)
